"""`acestep parity --against diffusers`: our pipeline against diffusers 0.42.1, stage by stage.

    acestep parity --checkpoint DIR --against diffusers --task repaint --steps 8 --seed 0 --json report.json

Both pipelines load the same files (a checkpoint that is not a diffusers folder is first written as one in a
temporary folder with `acestep_core.convert.to_diffusers.write_diffusers`; see cli.py) and get the same request,
the same initial noise and the same source audio. Ours runs with compat="diffusers", so the documented
differences between the official code and diffusers (docs/parity.md) do not show up as failures.

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
stand-ins (ours.py); diffusers' by calling its public pieces (`encode_prompt`, `prepare_src_latents`,
`condition_encoder`, `transformer`, `scheduler.step`, `vae`) in the order of its `__call__`, plus its
private `_build_chunk_mask` / `_get_timestep_schedule` / `_get_task_instruction` helpers (diffusers is pinned
to 0.42.1). diffusers samples the VAE posterior from the global RNG; `posterior_mean()` makes it return the
mean (our default) while a comparison runs. The metrics and thresholds are in report.py.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch

from .case import ParityCase, pipeline_request, stand_in_source  # noqa: F401  (stand_in_source: public here too)
from .ours import Ours, run_ours
from .report import Report, StageResult, Thresholds, _Judge, environment

REFERENCE_VERSION = "0.42.1"


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


def _compare_reference(ref, request: dict, noise: torch.Tensor, ours: Ours, judge: _Judge):
    """-> (rows, its decoded audio [B, 2, S] of the accumulated view)."""
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
    audio = _decode(ref, latents)
    rows += [judge.audio("decoded_audio", "isolated", ours.audio, _decode(ref, ours.latents)),
             judge.audio("decoded_audio", "accumulated", ours.audio, audio)]
    rows.append(judge.tensors("reference_mirror", "reference", latents_mirror, latents))
    return rows, audio


def compare(ours_pipe, ref_pipe, case: ParityCase, *, thresholds: Thresholds | None = None) -> Report:
    """Run `case` through our AceStepPipeline and a diffusers AceStepPipeline (same weights) -> Report."""
    case.check()
    extra = case.official_only()
    if extra is not None:
        raise ValueError(f"{extra} is official-only: diffusers has no equivalent (use --against official)")
    if ours_pipe.dtype != ref_pipe.transformer.dtype:
        raise ValueError(f"ours_pipe computes in {ours_pipe.dtype}, ref_pipe in {ref_pipe.transformer.dtype}: "
                         "load ours with load_pipeline(..., dtype, compute_dtype=dtype) and the reference in that dtype")
    thresholds = thresholds or Thresholds()
    cfg = ours_pipe.config
    request = pipeline_request(case, ours_pipe)
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
        # One-pass VAE decode, as diffusers (ours decodes long latents in windows by default, like the official).
        ours = run_ours(ours_pipe, request, noise, compat="diffusers", vae_chunk_size=None)
        with posterior_mean():
            rows, audio = _compare_reference(ref_pipe, request, noise, ours, judge)
    import diffusers

    meta = dict(against="diffusers", reference_version=diffusers.__version__, compat="diffusers",
                task=request["task_type"], steps=request["num_inference_steps"],
                guidance_scale=request["guidance_scale"], shift=case.shift, seed=case.seed, latent_frames=length,
                seconds=length * ours_pipe.hop / ours_pipe.sample_rate,
                dtype={torch.bfloat16: "bf16", torch.float32: "fp32"}.get(ours_pipe.dtype, str(ours_pipe.dtype)),
                device=str(ours_pipe.device), source="audio" if "src_audio" in request else
                ("codes" if "audio_codes" in request else None))
    meta.update(environment(), versions={**environment()["versions"], "diffusers": diffusers.__version__})
    return Report(meta, thresholds, rows, audio=(ours.audio[0], audio[0].float(), ours_pipe.sample_rate))
