"""The official side of `acestep parity --against official`: runs INSIDE the official ACE-Step 1.5 environment.

    python official_worker.py --probe          -> one JSON line: versions and the model variants the code knows
    python official_worker.py JOB.json         -> runs the job, writes its tensors and a small JSON summary

The official code pins transformers < 4.58, so it lives in its own environment; `acestep_parity.official`
starts this script there with that interpreter and exchanges tensors through safetensors files (never
pickle). The script imports only the official package, torch, safetensors and the standard library.

What it drives (all official code, `acestep/` of ace-step/ACE-Step-1.5):
- the handler's request preparation: `_prepare_generate_music_service_inputs` (caption, metas, padding),
  then `service_generate` (text formatting and tokenization, VAE encoding through diffusers
  `AutoencoderOobleck`, chunk masks and source latents, text encoder, `prepare_condition`,
  `generate_audio`), then the handler's `tiled_decode`;
- three runs of it: "accumulated" (its own stages end to end), "isolated" (every stage fed our previous
  stage's output through stand-ins at the stage boundaries; the DiT stand-in evaluates the official DiT
  on our exact inputs and hands the sampler OUR velocity, so the sampler rows test the official update
  rule alone) and "sampler" (its sampler and DiT on our condition and context).

The handler's mixins are assembled around the loaded models in official_host.py. Three documented
deviations from a plain handler run, so that both sides get identical inputs:
`prepare_noise` returns the shared initial noise, the VAE posterior returns its mean (our default), and
the VAE computes in the job's dtype (the handler picks bf16 on CUDA).
"""

from __future__ import annotations

import contextlib
import json
import sys

import torch
from safetensors.torch import load_file, save_file

# Run as a script, so the sibling module is imported by its file name (this folder is sys.path[0]).
from official_host import EXIT_IMPORT, EXIT_VARIANT, _handler, known_variants, load_host, probe


# --- stand-ins at the stage boundaries ---------------------------------------------------------------------

@contextlib.contextmanager
def replaced(obj, name: str, value):
    """Within the block `obj.name` is `value` (an instance attribute; a child module for nn.Module children)."""
    own = name in vars(obj) or name in getattr(obj, "_modules", {})
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield original
    finally:
        if own:
            setattr(obj, name, original)
        else:
            delattr(obj, name)


@contextlib.contextmanager
def posterior_mean():
    """The Oobleck posterior's `.sample()` returns its mean (ours encodes to the mean; the handler samples)."""
    from diffusers.models.autoencoders.autoencoder_oobleck import OobleckDiagonalGaussianDistribution as Posterior

    original = Posterior.sample
    Posterior.sample = lambda self, generator=None: self.mean
    try:
        yield
    finally:
        Posterior.sample = original


class DiTTap(torch.nn.Module):
    """Stands in for `model.decoder`: records every call; with `ours` (isolated run) it also runs the official
    DiT on OUR inputs of that call and returns OUR velocity, so that the sampler advances on our numbers."""

    def __init__(self, decoder, ours: list | None = None):
        super().__init__()
        self.decoder, self.ours, self.calls = decoder, ours, []

    def forward(self, **kw):
        i = len(self.calls)
        if self.ours is None or i >= len(self.ours):
            out = self.decoder(**kw)
            self.calls.append({"x": kw["hidden_states"], "t": kw["timestep"], "states": kw["encoder_hidden_states"],
                               "context": kw["context_latents"], "v": out[0]})
            return out
        mine = self.ours[i]
        iso = self.decoder(hidden_states=mine["x"], timestep=mine["t"], timestep_r=mine["t"],
                           attention_mask=kw.get("attention_mask"), encoder_hidden_states=mine["states"],
                           encoder_attention_mask=kw.get("encoder_attention_mask"),
                           context_latents=mine["context"], use_cache=False)[0]
        self.calls.append({"x": kw["hidden_states"], "t": kw["timestep"], "v": iso})
        return mine["v"].to(kw["hidden_states"]), kw.get("past_key_values")


def _recording(record: dict, key: str, fn, replace=None):
    """fn's result is recorded under `key` (first call only); `replace(result, *args)` may swap what is returned."""
    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        record.setdefault(key, out)
        return out if replace is None else replace(out, *args, **kwargs)
    return call


def _ours_steps(ours: dict) -> list:
    steps, i = [], 0
    while f"ours.dit.{i}.x" in ours:
        steps.append({k: ours[f"ours.dit.{i}.{k}"] for k in ("x", "t", "states", "context", "v")})
        i += 1
    return steps


# --- one run of the handler ----------------------------------------------------------------------------------

def service_run(host, req: dict, src_audio, record: dict):
    """generate_music's preparation and service_generate, as the handler runs them -> final latents [B, T, 64]."""
    gm = _handler("generate_music")
    codes = req.get("audio_codes") or ""
    task, instruction = host._resolve_generate_music_task(req["task"], codes, host.generate_instruction(req["task"]))
    duration = req["audio_duration"]
    if src_audio is not None and task in ("cover", "cover-nofsq", "repaint", "lego", "extract"):
        duration = src_audio.shape[-1] / host.sample_rate  # the handler locks the duration to the source
    inputs = host._prepare_generate_music_service_inputs(
        actual_batch_size=1, processed_src_audio=src_audio, audio_duration=duration, captions=req["caption"],
        lyrics=req["lyrics"], vocal_language=req["vocal_language"], instruction=instruction, bpm=req["bpm"],
        key_scale=req["keyscale"] or "", time_signature=req["timesignature"] or "", task_type=task,
        audio_code_string=codes,
        repainting_start=req["repainting_start"] if req["repainting_start"] is not None else 0.0,
        repainting_end=req["repainting_end"], chunk_mask_mode="auto")
    ratio, frames, _ = gm._resolve_repaint_config("balanced", req["repaint_strength"])
    guidance = 1.0 if host.config.is_turbo else req["guidance_scale"]  # generate_music forces 1 on turbo
    refer = [[torch.zeros(2, 30 * host.sample_rate)]]  # no reference audio
    out = host.service_generate(
        captions=inputs["captions_batch"], global_captions=inputs["global_captions_batch"],
        lyrics=inputs["lyrics_batch"], metas=inputs["metas_batch"], vocal_languages=inputs["vocal_languages_batch"],
        refer_audios=refer, target_wavs=inputs["target_wavs_tensor"], infer_steps=req["steps"],
        guidance_scale=guidance, seed=[req["seed"]], repainting_start=inputs["repainting_start_batch"],
        repainting_end=inputs["repainting_end_batch"], instructions=inputs["instructions_batch"],
        audio_cover_strength=1.0, cover_noise_strength=req["cover_noise_strength"], use_adg=False,
        cfg_interval_start=0.0, cfg_interval_end=1.0, shift=req["shift"], infer_method="ode", sampler_mode="euler",
        dcw_enabled=req["dcw"], audio_code_hints=inputs["audio_code_hints_batch"], return_intermediate=True,
        chunk_mask_modes=inputs["chunk_mask_modes_batch"], repaint_crossfade_frames=frames,
        repaint_injection_ratio=ratio, task_type=task)
    record["captions"] = inputs["captions_batch"]
    return out["target_latents"]


def run_handler(host, req: dict, tensors: dict, mode: str) -> dict:
    """mode "accumulated": the handler on its own; "isolated": every stage fed our previous stage's output."""
    rec: dict = {}
    ours = tensors if mode == "isolated" else None
    src_latents = tensors.get("src_latents")  # [B, T, 64]: stands in for the VAE encoding of the source
    model, noise = host.model, tensors["noise"]

    def text_inputs(out, *args, **kwargs):
        if ours is None:
            return out
        ids = [ours["ours.text_ids"], ours["ours.text_mask"].bool(), ours["ours.lyric_ids"],
               ours["ours.lyric_mask"].bool()]
        return (out[0], *[t.to(host.device) for t in ids], *out[5:])

    def source(audio):
        # What the VAE would have returned for the source [2, S]: latents [T, 64]
        if ours is not None and "ours.source" in ours:
            return ours["ours.source"][0].transpose(0, 1).to(host.device, host.dtype)  # [1, 64, T] -> [T, 64]
        return src_latents[0].to(host.device, host.dtype)  # [1, T, 64] -> [T, 64]

    def generate(**kwargs):
        rec.setdefault("generate_kwargs", kwargs)
        return generate_audio(**kwargs)

    def condition(out, *args, **kwargs):
        if ours is None:
            return out
        return ours["ours.states"], ours["ours.mask"], ours["ours.context"]

    def initial_noise(context_latents, seed=None):
        want = (context_latents.shape[0], context_latents.shape[1], context_latents.shape[-1] // 2)
        if tuple(noise.shape) != want:
            raise ValueError(f"the official latent length differs: noise {list(noise.shape)}, the official run "
                             f"needs {list(want)}")
        return noise.to(context_latents)

    given = src_latents is not None or (ours is not None and "ours.source" in ours)
    encode = source if given else host._encode_audio_to_latents  # a stand-in: the real VAE is not run
    generate_audio = model.generate_audio
    tap = DiTTap(model.decoder, _ours_steps(ours) if ours is not None else None)
    with contextlib.ExitStack() as stack:
        stack.enter_context(replaced(host, "_prepare_text_conditioning_inputs", _recording(
            rec, "text_inputs", host._prepare_text_conditioning_inputs, text_inputs)))
        stack.enter_context(replaced(host, "infer_text_embeddings", _recording(
            rec, "text", host.infer_text_embeddings, (lambda out, ids: ours["ours.text"]) if ours else None)))
        stack.enter_context(replaced(host, "infer_lyric_embeddings", _recording(
            rec, "lyric", host.infer_lyric_embeddings, (lambda out, ids: ours["ours.lyric"]) if ours else None)))
        stack.enter_context(replaced(host, "_encode_audio_to_latents", _recording(rec, "source", encode)))
        stack.enter_context(replaced(host, "_build_chunk_masks_and_src_latents", _recording(
            rec, "masks", host._build_chunk_masks_and_src_latents)))
        stack.enter_context(replaced(model, "prepare_condition", _recording(
            rec, "condition", model.prepare_condition, condition)))
        stack.enter_context(replaced(model, "generate_audio", generate))
        stack.enter_context(replaced(model, "prepare_noise", initial_noise))
        stack.enter_context(replaced(model, "decoder", tap))
        latents = service_run(host, req, tensors.get("src_audio"), rec)
    rec["latents"], rec["dit"] = latents, tap.calls
    return rec


def run_sampler(host, kwargs: dict, tensors: dict) -> dict:
    """generate_audio (its sampler and its DiT) on OUR condition and context."""
    model, rec = host.model, {}
    ours = (tensors["ours.states"], tensors["ours.mask"], tensors["ours.context"])
    tap = DiTTap(model.decoder)
    with replaced(model, "prepare_condition", lambda **kw: ours), \
            replaced(model, "prepare_noise", lambda context_latents, seed=None: tensors["noise"].to(context_latents)), \
            replaced(model, "decoder", tap):
        rec["latents"] = model.generate_audio(**kwargs)["target_latents"]
    rec["dit"] = tap.calls
    return rec


# --- the job ---------------------------------------------------------------------------------------------------

def _cpu(t: torch.Tensor) -> torch.Tensor:
    # float32 / int64 on the CPU: what the caller compares in float64 anyway (bf16 -> fp32 is exact).
    # An own copy each: safetensors stores no tensors that share memory.
    t = t.detach().to("cpu")
    return (t.float() if t.is_floating_point() else t.long()).clone().contiguous()


def flatten(rec: dict, run: str) -> dict:
    out = {}
    if "text_inputs" in rec:
        for name, t in zip(("text_ids", "text_mask", "lyric_ids", "lyric_mask"), rec["text_inputs"][1:5]):
            out[f"{run}.{name}"] = t
    for name in ("text", "lyric", "source", "latents"):
        if rec.get(name) is not None:
            out[f"{run}.{name}"] = rec[name]
    if "masks" in rec:
        chunk, _spans, is_covers, src, repaint = rec["masks"]
        out.update({f"{run}.chunk_mask": chunk, f"{run}.is_covers": is_covers, f"{run}.src_latents": src})
        if repaint is not None:
            out[f"{run}.repaint_mask"] = repaint
    if "condition" in rec:
        for name, t in zip(("states", "mask", "context"), rec["condition"]):
            out[f"{run}.{name}"] = t
    for i, call in enumerate(rec.get("dit", [])):
        for name in ("x", "t", "v"):
            out[f"{run}.dit.{i}.{name}"] = call[name]
    return {k: _cpu(v) for k, v in out.items()}


def run_job(job: dict) -> dict:
    from loguru import logger

    logger.remove()  # the handler logs every prompt at INFO; only warnings and errors reach the caller
    logger.add(sys.stderr, level="WARNING")
    host = load_host(job)
    device = host.device
    tensors = {k: v.to(device) for k, v in load_file(job["inputs"]).items()}
    for k, v in tensors.items():
        if v.is_floating_point() and k != "src_audio":
            tensors[k] = v.to(host.dtype)  # the model dtype; the waveform stays float32 like the handler's
    req, out, summary = job["request"], {}, {}

    def decode(latents):
        # [B, T, 64] -> [B, 64, T] in the VAE dtype, as the handler's decode step
        return host.tiled_decode(latents.transpose(1, 2).contiguous().to(host.vae.dtype))

    with torch.inference_mode(), posterior_mean():
        if "src_audio" in tensors:
            out["direct.vae_encode"] = _cpu(host.tiled_encode(tensors["src_audio"][None], offload_latent_to_cpu=True))
        acc = run_handler(host, req, tensors, "accumulated")
        out.update(flatten(acc, "accumulated"))
        out["accumulated.audio"] = _cpu(decode(acc["latents"]))
        summary["captions"] = acc["captions"]
        if "ours.latents" in tensors:
            iso = run_handler(host, req, tensors, "isolated")
            out.update(flatten(iso, "isolated"))
            out.update(flatten(run_sampler(host, iso["generate_kwargs"], tensors), "sampler"))
            out["isolated.audio"] = _cpu(decode(tensors["ours.latents"]))
    save_file(out, job["outputs"])
    return summary


def main(argv: list[str]) -> int:
    if argv == ["--probe"]:
        try:
            print(json.dumps(probe()))
        except ImportError as e:
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
            return EXIT_IMPORT
        return 0
    if len(argv) != 1:
        print("usage: official_worker.py --probe | JOB.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    if job["model_version"] not in known_variants():
        print(json.dumps({"error": f"unknown variant {job['model_version']!r}"}))
        return EXIT_VARIANT
    summary = run_job(job)
    with open(job["summary"], "w", encoding="utf-8") as f:
        json.dump(summary, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
