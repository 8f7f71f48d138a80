"""Transformer building blocks shared by the Qwen3 text encoder, the condition encoders and the DiT.

Everything here follows Qwen3 numerics: RMSNorm computed in float32, q/k RMSNorm per head applied
before rotary embeddings, rotate-half RoPE with a float32 table, SwiGLU MLP, grouped-query attention
through `scaled_dot_product_attention`. Masks are additive float tensors (0 = attend, dtype-min =
blocked) exactly like the official code builds them, so a fully padded row gives the same (uniform)
attention instead of NaNs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


# CPU fp32 GEMMs through oneDNN (a 1x1 convolution over a channels-last view of the activation) instead of
# F.linear's sgemm: on a 2-core AVX-512 machine 1.5-2.2x faster from 512 rows on, and for weights up to
# ~4M entries at any row count; slower for large weights with few rows (benchmarks/README.md).
ONEDNN_MIN_ROWS = 512
ONEDNN_MAX_SMALL_WEIGHT = 4_200_000


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, routed through oneDNN on CPU in fp32 where that is faster. Same result up to rounding."""
    if x.dtype != weight.dtype:
        # Mixed precision: fp32 activations (the residual stream) meet bf16 weights; the matmul runs in bf16.
        x = x.to(weight.dtype)
    n, k = weight.shape
    m = x.numel() // k if x.dim() >= 2 else 0
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32 and m > 0
            and x.is_contiguous() and (m >= ONEDNN_MIN_ROWS or n * k <= ONEDNN_MAX_SMALL_WEIGHT)):
        xx = x.view(1, 1, m, k).permute(0, 3, 1, 2)  # [..., K] -> [1, K, 1, M], channels-last strides: no copy
        out = F.conv2d(xx, weight[:, :, None, None], bias)  # [1, N, 1, M], channels-last memory
        return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], n)  # [1, 1, M, N] (contiguous) -> [..., N]
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear computed with `linear` (same parameters, same state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 whatever the activation dtype (bf16 variance is too coarse), then
        # cast back before the weight multiply, as Qwen3 does.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(length: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [length, head_dim] for positions 0..length-1 (rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    pos = torch.arange(length, dtype=torch.float32, device=device)
    freqs = torch.outer(pos, inv_freq)  # [length, head_dim / 2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [length, head_dim]
    # Tables are computed in float32 and cast to the activation dtype, matching transformers.
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [T, D] in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def additive_mask(
    length: int,
    *,
    window: int | None = None,
    key_padding: torch.Tensor | None = None,
    dtype: torch.dtype,
    device,
) -> torch.Tensor | None:
    """Bidirectional attention mask as an additive float tensor, or None when nothing is masked.

    window: keep |i - j| <= window (inclusive). key_padding: [B, L] with 1 = real token; padded keys
    are blocked for every query. Result: [1 or B, 1, L, L].
    """
    if window is not None and window >= length - 1:
        window = None  # the window covers every pair: nothing to mask geometrically
    if window is None and key_padding is None:
        return None
    keep = torch.ones(length, length, dtype=torch.bool, device=device)
    if window is not None:
        idx = torch.arange(length, device=device)
        keep = (idx[:, None] - idx[None, :]).abs() <= window
    keep = keep[None, None]  # [1, 1, L, L]
    if key_padding is not None:
        keep = keep & key_padding.to(device=device, dtype=torch.bool)[:, None, None, :]  # [B, 1, L, L]
    mask = torch.zeros(keep.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~keep, torch.finfo(dtype).min)


@dataclass(frozen=True)
class BandedMask:
    """A bidirectional sliding window |i - j| <= window, cut into query blocks so memory stays linear.

    blocks: (q0, q1, k0, k1, additive mask [1, 1, q1 - q0, k1 - k0]) per query block; each block attends
    only to the keys that can fall inside its window. Masked keys get exp(min - max) = 0 in both forms,
    so this equals the dense [L, L] mask up to float summation order.
    """

    blocks: tuple[tuple[int, int, int, int, torch.Tensor], ...]


def banded_mask(length: int, window: int, *, block: int, dtype: torch.dtype, device) -> BandedMask:
    blocks = []
    for q0 in range(0, length, block):
        q1 = min(q0 + block, length)
        k0, k1 = max(0, q0 - window), min(length, q1 + window)
        i = torch.arange(q0, q1, device=device)[:, None]
        j = torch.arange(k0, k1, device=device)[None, :]
        keep = (i - j).abs() <= window  # [q1 - q0, k1 - k0]
        mask = torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill_(~keep, torch.finfo(dtype).min)
        blocks.append((q0, q1, k0, k1, mask[None, None]))
    return BandedMask(tuple(blocks))


def key_padding_mask(key_padding: torch.Tensor, query_length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive cross-attention mask [B, 1, Q, K] blocking padded keys (1 = real key)."""
    keep = key_padding.to(torch.bool)[:, None, None, :].expand(-1, 1, query_length, -1)
    mask = torch.zeros(keep.shape, dtype=dtype, device=key_padding.device)
    return mask.masked_fill_(~keep, torch.finfo(dtype).min)


class Attention(nn.Module):
    """Grouped-query attention with per-head q/k RMSNorm.

    Self-attention passes `rope`; cross-attention passes precomputed `kv` from `project_kv` (keys
    are normed but not rotated), so a caller can compute them once and reuse them across steps.
    """

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, eps: float,
                 kv_input_size: int | None = None):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        kv_in = kv_input_size or hidden_size
        self.q_proj = Linear(hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = Linear(kv_in, num_kv_heads * head_dim, bias=False)
        self.v_proj = Linear(kv_in, num_kv_heads * head_dim, bias=False)
        self.o_proj = Linear(num_heads * head_dim, hidden_size, bias=False)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)
        # The dtype the projections and attention run in when it differs from the input's (mixed precision:
        # fp32 residual stream, bf16 matmuls); None: the input's. Set by precision.apply_precision.
        self.compute_dtype: torch.dtype | None = None

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, L, C] -> normed keys and values, each [B, Hkv, L, D] (no rotary)."""
        b, length, _ = x.shape
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)  # the condition may arrive in the state dtype (mixed precision)
        k = self.k_norm(self.k_proj(x).view(b, length, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, length, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, L, D]
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask: torch.Tensor | BandedMask | None = None,
        is_causal: bool = False,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        b, length, _ = x.shape
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)  # once for q, k and v (mixed precision)
        q = self.q_norm(self.q_proj(x).view(b, length, self.num_heads, self.head_dim)).transpose(1, 2)  # [B, H, T, D]
        if kv is None:
            k, v = self.project_kv(x)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        else:
            k, v = kv
        gqa = self.num_heads != self.num_kv_heads
        if isinstance(mask, BandedMask):
            # One SDPA per query block against its window of keys: [B, H, q, D] pieces along the sequence.
            out = torch.cat([F.scaled_dot_product_attention(q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1],
                                                            attn_mask=m, enable_gqa=gqa)
                             for q0, q1, k0, k1, m in mask.blocks], dim=2)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)
        # [B, H, T, D] -> [B, T, H*D]; reshape copies into a contiguous buffer for o_proj.
        out = out.transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim)
        return self.o_proj(out)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = Linear(intermediate_size, hidden_size, bias=False)
        self.compute_dtype: torch.dtype | None = None  # as Attention.compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)  # once for gate and up (mixed precision)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class PreNormBlock(nn.Module):
    """x + attn(norm(x)); x + mlp(norm(x)). The Qwen3 decoder layer and the ACE-Step encoder layer."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_heads: int, num_kv_heads: int,
                 head_dim: int, eps: float):
        super().__init__()
        self.input_layernorm = RMSNorm(hidden_size, eps)
        self.self_attn = Attention(hidden_size, num_heads, num_kv_heads, head_dim, eps)
        self.post_attention_layernorm = RMSNorm(hidden_size, eps)
        self.mlp = SwiGLU(hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor, *, rope, mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope=rope, mask=mask, is_causal=is_causal)
        return x + self.mlp(self.post_attention_layernorm(x))


class EncoderStack(nn.Module):
    """`embed_tokens` (a biased Linear into the stack width), bidirectional pre-norm blocks, final norm.

    The lyric and timbre encoders, the tokenizer's attention pooler and the detokenizer are all this
    stack; they differ only in what they do around it. Layer i attends fully or within a sliding
    window according to `cfg.layer_types[i]`; padded keys are blocked when `key_padding` is given.
    """

    def __init__(self, cfg, input_dim: int, num_layers: int):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = Linear(input_dim, cfg.hidden_size)
        self.layers = nn.ModuleList(
            PreNormBlock(cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                         cfg.rms_norm_eps)
            for _ in range(num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def run_layers(self, h: torch.Tensor, key_padding: torch.Tensor | None = None,
                   limit: int | None = None) -> torch.Tensor:
        """h: [B, L, hidden] already embedded -> normed states [B, L, hidden]."""
        cfg = self.cfg
        length = h.shape[1]
        # The residual stream in the norms' dtype (fp32 in mixed precision, where embed_tokens gives bf16).
        h = h.to(self.norm.weight.dtype)
        compute = (self.layers[0].self_attn.compute_dtype or h.dtype) if len(self.layers) else h.dtype
        rope = rope_tables(length, cfg.head_dim, cfg.rope_theta, h.device, compute)
        # One mask per attention kind, built once for the whole stack (in the attention's dtype).
        masks = {
            "full": additive_mask(length, key_padding=key_padding, dtype=compute, device=h.device),
            "sliding": additive_mask(length, window=cfg.sliding_window, key_padding=key_padding, dtype=compute,
                                     device=h.device),
        }
        layers = self.layers if limit is None else self.layers[:limit]
        for i, layer in enumerate(layers):
            h = layer(h, rope=rope, mask=masks[cfg.layer_types[i]])
        return self.norm(h)
