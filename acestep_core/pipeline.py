"""The text-to-music pipeline: thin glue from a request to audio.

    pipe = acestep_core.load_pipeline("checkpoints/")          # ours, official or diffusers layout
    audio = pipe("upbeat synth pop", lyrics="[verse]\\n...", audio_duration=30, seed=0).audios  # [1, 2, S]

`__call__` takes the keyword arguments of diffusers 0.42.1 `AceStepPipeline.__call__` with the same tensor
layouts, so switching is a one-line change; the behaviour is the official handler's unless
`compat="diffusers"` or a custom `behaviour=` says otherwise (behaviour.py; docs/parity.md lists every difference). The models are plain attributes
(`pipe.text_encoder`, `pipe.vae`, `pipe.dit`, `pipe.condition_encoder`, `pipe.audio_tokenizer`,
`pipe.audio_detokenizer`) that a researcher can call directly.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch

from . import adapters, derived, hub, prompts, sampling, tasks
from .config import AceStepConfig
from .generate import Condition, Guidance, Repaint, generate_latents
from .loading import load_checkpoint
from .oobleck import DECODE_CHUNK_FRAMES, ENCODE_CHUNK_SECONDS
from .lm.planner import Planner, load_planner
from .requests import Request, validate_request
from .thinking import plan_kwargs
from .text import TextTokenizer

log = logging.getLogger("acestep_core")

REFERENCE_SECONDS = 30  # timbre reference: 3 x 10 s segments
PEAK_DB = -1.0  # official inference.py normalises every song to -1 dBFS peak


@dataclass
class PipelineOutput:
    audios: torch.Tensor  # [B, 2, S] float32 ("pt"), a numpy array ("np"), or latents [B, T, 64] ("latent")
    latents: torch.Tensor  # [B, T, 64] final latents
    sample_rate: int
    timings: dict = field(default_factory=dict)  # seconds per stage
    plans: tuple | None = None  # thinking=True: the 5 Hz LM's Plan per item (metadata, caption, audio codes)


class AceStepPipeline:
    def __init__(self, config: AceStepConfig, modules: dict, silence_latent: torch.Tensor, tokenizer: TextTokenizer,
                 planner: Planner | None = None):
        self.config = config
        self.planner = planner  # the 5 Hz LM for thinking=True (acestep_core.lm), or None
        self.text_encoder = modules["text_encoder"]
        self.vae = modules["vae"]
        self.dit = modules["dit"]
        self.condition_encoder = modules["condition"]
        self.audio_tokenizer = modules["audio_tokenizer"]
        self.audio_detokenizer = modules["audio_detokenizer"]
        self.silence_latent = silence_latent  # [1, S, 64]
        self.tokenizer = tokenizer
        self.sample_rate = config.vae.sampling_rate
        self.hop = config.vae.hop_length
        # (dtype, device) -> the timbre encoding [1, W] of the silence reference, a constant of the model.
        self._silence_timbre: dict = {}

    @property
    def device(self) -> torch.device:
        return self.silence_latent.device

    @property
    def dtype(self) -> torch.dtype:
        return self.silence_latent.dtype

    def compile(self, **options) -> "AceStepPipeline":
        """Opt-in `torch.compile` of the DiT forward, the sampler's hot loop (options go to torch.compile).

        `pipe.dit` stays a plain module. The first generation after this pays the compile time (reported
        separately by benchmarks/bench_dit.py); shapes that change (another duration) recompile.
        """
        self.dit.forward = torch.compile(self.dit.forward, **options)
        return self

    # --- building blocks a researcher can call on their own -------------------------------------------------

    @torch.no_grad()
    def encode_text(self, captions: list[str], lyric_texts: list[str], *, padding_side: str = "right"):
        """Formatted prompts -> (caption states [B, Lt, H], mask [B, Lt], lyric embeddings [B, Ll, H], mask [B, Ll])."""
        ids, mask = self.tokenizer.encode_captions(captions, padding_side=padding_side)
        lids, lmask = self.tokenizer.encode_lyrics(lyric_texts, padding_side=padding_side)
        ids, mask, lids, lmask = (t.to(self.device) for t in (ids, mask, lids, lmask))
        return self.text_encoder(ids), mask, self.text_encoder.embed(lids), lmask

    @torch.no_grad()
    def encode_audio(self, wave: torch.Tensor, *, sample: bool = False, generator=None,
                     chunk_seconds: float | None = ENCODE_CHUNK_SECONDS) -> torch.Tensor:
        """Audio [B, 2, S] at the VAE rate -> latents [B, S // hop, 64] (posterior mean unless sample=True).

        Audio longer than `chunk_seconds` is encoded in overlapping windows (official); None: one pass (diffusers)."""
        z = self.vae.encode(wave.to(self.device), sample=sample, generator=generator, chunk_seconds=chunk_seconds)
        return z.transpose(1, 2).to(self.dtype)  # [B, 64, T] -> [B, T, 64]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, *, chunk_size: int | None = DECODE_CHUNK_FRAMES) -> torch.Tensor:
        """Latents [B, T, 64] -> audio [B, 2, T * hop] float32, item by item in overlapping chunks of `chunk_size`
        frames (official: 512 on large GPUs, 256 on CPU; the result is the same within 1e-6 of the peak, and 512
        wastes less work on the 64-frame overlaps)."""
        z = latents.transpose(1, 2)  # [B, T, 64] -> [B, 64, T]
        # float(): the VAE may run in bf16; the output audio is always float32.
        items = [self.vae.decode(z[i:i + 1], chunk_size=chunk_size).float() for i in range(z.shape[0])]
        return items[0] if len(items) == 1 else torch.cat(items)

    @torch.no_grad()
    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """FSQ codes [B, N] -> 25 Hz latent hints [B, 5 N, 64] (official: quantizer output -> detokenizer)."""
        return self.audio_detokenizer(self.audio_tokenizer.codes_to_quantized(codes.to(self.device)))

    @torch.no_grad()
    def round_trip_fsq(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, T, 64] -> FSQ tokenize + detokenize -> [B, T, 64]: the cover task's context."""
        quantized, _, _ = self.audio_tokenizer.tokenize(latents, self.silence_latent)
        return self.audio_detokenizer(quantized)[:, : latents.shape[1]]

    # --- the request ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, prompt=None, lyrics="", **kwargs) -> PipelineOutput | tuple:
        start = time.perf_counter()
        req: Request = validate_request(self.config, prompt=prompt, lyrics=lyrics, **kwargs)
        plans = None
        if req.thinking is not None:
            # The LM plans first; the request is then checked again with the plan filled in.
            planned, plans = plan_kwargs(self.planner, req, dict(prompt=prompt, lyrics=lyrics, **kwargs),
                                         self._caption_fits(req))
            req = validate_request(self.config, **planned)
        rules, rate = req.behaviour, self.sample_rate
        timings: dict[str, float] = {}

        def lap(name):
            nonlocal start
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - start
            start = now

        b, dtype, device = req.batch_size, self.dtype, self.device
        # Text first: a prompt or lyrics over the token limit fails before any model runs.
        captions, lyric_texts = derived.captions(req, rate), derived.lyric_texts(req)
        self._check_token_limits(captions, lyric_texts)
        src_latents = code_hints = None
        # One posterior-sampling generator per request: the source, then the reference, draw from it in turn.
        vae_gen = derived.vae_generator(req)
        if req.codes is not None:
            code_hints = self.codes_to_latents(req.codes).to(dtype)  # [B, 5N, 64]
        elif req.src_audio is not None:
            src_latents = self.encode_audio(req.src_audio, sample=req.sample_posterior,
                                            generator=vae_gen, chunk_seconds=rules.encode_chunk_seconds)
        lap("encode_audio")

        # Latent length: the source or codes decide it when given, else the requested duration.
        given = code_hints if code_hints is not None else src_latents
        length = derived.latent_length(req, self.config, None if given is None else given.shape[1])
        window = None
        if req.repaint_window is not None:
            window = tasks.repaint_frames(*req.repaint_window, length, rate, self.hop, rules)
        inputs = tasks.build_task_inputs(req.task, length, b, self.silence_latent, source=src_latents,
                                         code_hints=code_hints, window=window, chunk_mask_mode=req.chunk_mask_mode)

        padding = derived.padding_side(req, self.config)
        text, text_mask, lyric, lyric_mask = self.encode_text(captions, lyric_texts, padding_side=padding)
        lap("text_encoder")

        refs, order = self._reference_latents(req, b, vae_gen)
        states, mask = self._condition(text, text_mask, lyric, lyric_mask, refs, order)
        context = self._context(inputs, code_hints)
        cond = Condition(states, mask, context)
        non_cover = None
        # The official switches to a text2music condition for any task; diffusers blends, for cover only.
        if req.audio_cover_strength < 1.0 and (rules.cover_mix == "switch" or req.task == "cover"):
            non_cover = self._non_cover_condition(req, inputs, lyric, lyric_mask, refs, order, context, padding)
        lap("condition")

        channels, turbo = self.config.dit.latent_dim, self.config.pipeline.is_turbo
        gens = derived.generators(req, device)
        noise = derived.initial_noise(req, (b, length, channels), dtype, device, gens)
        if req.retake_variance > 0:
            retake = derived.retake_noise(req, (b, length, channels), dtype, device)
            noise = sampling.mix_retake_noise(noise, retake, req.retake_variance)
        timesteps = derived.timesteps(req, turbo, dtype)
        start_latents = None
        if req.cover_noise_strength > 0:
            # From the source noised to the schedule time nearest to 1 - strength (official cover mode).
            start_latents, timesteps = sampling.cover_start(noise, inputs.src_latents, timesteps,
                                                            req.cover_noise_strength)
        guidance = Guidance(req.guidance_scale, req.cfg_interval, rules.guidance_interval_on, adg=req.use_adg)
        inject, crossfade, wav_fade = derived.repaint_plan(req, rate)
        repaint = None
        if inputs.repaint_mask is not None and rules.repaint_injection:
            repaint = Repaint(inputs.repaint_mask, inputs.clean_src, inject, crossfade)
        blend = req.audio_cover_strength if (non_cover is not None and rules.cover_mix == "blend") else None
        latents = generate_latents(
            self.dit, noise, timesteps, cond, guidance=guidance, null_emb=self.condition_encoder.null_condition_emb,
            non_cover=non_cover, cover_steps=derived.cover_steps(req, len(timesteps) - 1), cover_blend=blend,
            repaint=repaint, sampler=derived.sampler_options(req, gens), turbo=turbo, start_latents=start_latents,
            mask_condition_padding=req.mask_condition_padding, on_step=derived.step_callback(req, self, timesteps),
            progress=req.progress,
        )
        lap("dit")
        if not bool(torch.isfinite(latents).all()):
            raise ValueError("sampling produced non-finite latents (NaN or inf) before decoding; check the "
                             "checkpoint's weights and the sampler options (dtype, guidance_scale, shift)")

        if req.output_type == "latent":
            out = latents
        else:
            audio = self.decode_latents(latents, chunk_size=req.vae_chunk_size)
            if repaint is not None and req.src_audio is not None:
                audio = _splice_repaint(audio, req.src_audio, derived.repaint_window_samples(req, rate), wav_fade)
            audio = _normalize(audio)
            keep = derived.trim_samples(req, rate)
            if keep is not None:
                # The model's minimum is 128 frames (5.12 s); a shorter request gets the length it asked for.
                audio = audio[..., :keep]
            lap("vae_decode")
            out = audio.cpu().numpy() if req.output_type == "np" else audio
        if plans is not None:
            timings["planner"] = sum(p.timings.get("total_s", 0.0) for p in plans)
        result = PipelineOutput(out, latents, self.sample_rate, timings, plans)
        return result if req.return_dict else (out,)

    # --- pieces of __call__ ----------------------------------------------------------------------------------

    def _caption_fits(self, req: Request):
        """caption -> whether it stays within the caption token limit once formatted like this request's."""
        def fits(caption: str) -> bool:
            (text,) = derived.captions(dataclasses.replace(req, prompts=[caption]), self.sample_rate)
            return self.tokenizer.count(text) <= self.tokenizer.caption_max_tokens
        return fits

    def _check_token_limits(self, captions: list[str], lyric_texts: list[str]) -> None:
        """The official handler silently truncates (a long caption loses its metas, long lyrics their end);
        we refuse instead, naming the argument, so no request is quietly changed."""
        tok = self.tokenizer
        for name, texts, limit in (("prompt", captions, tok.caption_max_tokens),
                                   ("lyrics", lyric_texts, tok.lyric_max_tokens)):
            for i, text in enumerate(texts):
                n = tok.count(text)
                if n > limit:
                    where = name if len(texts) == 1 else f"{name}[{i}]"
                    raise ValueError(f"{where} is too long: {n} tokens once formatted, the model takes at most {limit}")

    def _reference_latents(self, req: Request, batch_size: int,
                           vae_gen: torch.Generator | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """-> packed reference latents [N, 750, 64] (None: the silence reference) and the batch index of each [N]."""
        frames = self.config.condition.timbre_fix_frame
        order = torch.arange(batch_size, device=self.device)
        if req.reference_audio is None:
            return None, order
        wave = _reference_segments(req.reference_audio, self.sample_rate)  # [Br, 2, 30 s]
        refs = self.encode_audio(wave, sample=req.sample_posterior, generator=vae_gen,
                                 chunk_seconds=req.behaviour.encode_chunk_seconds)[:, :frames]
        if refs.shape[0] == 1:
            refs = refs.expand(batch_size, -1, -1)
        return refs.contiguous(), order

    def _condition(self, text, text_mask, lyric, lyric_mask, refs, order) -> tuple[torch.Tensor, torch.Tensor]:
        """The condition encoder; refs None: the silence reference, whose timbre encoding is computed once."""
        if refs is not None:
            return self.condition_encoder(text, text_mask, lyric, lyric_mask, refs, order)
        key = (self.dtype, self.device)
        if key not in self._silence_timbre:
            silence = self.silence_latent[:, : self.config.condition.timbre_fix_frame]  # [1, 750, 64]
            self._silence_timbre[key] = self.condition_encoder.timbre_encoder(silence)  # [1, W]
        embeds = self._silence_timbre[key].expand(order.shape[0], -1)  # [1, W] -> [N, W], one per item
        return self.condition_encoder(text, text_mask, lyric, lyric_mask, None, order, timbre_embeds=embeds)

    def _context(self, inputs: tasks.TaskInputs, code_hints: torch.Tensor | None) -> torch.Tensor:
        src = inputs.src_latents
        if bool(inputs.is_cover.any()):
            length = src.shape[1]
            if code_hints is not None:
                hints = torch.stack([tasks.pad_with_silence(h, length, self.silence_latent) for h in code_hints])
            else:
                hints = self.round_trip_fsq(src)
            src = torch.where(inputs.is_cover[:, None, None], hints.to(src), src)
        mask = inputs.chunk_mask[..., None].expand(-1, -1, src.shape[-1]).to(src)  # [B, T] -> [B, T, 64]
        return torch.cat([src, mask], dim=-1)  # [B, T, 128]

    def _non_cover_condition(self, req, inputs, lyric, lyric_mask, refs, order, context, padding) -> Condition:
        """audio_cover_strength < 1: the text2music instruction; "switch" (official): silence context, no cover
        hints; "blend" (diffusers): the same (cover) context as the main condition."""
        captions = derived.captions(req, self.sample_rate, prompts.DEFAULT_INSTRUCTION)
        ids, mask = self.tokenizer.encode_captions(captions, padding_side=padding)
        ids, mask = ids.to(self.device), mask.to(self.device)
        text = self.text_encoder(ids)
        states, cmask = self._condition(text, mask, lyric, lyric_mask, refs, order)
        if req.behaviour.cover_mix == "blend":
            return Condition(states, cmask, context)
        length = inputs.src_latents.shape[1]
        silence = tasks.tile_silence(self.silence_latent, length)[None].expand(inputs.src_latents.shape[0], -1, -1)
        plain = tasks.TaskInputs(silence, inputs.chunk_mask, torch.zeros_like(inputs.is_cover), None, None)
        return Condition(states, cmask, self._context(plain, None))

    # --- LoRA / LoKr adapters on the DiT (adapters.py) -------------------------------------------------------

    def load_adapter(self, path, name: str | None = None, scale: float = 1.0) -> str:
        """Load a PEFT / diffusers LoRA or a LyCORIS LoKr and make it active (with the others); returns its name."""
        return adapters.manager(self.dit).load(path, name=name, scale=scale)

    def set_adapters(self, names, weights=None) -> None:
        """Activate exactly `names` with `weights` (default 1.0 each)."""
        adapters.manager(self.dit).set_active(names, weights)

    def disable_adapters(self) -> None:
        """Base-model output; the adapters stay loaded (`set_adapters` turns them back on)."""
        adapters.manager(self.dit).disable()

    def unload_adapter(self, name: str) -> None:
        adapters.manager(self.dit).unload(name)

    def fuse_adapters(self) -> None:
        """Fold the active adapters into the DiT weights (faster steps); any adapter change unfuses first."""
        adapters.manager(self.dit).fuse()

    def unfuse_adapters(self) -> None:
        """Restore the exact base weights after `fuse_adapters`."""
        adapters.manager(self.dit).unfuse()


def _reference_segments(audio: torch.Tensor, rate: int) -> torch.Tensor:
    """[Br, 2, S] -> [Br, 2, 30 s]: tiled to at least 30 s, then the front, middle and back 10 s segments.

    The official handler picks the three 10 s segments at random offsets (Python `random`, unseeded); we
    take diffusers' fixed front / middle / back positions so a request is reproducible (docs/parity.md).
    """
    target, seg = REFERENCE_SECONDS * rate, 10 * rate
    if audio.shape[-1] < target:
        audio = audio.repeat(1, 1, -(-target // audio.shape[-1]))  # [Br, 2, S] -> [Br, 2, k S]
    total = audio.shape[-1]
    mid, back = total // 3, max(total - seg, 0)
    return torch.cat([audio[..., :seg], audio[..., mid:mid + seg], audio[..., back:back + seg]], dim=-1)


def _splice_repaint(audio: torch.Tensor, source: torch.Tensor, window: tuple[int, int], fade: int) -> torch.Tensor:
    """Official balanced repaint: keep the source waveform outside the window, with linear fades of `fade` samples."""
    n = min(audio.shape[-1], source.shape[-1])
    start, end = (max(0, min(v, n)) for v in window)
    if start == 0 and end >= n:
        return audio
    m = torch.zeros(n, dtype=audio.dtype, device=audio.device)
    m[start:end] = 1.0
    if fade > 0:
        lo, hi = max(start - fade, 0), min(end + fade, n)
        if start > lo:
            m[lo:start] = torch.linspace(0, 1, start - lo + 2)[1:-1]
        if hi > end:
            m[end:hi] = torch.linspace(1, 0, hi - end + 2)[1:-1]
    src = source[..., :n].to(audio)
    mixed = m * audio[..., :n] + (1 - m) * src
    return torch.cat([mixed, audio[..., n:]], dim=-1)


def _normalize(audio: torch.Tensor) -> torch.Tensor:
    """Official output level: divide by the peak when it exceeds 1 (handler), then -1 dBFS peak (inference.py)."""
    # One new tensor (the caller's decoded audio is left untouched), then in place: a 10-minute song is
    # 230 MB of float32 per copy.
    peak = audio.abs().amax(dim=(1, 2), keepdim=True)  # [B, 1, 1]
    audio = audio / peak.clamp(min=1.0)
    peak = audio.abs().amax(dim=(1, 2), keepdim=True)
    gain = torch.where(peak < 1e-6, torch.ones_like(peak), (10 ** (PEAK_DB / 20)) / peak.clamp(min=1e-6))
    return audio.mul_(gain)


def load_pipeline(path, device="cpu", dtype: torch.dtype | str = torch.float32, *, variant: str | None = None,
                  compute_dtype: torch.dtype | None = None, precision: str | None = None,
                  quantize: str | None = None, planner=None) -> AceStepPipeline:
    """Load a pipeline from our layout, an official `checkpoints/` folder (or a model folder inside it), a
    diffusers AceStepPipeline folder, or a Hugging Face Hub id ("owner/name" or "owner/name@revision"),
    which `hub.resolve_checkpoint` first downloads (only the chosen variant's files) into the Hub cache. An
    existing local path is never sent to the Hub.

    dtype=torch.bfloat16 computes in mixed precision (bf16 matmuls and attention, fp32 residual stream, norms,
    AdaLN and timestep path) where the hardware has bf16 arithmetic and in fp32 elsewhere; precision="pure-bf16"
    runs everything in bf16 (the official code on GPU); dtype="auto" picks bf16 or fp32 for the hardware
    (precision.py, loading.load_checkpoint). quantize="int8": int8 weight-only Linear layers (quantize.py).
    planner: a 5 Hz LM folder (official `acestep-5Hz-lm-*` or our LM layout) or a loaded `Planner`, for
    `pipe(..., thinking=True)`; a folder is loaded on `device` with the DiT's weight dtype."""
    local = hub.resolve_checkpoint(path, variant)
    ckpt = load_checkpoint(local, device=device, dtype=dtype, variant=variant, compute_dtype=compute_dtype,
                           precision=precision, quantize=quantize)
    if planner is not None and not isinstance(planner, Planner):
        lm_dtype = next(ckpt.modules["dit"].parameters()).dtype  # "auto" / mixed: what the hardware was given
        if lm_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            lm_dtype = torch.float32  # int8-quantized weights: the LM runs in float32
        planner = load_planner(planner, device=device, dtype=lm_dtype)
    pc = ckpt.config.pipeline
    tok = TextTokenizer(ckpt.tokenizer_json, pad_token_id=pc.pad_token_id, caption_max_tokens=pc.text_max_tokens,
                        lyric_max_tokens=pc.lyric_max_tokens)
    return AceStepPipeline(ckpt.config, ckpt.modules, ckpt.silence_latent, tok, planner)
