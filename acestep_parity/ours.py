"""Our side of a parity run: one ordinary `pipe(...)` call whose models are wrapped by recording stand-ins.

Every row of the report then shows what the real pipeline computed. The stand-ins rely on these attributes
of `acestep_core.pipeline.AceStepPipeline` (listed so that a change there is easy to follow here): the model
attributes `text_encoder` (called, and `.embed`), `condition_encoder` (called), `vae` (`.encode`, `.decode`)
and `dit` (called, and `.prepare_condition`), and the keyword names of those calls.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass

import torch


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


class _GivenSource:
    """Stands in for our VAE when the source latents are given: `encode` returns them, all else is the VAE's."""

    def __init__(self, vae, latents: torch.Tensor):
        self._vae, self._latents = vae, latents  # [T, C]

    def encode(self, wave, **kwargs):
        # [T, C] -> [B, C, T], what the VAE's encode returns
        return self._latents.T[None].expand(wave.shape[0], -1, -1).to(device=wave.device)

    def __getattr__(self, name):
        return getattr(self._vae, name)


def _arg(call, index: int, name: str):
    args, kwargs, _ = call
    return args[index] if len(args) > index else kwargs[name]


@dataclass
class Ours:
    ids: list  # [caption ids, caption mask, lyric ids, lyric mask]
    text: torch.Tensor  # [B, Lt, H]
    lyric: torch.Tensor  # [B, Ll, H]
    condition_inputs: tuple  # (text, text_mask, lyric, lyric_mask, refs, order) as our condition encoder got them
    states: torch.Tensor  # [B, L, W]
    mask: torch.Tensor  # [B, L]
    source: torch.Tensor | None  # VAE latents of the source [B, 64, T] (the given ones when src_latents is set)
    context: torch.Tensor  # [B, T, 128]
    dit_calls: list  # per step: (x, t, condition states, context, velocity), batched as our DiT got them
    latents: torch.Tensor  # [B, T, 64]
    audio: torch.Tensor  # [B, 2, S] raw VAE output (before the output level normalisation)


def run_ours(pipe, request: dict, noise: torch.Tensor, *, src_latents: torch.Tensor | None = None, **options) -> Ours:
    """`pipe(**request, latents=noise, **options)` with every model recorded -> Ours.

    src_latents [T, C]: our VAE's `encode` returns these instead of encoding the source."""
    methods = {"text_encoder": ("embed",), "condition_encoder": (), "vae": ("encode", "decode"),
               "dit": ("prepare_condition",)}
    originals = {name: getattr(pipe, name) for name in methods}
    vae = originals["vae"] if src_latents is None else _GivenSource(originals["vae"], src_latents)
    taps = {name: _Tap(vae if name == "vae" else originals[name], m) for name, m in methods.items()}
    config = pipe.config
    try:
        if src_latents is not None:
            # The stand-in encoder yields DiT-width latents; for this run the config says so, so that the
            # request check (which refuses a VAE encoder narrower than the DiT) lets the source through.
            vae_cfg = dataclasses.replace(config.vae, encoder_hidden_size=2 * src_latents.shape[-1])
            pipe.config = dataclasses.replace(config, vae=vae_cfg)
        for name, tap in taps.items():
            setattr(pipe, name, tap)
        result = pipe(**request, latents=noise, output_type="pt", **options)
    finally:
        pipe.config = config
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
    condition_inputs = cond_call[0]
    if condition_inputs[4] is None:
        # No reference audio: the pipeline hands over the silence reference's cached timbre encoding instead of
        # its latents; the reference model gets those latents, [1, 750, 64] -> [N, 750, 64] (N = len(order)).
        silence = pipe.silence_latent[:, :pipe.config.condition.timbre_fix_frame]
        condition_inputs = (*condition_inputs[:4], silence.expand(len(condition_inputs[5]), -1, -1),
                            *condition_inputs[5:])
    return Ours(
        ids=[_arg(text_call, 0, "input_ids"), _arg(cond_call, 1, "text_mask"), _arg(embed_call, 0, "input_ids"),
             _arg(cond_call, 3, "lyric_mask")],
        text=text_call[2], lyric=embed_call[2], condition_inputs=condition_inputs, states=states, mask=mask,
        source=encodes[0][2] if encodes else None, context=dit_calls[0][3][:noise.shape[0]], dit_calls=dit_calls,
        # float32 like the pipeline's own decode_latents; the audio metrics work in float64 anyway.
        latents=result.latents, audio=torch.cat([c[2] for c in taps["vae"].calls["decode"]]).float())
