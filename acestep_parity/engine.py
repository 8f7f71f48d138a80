"""`acestep parity`: our pipeline against a reference implementation, stage by stage.

    acestep parity --checkpoint DIR --against diffusers --task repaint --steps 8 --seed 0 --json report.json

Both pipelines load the same files (a checkpoint that is not a diffusers folder is first written as one in a
temporary folder with `weights_convert.to_diffusers.write_diffusers`) and get the same request, the same
initial noise and the same source audio. Ours runs with compat="diffusers", so the documented differences
between the official code and diffusers (docs/parity.md) do not show up as failures.

Stages, in pipeline order: token ids (+ padding masks), text encoder hidden states, lyric embeddings, VAE
encoding of the source audio, condition encoder output (+ mask), DiT context (source latents | chunk mask),
timestep schedule, DiT velocity at every sampler step, final latents, decoded audio. Each is compared in
up to two views:
- isolated: the reference stage is fed OUR previous stage's output, so a failure is this stage's own;
- accumulated: the reference runs from the raw inputs on its own (the final latents come from `pipe(...)`),
  so the row shows what a user sees, earlier stages' errors included.
Stages fed only raw inputs (token ids, VAE encoding, schedule, a context without source audio) have one
"direct" view. A last row checks the harness: our stage-by-stage replay of diffusers' `__call__` must give
the latents `pipe(...)` gives.

How the tensors are obtained: ours from one ordinary `pipe(...)` call whose models are wrapped by recording
stand-ins (`_Tap`); diffusers' by calling its public pieces (`encode_prompt`, `prepare_src_latents`,
`condition_encoder`, `transformer`, `scheduler.step`, `vae`) in the order of its `__call__`, plus its
private `_build_chunk_mask` / `_get_timestep_schedule` / `_get_task_instruction` helpers (diffusers is pinned
to 0.42.1). diffusers samples the VAE posterior from the global RNG; `posterior_mean()` makes it return the
mean (our default) while a comparison runs.

Metrics: max |error|, that max over the reference's std, cosine; for audio also SNR (dB) and a
multi-resolution STFT distance. Pass: fp32 err/std <= 1e-4, bf16 cosine >= 0.999, audio SNR >= 35 dB,
token ids and masks identical. Exit status: 0 all pass, 1 a comparison fails, 2 a bad argument or a missing
reference package, 3 any other error. This package imports diffusers / transformers (the optional
`parity` extra); `acestep_core` itself never does.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import math
import sys
import tempfile
from dataclasses import dataclass

import torch

from .report import Report, StageResult, Thresholds, _Judge

OK, FAILED, USAGE, ERROR = 0, 1, 2, 3  # exit statuses of `acestep parity`

REFERENCE_VERSION = "0.42.1"
INSTALL_HINT = 'pip install "acestep-core[parity]"'
# --- the request ------------------------------------------------------------------------------------------

@dataclass
class ParityCase:
    """One request, given identically to both pipelines (batch of one)."""

    task: str = "text2music"  # text2music, repaint or cover
    prompt: str = "upbeat synth pop with a driving bassline"
    lyrics: str = "[verse]\nhello parity, hello"
    duration: float = 10.0  # seconds (text2music); a source or codes set the length otherwise
    steps: int | None = None  # None: 8 on turbo, 30 on base / sft
    guidance_scale: float | None = None  # None: 1 on turbo (no guidance pass), 7 on base / sft
    shift: float = 3.0
    seed: int = 0  # the initial noise: randn [1, T, 64] from torch.Generator().manual_seed(seed), float32, CPU
    src_audio: torch.Tensor | None = None  # [2, S] at the VAE rate: repaint, cover
    audio_codes: str | None = None  # cover from 5 Hz codes "<|audio_code_N|>..." instead of src_audio
    repaint_window: tuple[float, float] | None = None  # seconds; None: the middle third of the source

    def check(self) -> None:
        if self.task not in ("text2music", "repaint", "cover"):
            raise ValueError(f"task must be text2music, repaint or cover, got {self.task!r}")
        if not (self.duration > 0 and math.isfinite(self.duration)):
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be an int >= 1 or None, got {self.steps!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.src_audio is not None and self.audio_codes is not None:
            raise ValueError("give src_audio or audio_codes, not both")
        if self.task == "text2music" and (self.src_audio is not None or self.audio_codes is not None):
            raise ValueError("task text2music takes neither src_audio nor audio_codes")
        if self.task == "repaint" and self.src_audio is None:
            raise ValueError("task repaint needs src_audio [2, S]")
        if self.task == "cover" and self.src_audio is None and self.audio_codes is None:
            raise ValueError("task cover needs src_audio [2, S] or audio_codes")
        if self.src_audio is not None and (self.src_audio.dim() != 2 or self.src_audio.shape[0] != 2):
            raise ValueError(f"src_audio must have shape [2, S], got {list(self.src_audio.shape)}")


def stand_in_source(seconds: float, rate: int, hop: int, seed: int = 0) -> torch.Tensor:
    """A reproducible stand-in source [2, S] (S a whole number of latent frames): two chords and some noise."""
    n = max(1, round(seconds * rate / hop)) * hop
    t = torch.arange(n, dtype=torch.float64) / rate
    left = sum(torch.sin(2 * math.pi * f * t) for f in (220.0, 277.2, 329.6))
    right = sum(torch.sin(2 * math.pi * f * t) for f in (196.0, 246.9, 293.7))
    noise = torch.randn(2, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    wave = torch.stack([left, right]) + 0.3 * noise  # [2, S]
    return (0.5 * wave / wave.abs().max()).float()


def _request(case: ParityCase, pipe) -> dict:
    """Keyword arguments both pipelines take, every default spelled out (their defaults differ)."""
    turbo, rate, hop = pipe.config.pipeline.is_turbo, pipe.sample_rate, pipe.hop
    kw = dict(prompt=case.prompt, lyrics=case.lyrics, task_type=case.task, shift=case.shift,
              num_inference_steps=case.steps or (8 if turbo else 30),
              guidance_scale=case.guidance_scale if case.guidance_scale is not None else (1.0 if turbo else 7.0))
    seconds = case.duration
    if case.src_audio is not None:
        # float32 and clamped to [-1, 1]: what our pipeline makes of any source (as the official loader);
        # diffusers takes the source as given, so both get the prepared one.
        kw["src_audio"] = case.src_audio.float().clamp(-1.0, 1.0)
        seconds = case.src_audio.shape[-1] / rate
    elif case.audio_codes is not None:
        kw["audio_codes"] = case.audio_codes
        n = case.audio_codes.count("<|audio_code_")
        seconds = n * pipe.config.audio_tokenizer.pool_window_size * hop / rate
    if case.task == "repaint":
        start, end = case.repaint_window or (seconds / 3, 2 * seconds / 3)
        kw.update(repainting_start=float(start), repainting_end=float(end))
    kw["audio_duration"] = seconds
    return kw


# --- ours: one ordinary run, with recording stand-ins for its models --------------------------------------

class _Tap:
    """Stands in for one model of our pipeline: forwards every attribute, records calls to chosen methods."""

    def __init__(self, module, methods: tuple[str, ...]):
        self._module, self._methods, self.calls = module, methods, {}

    def _record(self, name, fn, args, kwargs):
        out = fn(*args, **kwargs)
        self.calls.setdefault(name, []).append((args, kwargs, out))
        return out

    def __call__(self, *args, **kwargs):
        return self._record("forward", self._module, args, kwargs)

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if name not in self._methods:
            return attr
        return lambda *args, **kwargs: self._record(name, attr, args, kwargs)


def _arg(call, index: int, name: str):
    args, kwargs, _ = call
    return args[index] if len(args) > index else kwargs[name]


@dataclass
class _Ours:
    ids: list  # [caption ids, caption mask, lyric ids, lyric mask]
    text: torch.Tensor  # [B, Lt, H]
    lyric: torch.Tensor  # [B, Ll, H]
    condition_inputs: tuple  # (text, text_mask, lyric, lyric_mask, refs, order) as our condition encoder got them
    states: torch.Tensor  # [B, L, W]
    mask: torch.Tensor  # [B, L]
    source: torch.Tensor | None  # VAE latents of the source [B, 64, T]
    context: torch.Tensor  # [B, T, 128]
    dit_calls: list  # per step: (x, t, condition states, context, velocity), batched as our DiT got them
    latents: torch.Tensor  # [B, T, 64]
    audio: torch.Tensor  # [B, 2, S] raw VAE output (before the output level normalisation)


def _run_ours(pipe, request: dict, noise: torch.Tensor) -> _Ours:
    methods = {"text_encoder": ("embed",), "condition_encoder": (), "vae": ("encode", "decode"),
               "dit": ("prepare_condition",)}
    originals = {name: getattr(pipe, name) for name in methods}
    taps = {name: _Tap(originals[name], m) for name, m in methods.items()}
    try:
        for name, tap in taps.items():
            setattr(pipe, name, tap)
        # One-pass VAE decode, as diffusers (ours decodes long latents in windows by default, like the official).
        result = pipe(**request, latents=noise, compat="diffusers", vae_chunk_size=None, output_type="pt")
    finally:
        for name, module in originals.items():
            setattr(pipe, name, module)
    text_call, embed_call = taps["text_encoder"].calls["forward"][0], taps["text_encoder"].calls["embed"][0]
    cond_call = taps["condition_encoder"].calls["forward"][0]
    encodes = taps["vae"].calls.get("encode", [])
    # Our DiT gets the condition once per run (prepare_condition, guidance's null half included); every
    # step reuses it.
    states_in = _arg(taps["dit"].calls["prepare_condition"][0], 0, "encoder_hidden_states")
    dit_calls = [(_arg(c, 0, "hidden_states"), _arg(c, 1, "timestep"), states_in, _arg(c, 4, "context_latents"),
                  c[2]) for c in taps["dit"].calls["forward"]]
    states, mask = cond_call[2]
    return _Ours(
        ids=[_arg(text_call, 0, "input_ids"), _arg(cond_call, 1, "text_mask"), _arg(embed_call, 0, "input_ids"),
             _arg(cond_call, 3, "lyric_mask")],
        text=text_call[2], lyric=embed_call[2], condition_inputs=cond_call[0], states=states, mask=mask,
        source=encodes[0][2] if encodes else None, context=dit_calls[0][3][:noise.shape[0]], dit_calls=dit_calls,
        # float32 like the pipeline's own decode_latents; the audio metrics work in float64 anyway.
        latents=result.latents, audio=torch.cat([c[2] for c in taps["vae"].calls["decode"]]).float())


# --- the reference: diffusers 0.42.1, piece by piece in the order of AceStepPipeline.__call__ -------------

@contextlib.contextmanager
def posterior_mean():
    """Within this block diffusers' Oobleck posterior `.sample()` returns its mean (it draws from the global RNG)."""
    from diffusers.models.autoencoders.autoencoder_oobleck import OobleckDiagonalGaussianDistribution as Posterior

    original = Posterior.sample
    Posterior.sample = lambda self, generator=None: self.mean
    try:
        yield
    finally:
        Posterior.sample = original


@contextlib.contextmanager
def _recorded_ids(ref):
    """The caption and lyric ids diffusers' encode_prompt hands to its text encoder and embedding table."""
    seen = {"caption": [], "embed": []}

    def text_hook(module, args, kwargs):
        seen["caption"].append(kwargs["input_ids"] if "input_ids" in kwargs else args[0])

    def embed_hook(module, args):
        seen["embed"].append(args[0])

    hooks = [ref.text_encoder.register_forward_pre_hook(text_hook, with_kwargs=True),
             ref.text_encoder.get_input_embeddings().register_forward_pre_hook(embed_hook)]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def _reference_context(ref, src, length: int, request: dict, device, dtype) -> torch.Tensor:
    """diffusers' step 5: chunk mask, silence inside a repaint window, [B, T, 64 + 64]."""
    task, has_src = request["task_type"], "src_audio" in request
    chunk = ref._build_chunk_mask(task_type=task, latent_length=length, batch_size=src.shape[0], device=device,
                                  dtype=dtype, acoustic_dim=ref.transformer.config.audio_acoustic_hidden_dim,
                                  repainting_start=request.get("repainting_start"),
                                  repainting_end=request.get("repainting_end"), has_src_audio=has_src)
    if task == "repaint" and has_src:
        silence, _ = ref.prepare_src_latents(device=device, dtype=dtype, batch_size=src.shape[0], latent_length=length)
        src = torch.where(chunk > 0.5, silence, src)
    return torch.cat([src, chunk], dim=-1)


def _reference_loop(ref, noise, states, context, request: dict):
    """diffusers' denoising loop (its steps 7, 9, 10) -> (final latents, per step (t [B], raw DiT output))."""
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

    scale, b = request["guidance_scale"], noise.shape[0]
    guided = scale > 1.0 and not ref.is_turbo
    null = ref.condition_encoder.null_condition_emb.to(states).expand_as(states) if guided else None
    schedule = ref._get_timestep_schedule(num_inference_steps=request["num_inference_steps"], shift=request["shift"],
                                          device=noise.device, dtype=torch.float32)
    scheduler = copy.deepcopy(ref.scheduler)  # stepping moves its index: keep the pipeline's own untouched
    scheduler.set_timesteps(sigmas=schedule.tolist(), device=noise.device)
    buffer = MomentumBuffer(momentum=-0.75) if guided else None
    x, steps = noise, []
    for t_sched in scheduler.timesteps:
        t = float(t_sched) * torch.ones((b,), device=noise.device, dtype=noise.dtype)
        if guided:  # the default cfg interval (0, 1) holds every step
            out = ref.transformer(hidden_states=torch.cat([x, x]), timestep=torch.cat([t, t]),
                                  timestep_r=torch.cat([t, t]), encoder_hidden_states=torch.cat([states, null]),
                                  context_latents=torch.cat([context, context]), return_dict=False)[0]
            cond, uncond = out.chunk(2)
            v = normalized_guidance(pred_cond=cond, pred_uncond=uncond, guidance_scale=scale - 1.0,
                                    momentum_buffer=buffer, eta=0.0, norm_threshold=2.5,
                                    use_original_formulation=True, norm_dim=(1,))
        else:
            out = v = ref.transformer(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=states,
                                      context_latents=context, return_dict=False)[0]
        steps.append((t, out))
        x = scheduler.step(v, t_sched, x, return_dict=False)[0]
    return x, steps


def _decode(ref, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' step 11 without the level normalisation: latents [B, T, 64] -> audio [B, 2, S] float32."""
    # [B, T, 64] -> [B, 64, T], in the VAE's dtype (the pipeline's latents have the transformer's).
    z = latents.transpose(1, 2).to(ref.vae.dtype)
    return ref.vae.decode(z).sample.float()  # float32 like our decode_latents


def _compare_reference(ref, request: dict, noise: torch.Tensor, ours: _Ours, judge: _Judge) -> list[StageResult]:
    device, dtype, b = noise.device, noise.dtype, noise.shape[0]
    rows = []
    task = "cover" if "audio_codes" in request else request["task_type"]

    # 1. Text: diffusers' own tokenization and encoder (accumulated); its encoder on our ids (isolated).
    with _recorded_ids(ref) as seen:
        text, tmask, lyric, lmask = ref.encode_prompt(
            prompt=[request["prompt"]], lyrics=[request["lyrics"]], device=device,
            audio_duration=request["audio_duration"], instruction=ref._get_task_instruction(task_type=task))
    ref_ids = [seen["caption"][0], tmask, seen["embed"][-1], lmask]  # the last lookup is the lyrics'
    rows.append(judge.exact("token_ids", "direct", list(zip(ours.ids, ref_ids))))
    text_iso = ref.text_encoder(input_ids=ours.ids[0]).last_hidden_state
    lyric_iso = ref.text_encoder.get_input_embeddings()(ours.ids[2])
    rows += [judge.tensors("text_encoder", "isolated", ours.text, text_iso),
             judge.tensors("text_encoder", "accumulated", ours.text, text),
             judge.tensors("lyric_embeddings", "isolated", ours.lyric, lyric_iso),
             judge.tensors("lyric_embeddings", "accumulated", ours.lyric, lyric)]

    # 2. Source latents: diffusers' VAE on the same waveform (the posterior mean, see posterior_mean).
    frames = math.ceil(request["audio_duration"] * ref.latents_per_second)
    src, length = ref.prepare_src_latents(device=device, dtype=dtype, batch_size=b, src_audio=request.get("src_audio"),
                                          audio_codes=request.get("audio_codes"), latent_length=frames, task_type=task)
    if ours.source is not None:
        # [2, S] -> [1, 2, S] in the VAE's dtype, as prepare_src_latents feeds it.
        wave = request["src_audio"][None].to(device=device, dtype=ref.vae.dtype)
        rows.append(judge.tensors("vae_encode", "direct", ours.source, ref.vae.encode(wave).latent_dist.sample()))

    # 3. Condition encoder: on our text / lyrics / timbre input (isolated), on its own (accumulated).
    refs = (ref.condition_encoder.silence_latent[:, :math.ceil(30 * ref.latents_per_second)]
            .to(device=device, dtype=dtype).expand(b, -1, -1).contiguous())
    order = torch.arange(b, device=device)
    o_text, o_tmask, o_lyric, o_lmask, o_refs, o_order = ours.condition_inputs
    # Our masks are int64 (1 = real token); diffusers' encode_prompt hands its condition encoder bool masks.
    states_iso, mask_iso = ref.condition_encoder(o_text, o_tmask.bool(), o_lyric, o_lmask.bool(), o_refs, o_order)
    states, smask = ref.condition_encoder(text_hidden_states=text, text_attention_mask=tmask, lyric_hidden_states=lyric,
                                          lyric_attention_mask=lmask, refer_audio_acoustic_hidden_states_packed=refs,
                                          refer_audio_order_mask=order)
    rows += [judge.tensors("condition", "isolated", ours.states, states_iso, mask=(ours.mask, mask_iso)),
             judge.tensors("condition", "accumulated", ours.states, states, mask=(ours.mask, smask))]

    # 4. Context: from our VAE latents (isolated) or its own (accumulated); without source audio, one view.
    context = _reference_context(ref, src, length, request, device, dtype)
    if ours.source is None:
        rows.append(judge.tensors("context", "direct", ours.context, context))
    else:
        mine = ours.source.transpose(1, 2).to(dtype)  # [B, 64, T] -> [B, T, 64], as our pipeline uses them
        if task == "cover":
            silence = ref.condition_encoder.silence_latent.to(device=device, dtype=dtype)
            quantized, _ = ref.audio_tokenizer.tokenize(mine, silence)
            mine = ref.audio_token_detokenizer(quantized)[:, :mine.shape[1]].contiguous()
        context_iso = _reference_context(ref, mine, mine.shape[1], request, device, dtype)
        rows += [judge.tensors("context", "isolated", ours.context, context_iso),
                 judge.tensors("context", "accumulated", ours.context, context)]

    # 5. Sampling: the schedule, the DiT on our exact inputs at every step (isolated) and along its own run.
    latents_mirror, ref_steps = _reference_loop(ref, noise, states, context, request)
    rows.append(judge.schedule([float(c[1][0]) for c in ours.dit_calls], [float(t[0]) for t, _ in ref_steps]))
    for i, ((x, t, states_in, ctx, v), (_, v_ref)) in enumerate(zip(ours.dit_calls, ref_steps)):
        where = dict(step=i, t=float(t[0]))
        v_iso = ref.transformer(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=states_in,
                                context_latents=ctx, return_dict=False)[0]
        rows.append(judge.tensors("dit_velocity", "isolated", v, v_iso, **where))
        if v.shape[0] == 2 * v_ref.shape[0]:
            # Ours batches the unconditional half at every step; diffusers only inside the cfg interval.
            v = v[:v_ref.shape[0]]
        rows.append(judge.tensors("dit_velocity", "accumulated", v, v_ref, **where))
    if len(ours.dit_calls) != len(ref_steps):
        rows.append(StageResult("dit_velocity", "direct", False, "same number of steps",
                                note=f"{len(ours.dit_calls)} DiT calls in ours, {len(ref_steps)} in the reference"))

    # 6. Final latents: its loop on our condition and context (isolated), pipe(...) end to end (accumulated).
    latents_iso, _ = _reference_loop(ref, noise, ours.states, ours.context, request)
    latents = ref(**request, latents=noise, output_type="latent", return_dict=False)[0]
    rows += [judge.tensors("final_latents", "isolated", ours.latents, latents_iso),
             judge.tensors("final_latents", "accumulated", ours.latents, latents)]

    # 7. Decoded audio: its VAE on our latents (isolated) and on its own latents (accumulated).
    rows += [judge.audio("decoded_audio", "isolated", ours.audio, _decode(ref, ours.latents)),
             judge.audio("decoded_audio", "accumulated", ours.audio, _decode(ref, latents))]
    rows.append(judge.tensors("reference_mirror", "reference", latents_mirror, latents))
    return rows


def compare(ours_pipe, ref_pipe, case: ParityCase, *, thresholds: Thresholds | None = None) -> Report:
    """Run `case` through our AceStepPipeline and a diffusers AceStepPipeline (same weights) -> Report."""
    case.check()
    if ours_pipe.dtype != ref_pipe.transformer.dtype:
        raise ValueError(f"ours_pipe computes in {ours_pipe.dtype}, ref_pipe in {ref_pipe.transformer.dtype}: "
                         "load ours with load_pipeline(..., dtype, compute_dtype=dtype) and the reference in that dtype")
    thresholds = thresholds or Thresholds()
    cfg = ours_pipe.config
    request = _request(case, ours_pipe)
    if "src_audio" in request:
        length = request["src_audio"].shape[-1] // ours_pipe.hop  # the VAE's frames: floor(samples / hop)
    elif "audio_codes" in request:
        length = request["audio_codes"].count("<|audio_code_") * cfg.audio_tokenizer.pool_window_size
    else:
        length = math.ceil(request["audio_duration"] * ours_pipe.sample_rate / ours_pipe.hop)  # diffusers' rule
    # Drawn in float32 on the CPU, then moved: the same numbers on every device and in every dtype.
    noise = torch.randn(1, length, cfg.dit.latent_dim, generator=torch.Generator().manual_seed(case.seed))
    noise = noise.to(device=ours_pipe.device, dtype=ours_pipe.dtype)
    judge = _Judge(thresholds, bf16=ours_pipe.dtype == torch.bfloat16)
    with torch.no_grad():
        ours = _run_ours(ours_pipe, request, noise)
        with posterior_mean():
            rows = _compare_reference(ref_pipe, request, noise, ours, judge)
    import diffusers

    from acestep_core import __version__

    meta = dict(against="diffusers", reference_version=diffusers.__version__, ours_version=__version__,
                compat="diffusers", task=request["task_type"],
                steps=request["num_inference_steps"], guidance_scale=request["guidance_scale"], shift=case.shift,
                seed=case.seed, latent_frames=length, seconds=length * ours_pipe.hop / ours_pipe.sample_rate,
                dtype={torch.bfloat16: "bf16", torch.float32: "fp32"}.get(ours_pipe.dtype, str(ours_pipe.dtype)),
                device=str(ours_pipe.device), source="audio" if "src_audio" in request else
                ("codes" if "audio_codes" in request else None))
    return Report(meta, thresholds, rows)


# --- command line -----------------------------------------------------------------------------------------

class ParityExit(Exception):
    """A one-line message and the exit status that goes with it."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ParityExit(f"{message} (see `{self.prog} --help`)", USAGE)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--checkpoint", required=True, metavar="DIR_OR_HUB_ID",
                   help="our layout, official checkpoints/, a diffusers pipeline folder or a Hub id")
    p.add_argument("--against", choices=("diffusers", "official"), default="diffusers",
                   help="reference implementation (default diffusers 0.42.1)")
    p.add_argument("--variant", help="model in a folder holding several: turbo, base, sft, ...")
    p.add_argument("--task", choices=("text2music", "repaint", "cover"), default="text2music")
    p.add_argument("--duration", type=float, default=10.0, metavar="S",
                   help="seconds (text2music, and the stand-in source when no --src-audio is given; default 10)")
    p.add_argument("--steps", type=int, metavar="N", help="sampler steps (default 8 turbo, 30 base/sft)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the shared initial noise (default 0)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--prompt", default=ParityCase.prompt)
    p.add_argument("--lyrics", default=ParityCase.lyrics, metavar="TEXT|@FILE")
    p.add_argument("--src-audio", metavar="FILE", help="48 kHz source for repaint / cover (default: a stand-in signal)")
    p.add_argument("--audio-codes", metavar="TEXT|@FILE", help="cover from 5 Hz audio codes instead of a source")
    p.add_argument("--repaint", nargs=2, type=float, metavar=("START", "END"),
                   help="repaint window in seconds (default: the middle third of the source)")
    p.add_argument("--max-rel", type=float, default=Thresholds.max_rel, help="fp32 pass: err/std at most this")
    p.add_argument("--min-cosine", type=float, default=Thresholds.min_cosine, help="bf16 pass: cosine at least this")
    p.add_argument("--min-snr", type=float, default=Thresholds.min_snr_db, help="audio pass: SNR (dB) at least this")
    return p


def _require_reference(against: str) -> None:
    if against == "official":
        try:
            found = importlib.util.find_spec("acestep") is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ParityExit("the official ACE-Step 1.5 package `acestep` is not importable; install it in its own "
                             "environment (docs/parity-report.md, 'Against the official implementation') or use "
                             "--against diffusers", USAGE)
        raise ParityExit("--against official is not implemented in this version; use --against diffusers, and "
                         "tests/test_pipeline.py for the official fixtures", USAGE)
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
        from diffusers import AceStepPipeline  # noqa: F401
    except ImportError as e:
        raise ParityExit(f"the diffusers reference is not installed ({e}); install it with: {INSTALL_HINT}", USAGE)
    if diffusers.__version__ != REFERENCE_VERSION:
        print(f"note: diffusers {diffusers.__version__} found; this comparison follows {REFERENCE_VERSION}",
              file=sys.stderr)


def _text_or_file(value: str | None, flag: str) -> str | None:
    if value is None or not value.startswith("@"):
        return value
    try:
        with open(value[1:], encoding="utf-8") as f:
            return f.read().rstrip()
    except (OSError, UnicodeDecodeError) as e:
        raise ParityExit(f"{flag}: {value[1:]}: {e}", USAGE) from None


def _case(args, rate: int, hop: int) -> ParityCase:
    from acestep_core import audio_io

    src = None
    if args.src_audio is not None:
        try:
            src = audio_io.read_audio(args.src_audio, rate)
        except ValueError as e:
            raise ParityExit(f"--src-audio: {e}", USAGE) from None
    codes = _text_or_file(args.audio_codes, "--audio-codes")
    if args.task in ("repaint", "cover") and src is None and codes is None:
        src = stand_in_source(args.duration, rate, hop, args.seed)
        print(f"no --src-audio: using a {src.shape[-1] / rate:.2f} s stand-in signal as the source", file=sys.stderr)
    case = ParityCase(task=args.task, prompt=args.prompt, lyrics=_text_or_file(args.lyrics, "--lyrics"),
                      duration=args.duration, steps=args.steps, seed=args.seed, src_audio=src, audio_codes=codes,
                      repaint_window=tuple(args.repaint) if args.repaint else None)
    try:
        case.check()
    except ValueError as e:
        raise ParityExit(str(e), USAGE) from None
    return case


def _diffusers_folder(checkpoint: str, variant: str | None, tmp: str) -> tuple[str, bool]:
    """-> (a diffusers AceStepPipeline folder with the checkpoint's weights, whether it was converted)."""
    from acestep_core.convert.convert import detect_layout
    from acestep_core.convert.to_diffusers import read_source, write_diffusers

    from acestep_core.hub import resolve_checkpoint

    path = resolve_checkpoint(checkpoint, variant)
    layout, root = detect_layout(path, variant)
    if layout == "diffusers":
        return root, False
    folder = f"{tmp}/diffusers"
    print(f"writing {root} ({layout} layout) as a diffusers folder for both pipelines ...", file=sys.stderr)
    write_diffusers(read_source(path, variant), folder)
    return folder, True


def _load_ours(folder: str, device, dtype):
    from acestep_core.pipeline import load_pipeline

    # Native arithmetic in `dtype` even on a CPU without bf16 units (where load_pipeline would compute in
    # fp32): the comparison is between two pipelines computing in the same precision.
    return load_pipeline(folder, device, dtype, compute_dtype=dtype)


def _load_reference(folder: str, device, dtype):
    from diffusers import AceStepPipeline

    ref = AceStepPipeline.from_pretrained(folder, dtype=dtype).to(device)
    ref.set_progress_bar_config(disable=True)
    return ref


def run(args) -> int:
    """`acestep parity` with parsed arguments (add_arguments) -> exit status."""
    _require_reference(args.against)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    thresholds = Thresholds(args.max_rel, args.min_cosine, args.min_snr)
    with tempfile.TemporaryDirectory(prefix="acestep-parity-") as tmp:
        folder, converted = _diffusers_folder(args.checkpoint, args.variant, tmp)
        ours = _load_ours(folder, device, dtype)
        case = _case(args, ours.sample_rate, ours.hop)
        report = compare(ours, _load_reference(folder, device, dtype), case, thresholds=thresholds)
    report.meta.update(checkpoint=args.checkpoint, converted_to_diffusers=converted)
    print(report.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")
    return OK if report.passed else FAILED


def main(argv: list[str] | None = None) -> int:
    """`acestep parity ...` (argv: the arguments after `parity`) -> exit status 0 / 1 / 2 / 3."""
    try:
        args = add_arguments(_Parser(prog="acestep parity", description=__doc__.splitlines()[0])).parse_args(argv)
        return run(args)
    except ParityExit as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {first}", file=sys.stderr)
        return ERROR


if __name__ == "__main__":
    sys.exit(main())
