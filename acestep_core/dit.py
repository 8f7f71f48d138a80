"""The ACE-Step 1.5 diffusion transformer: predicts the flow-matching velocity of 25 Hz audio latents.

Data flow of one call:

    [context (128) | noisy latents (64)] per frame -> right-pad T to a multiple of patch_size
    -> proj_in (Conv1d, stride = kernel = patch_size): [B, T, 192] -> [B, P, D] with P = T / patch_size
    -> N layers of: AdaLN-modulated gated self-attention (RoPE; sliding window or full)
                    cross-attention to the packed condition (plain residual)
                    AdaLN-modulated gated SwiGLU MLP
    -> AdaLN output norm -> proj_out (ConvTranspose1d) -> [B, P * patch_size, 64] -> crop to T

The AdaLN modulation comes from two timestep embeddings added together: one of t and one of t - r
(r = t at inference, so the second one embeds 0 but still contributes its biases).

Masks follow the official forward, which throws its padding masks away before building attention
masks: self-attention sees only the window geometry, and cross-attention sees every packed condition
position, padding included. `prepare_condition(..., encoder_attention_mask)` opts into blocking the
padded condition keys instead. The condition side (condition_embedder and every layer's cross-attention
K/V) does not depend on the sampler step, so a sampler computes it once with `prepare_condition` and
passes the result as `cross_kv` to every step.

Parameter names equal the official `decoder.*` names with the prefix dropped (the patch convolutions
are plain `proj_in` / `proj_out`), so `acestep_core.convert` maps checkpoints onto this module one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_tensor
from .config import DiTConfig
from .layers import Linear, RMSNorm, Attention, SwiGLU, additive_mask, banded_mask, key_padding_mask, rope_tables

TIMESTEP_CHANNELS = 256  # width of the sinusoidal timestep features
TIMESTEP_SCALE = 1000.0  # t in [0, 1] is stretched to [0, 1000] before the sinusoid
MAX_PERIOD = 10000.0
# Sliding-window layers switch from a dense [P, P] mask to block-banded attention at this many patches
# (1024 patches = 82 s of audio; the dense mask would be 4 MB there and 225 MB at 10 minutes).
BANDED_MIN_PATCHES = 1024
BANDED_BLOCK = 256  # query patches per block
POSITION_CACHE_SIZE = 8  # (length, dtype, device) entries of RoPE tables and masks kept per model


@dataclass(frozen=True)
class CrossKV:
    """The step-independent condition side of the DiT, from `DiT.prepare_condition`.

    kv: one (keys, values) pair per layer, each [B, Hkv, L, head_dim] (keys RMS-normed, no rotary).
    mask: additive [B, 1, 1, L] mask blocking padded condition keys, or None (official: attend to all).
    """

    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    mask: torch.Tensor | None

    @property
    def batch_size(self) -> int:
        return self.kv[0][0].shape[0]


def timestep_sinusoid(t: torch.Tensor, channels: int = TIMESTEP_CHANNELS) -> torch.Tensor:
    """Sinusoidal features of t * 1000, cosine half first: [B] -> float32 [B, channels]."""
    half = channels // 2
    # Same operation order as the official (multiply, then divide) so the float32 frequencies match bit for bit.
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    # t is scaled in its own dtype before the float32 upcast, as the official does: a bf16 sampler
    # therefore sees the same bf16 rounding of t * 1000 as the reference.
    args = (t * TIMESTEP_SCALE)[:, None].float() * freqs[None]  # [B, 1] * [1, half] -> [B, half]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class TimestepEmbedding(nn.Module):
    """Sinusoid -> 2-layer SiLU MLP (`temb`, [B, D]) -> 6 AdaLN chunks per layer (`time_proj`, [B, 6, D])."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear_1 = Linear(TIMESTEP_CHANNELS, hidden_size)
        self.linear_2 = Linear(hidden_size, hidden_size)
        self.time_proj = Linear(hidden_size, 6 * hidden_size)

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The float32 features are cast to the weights' dtype (the official casts to t's dtype,
        # which its sampler keeps equal to the model dtype); read from the bias, which stays a float
        # when the weight is int8 (quantize.py).
        freq = timestep_sinusoid(t).to(self.linear_1.bias.dtype)
        temb = self.linear_2(F.silu(self.linear_1(freq)))  # [B, D]
        proj = self.time_proj(F.silu(temb)).unflatten(1, (6, -1))  # [B, 6 * D] -> [B, 6, D]
        return temb, proj


class DiTLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden_size
        attn = (d, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps)
        self.self_attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.self_attn = Attention(*attn)
        self.cross_attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        # Keys/values take `hidden_size` inputs: the condition is projected by the DiT's condition_embedder first.
        self.cross_attn = Attention(*attn)
        self.mlp_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.mlp = SwiGLU(d, cfg.intermediate_size)
        # Learned per-layer offsets of the 6 AdaLN chunks; loaded from the checkpoint.
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(
        self,
        h: torch.Tensor,
        modulation: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor],
        self_mask: torch.Tensor | None,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        cross_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """h: [B, P, D]; modulation: the timestep projection [B, 6, D]."""
        # [1, 6, D] + [B, 6, D] -> six [B, 1, D] chunks broadcasting over the P positions.
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.scale_shift_table + modulation).chunk(6, dim=1)

        # The `.type_as(h)` casts keep the residual stream in the activation dtype even when the
        # tables or the timestep projection are held in a wider dtype (they mirror the official).
        x = (self.self_attn_norm(h) * (1 + scale_sa) + shift_sa).type_as(h)
        h = (h + self.self_attn(x, rope=rope, mask=self_mask) * gate_sa).type_as(h)

        x = self.cross_attn_norm(h).type_as(h)
        h = h + self.cross_attn(x, kv=cross_kv, mask=cross_mask)

        x = (self.mlp_norm(h) * (1 + scale_ff) + shift_ff).type_as(h)
        return (h + self.mlp(x) * gate_ff).type_as(h)


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        bad = [k for k in cfg.layer_types if k not in ("full", "sliding")]
        if bad:
            raise ValueError(f"cfg.layer_types entries must be 'full' or 'sliding', got {bad[0]!r}")
        if cfg.in_channels <= cfg.latent_dim:
            raise ValueError(f"cfg.in_channels ({cfg.in_channels}) must exceed cfg.latent_dim ({cfg.latent_dim})")
        self.cfg = cfg
        d, p = cfg.hidden_size, cfg.patch_size
        self.proj_in = nn.Conv1d(cfg.in_channels, d, kernel_size=p, stride=p)
        self.time_embed = TimestepEmbedding(d)
        self.time_embed_r = TimestepEmbedding(d)
        self.condition_embedder = Linear(cfg.condition_dim, d)
        self.layers = nn.ModuleList(DiTLayer(cfg) for _ in range(cfg.num_layers))
        self.norm_out = RMSNorm(d, cfg.rms_norm_eps)
        self.proj_out = nn.ConvTranspose1d(d, cfg.latent_dim, kernel_size=p, stride=p)
        # Output AdaLN offsets (shift, scale); loaded from the checkpoint.
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, d) / d**0.5)
        # (num_patches, dtype, device) -> (rope tables, masks): they depend on the length only, so a sampler's
        # steps and later songs of the same length reuse them. Not state: never saved, rebuilt on demand.
        self._positions: dict = {}

    @property
    def context_dim(self) -> int:
        """Channels of `context_latents`: source latents + chunk mask (128 in the real model)."""
        return self.cfg.in_channels - self.cfg.latent_dim

    def self_attention_masks(self, num_patches: int, dtype: torch.dtype, device) -> dict:
        """Self-attention mask per layer kind over `num_patches` positions.

        Geometry only, like the official: "full" attends everywhere (None), "sliding" keeps |i - j| <= window:
        a dense additive [1, 1, P, P] mask for short songs, and from BANDED_MIN_PATCHES on a BandedMask that
        only visits the band (memory and time linear in the length instead of quadratic).
        """
        window = self.cfg.sliding_window
        if num_patches >= BANDED_MIN_PATCHES and window < num_patches - 1:
            sliding = banded_mask(num_patches, window, block=BANDED_BLOCK, dtype=dtype, device=device)
        else:
            sliding = additive_mask(num_patches, window=window, dtype=dtype, device=device)
        return {"full": additive_mask(num_patches, dtype=dtype, device=device), "sliding": sliding}

    @property
    def compute_dtype(self) -> torch.dtype:
        """The attention dtype: bf16 in mixed precision, else the state dtype (scale_shift_table's)."""
        return self.layers[0].self_attn.compute_dtype or self.scale_shift_table.dtype

    def position_tables(self, num_patches: int, dtype: torch.dtype, device) -> tuple[tuple, dict]:
        """(RoPE cos/sin [P, head_dim], self-attention masks per layer kind), built once per length."""
        key = (num_patches, dtype, torch.device(device))
        if key not in self._positions:
            if len(self._positions) >= POSITION_CACHE_SIZE:
                self._positions.pop(next(iter(self._positions)))  # oldest first: a dict keeps insertion order
            rope = rope_tables(num_patches, self.cfg.head_dim, self.cfg.rope_theta, device, dtype)
            self._positions[key] = (rope, self.self_attention_masks(num_patches, dtype, device))
        return self._positions[key]

    def prepare_condition(
        self, encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor | None = None
    ) -> CrossKV:
        """Embed the packed condition and project every layer's cross-attention keys/values once.

        encoder_hidden_states: [B, L, condition_dim]. encoder_attention_mask: optional [B, L] (1 = real
        token); None reproduces the official model, which attends to the padded positions too.
        """
        w = self.scale_shift_table  # the state dtype (fp32 in mixed precision) and the device
        check_tensor("encoder_hidden_states", encoder_hidden_states, (None, None, self.cfg.condition_dim),
                     f"[B, L, {self.cfg.condition_dim}] with L >= 1", dtype=w.dtype, device=w.device)
        b, length, _ = encoder_hidden_states.shape
        mask = None
        if encoder_attention_mask is not None:
            check_tensor("encoder_attention_mask", encoder_attention_mask, (b, length), f"[{b}, {length}] (B, L)",
                         kind="any", device=w.device)
            # Query length 1: the [B, 1, 1, L] mask broadcasts over heads and every latent position.
            mask = key_padding_mask(encoder_attention_mask, 1, self.compute_dtype)
        c = self.condition_embedder(encoder_hidden_states)  # [B, L, Dc] -> [B, L, D]
        # Contiguous K/V once here, instead of strided views re-read by every sampler step.
        kv = tuple(
            tuple(t.contiguous() for t in layer.cross_attn.project_kv(c))  # 2 x [B, Hkv, L, head_dim]
            for layer in self.layers
        )
        return CrossKV(kv=kv, mask=mask)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        timestep_r: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        context_latents: torch.Tensor,
        *,
        encoder_attention_mask: torch.Tensor | None = None,
        cross_kv: CrossKV | None = None,
    ) -> torch.Tensor:
        """Velocity [B, T, latent_dim] of noisy latents `hidden_states` [B, T, latent_dim] at time t.

        timestep, timestep_r: [B] (t and r; r = t at inference). They may be float32 or the model
        dtype; the official sampler passes the model dtype. context_latents: [B, T, context_dim].
        Condition: either `encoder_hidden_states` [B, L, condition_dim] (with an optional
        `encoder_attention_mask` [B, L]) or a `cross_kv` from `prepare_condition`, never both.
        """
        cfg = self.cfg
        w = self.proj_in.weight
        check_tensor("hidden_states", hidden_states, (None, None, cfg.latent_dim),
                     f"[B, T, {cfg.latent_dim}] with T >= 1", dtype=w.dtype, device=w.device)
        b, length, _ = hidden_states.shape
        check_tensor("context_latents", context_latents, (b, length, self.context_dim),
                     f"[{b}, {length}, {self.context_dim}] (B, T, context_dim)", dtype=w.dtype, device=w.device)
        for name, t in (("timestep", timestep), ("timestep_r", timestep_r)):
            check_tensor(name, t, (b,), f"[{b}] (B)", device=w.device)

        if cross_kv is None:
            if encoder_hidden_states is None:
                raise ValueError("pass encoder_hidden_states [B, L, condition_dim] or cross_kv (prepare_condition)")
            cross_kv = self.prepare_condition(encoder_hidden_states, encoder_attention_mask)
        elif encoder_hidden_states is not None or encoder_attention_mask is not None:
            raise ValueError("cross_kv already holds the condition and its mask: pass encoder_hidden_states "
                             "and encoder_attention_mask to prepare_condition, not together with cross_kv")
        if not isinstance(cross_kv, CrossKV) or len(cross_kv.kv) != len(self.layers):
            raise ValueError(f"cross_kv must be a CrossKV from prepare_condition with {len(self.layers)} layers")
        if cross_kv.batch_size != b:
            raise ValueError(f"cross_kv was prepared for batch {cross_kv.batch_size}, hidden_states has batch {b}")

        # Both embeddings are summed: temb [B, D] drives the output norm, proj [B, 6, D] every layer.
        temb_t, proj_t = self.time_embed(timestep)
        temb_r, proj_r = self.time_embed_r(timestep - timestep_r)
        temb, modulation = temb_t + temb_r, proj_t + proj_r

        # Official channel order: context first, then the noisy latents.
        x = torch.cat([context_latents, hidden_states], dim=-1)  # [B, T, context_dim + latent_dim]
        pad = -length % cfg.patch_size
        if pad:
            x = F.pad(x, (0, 0, 0, pad))  # zero frames at the end: [B, T + pad, C]
        # [B, T', C] -> [B, C, T'] -> conv -> [B, D, P] -> [B, P, D], made contiguous for the matmuls.
        h = self.proj_in(x.transpose(1, 2)).transpose(1, 2).contiguous()

        # Position tables and masks: built once per length and shared by all layers and steps.
        rope, masks = self.position_tables(h.shape[1], self.compute_dtype, h.device)
        for layer, kind, kv in zip(self.layers, cfg.layer_types, cross_kv.kv):
            h = layer(h, modulation, rope=rope, self_mask=masks[kind], cross_kv=kv, cross_mask=cross_kv.mask)

        # [1, 2, D] + [B, 1, D] -> shift, scale, each [B, 1, D].
        shift, scale = (self.scale_shift_table + temb[:, None]).chunk(2, dim=1)
        h = (self.norm_out(h) * (1 + scale) + shift).type_as(h)
        # [B, P, D] -> [B, D, P] -> transposed conv -> [B, latent_dim, P * patch] -> [B, P * patch, latent_dim]
        v = self.proj_out(h.transpose(1, 2)).transpose(1, 2)
        return v[:, :length].contiguous()  # drop the padded frames: [B, T, latent_dim]
