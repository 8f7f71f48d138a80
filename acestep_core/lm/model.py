"""Qwen3 causal LM with a tied output head and a static KV cache (prefill, then one token per step).

The cache is allocated once per generation for `prompt + max_new_tokens` positions (gpt-fast style): a
step writes its keys/values into place and attends to a view of the filled part, so nothing grows or is
copied as the sequence gets longer, unlike transformers' DynamicCache which concatenates every step.

Positions follow the official handler exactly. It never passes `position_ids`, so transformers rotates
every row with the cache positions 0..L-1: in a left-padded [cond, uncond] pair the first real token of
the padded row sits at position `pad_count`, not 0, and the pad keys are masked. RoPE scores depend only
on position differences, so this equals mask-derived positions in exact arithmetic (not bit for bit).

The layer weights are our shared Qwen3 blocks (`layers.PreNormBlock`); only the cached attention step is
written here. Parameter names equal transformers' `Qwen3ForCausalLM` without the `model.` prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Attention, PreNormBlock, RMSNorm, SwiGLU, apply_rope, linear, rope_tables
from .config import LMConfig


DECODE_ROWS = 64  # below this many rows (a decode step) a projection runs through F.linear, see `_linear`


def _matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T. Decode steps have 1-2 rows: there MKL's sgemm (F.linear) beats the oneDNN route that
    `layers.linear` takes for fp32 on CPU (made for hundreds of rows); the prefill keeps that route."""
    return F.linear(x, weight) if x.numel() < DECODE_ROWS * x.shape[-1] else linear(x, weight)


def _linear(proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _matmul(x, proj.weight)


def _swiglu(mlp: SwiGLU, x: torch.Tensor) -> torch.Tensor:
    return _linear(mlp.down_proj, F.silu(_linear(mlp.gate_proj, x)) * _linear(mlp.up_proj, x))


class StaticCache:
    """Keys/values of every layer, [B, Hkv, capacity, D] each, plus which key slots hold real tokens.

    `valid[b, j]` is False for left padding. `length` is how many positions are filled. RoPE tables for all
    `capacity` positions are built once here (float32, cast to the activation dtype, as transformers does).
    """

    def __init__(self, cfg: LMConfig, batch: int, capacity: int, *, device, dtype: torch.dtype):
        shape = (batch, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.valid = torch.ones(batch, capacity, dtype=torch.bool, device=device)
        self.cos, self.sin = rope_tables(capacity, cfg.head_dim, cfg.rope_theta, device, dtype)
        self.batch, self.capacity, self.dtype = batch, capacity, dtype
        self.device = torch.device(device)
        self.length = 0
        self.padded = False  # some row has masked (pad) keys

    def fits(self, batch: int, capacity: int, device, dtype: torch.dtype) -> bool:
        return (self.batch == batch and self.capacity >= capacity and self.dtype == dtype
                and self.device == torch.device(device))

    def reset(self) -> None:
        """Start a new sequence in the same buffers (nothing is cleared: `length` and `valid` say what is real)."""
        self.length = 0
        self.padded = False
        self.valid.fill_(True)


class Qwen3LM(nn.Module):
    """token embedding -> N pre-norm causal blocks -> final RMSNorm -> logits with the embedding matrix."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            PreNormBlock(cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                         cfg.rms_norm_eps)
            for _ in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.scale = cfg.head_dim ** -0.5  # passed to SDPA explicitly, as transformers does

    def new_cache(self, batch: int, capacity: int) -> StaticCache:
        w = self.embed_tokens.weight
        return StaticCache(self.cfg, batch, capacity, device=w.device, dtype=w.dtype)

    def _mask(self, cache: StaticCache, start: int, steps: int) -> tuple[torch.Tensor | None, bool]:
        """(attn_mask, is_causal) for queries start..start+steps-1 against keys 0..start+steps-1."""
        end = start + steps
        if not cache.padded:
            if steps == 1:
                return None, False  # one query attends to every filled key
            if start == 0:
                return None, True  # plain causal prefill (the same SDPA path transformers takes)
        q = torch.arange(start, end, device=cache.device)[:, None]
        k = torch.arange(end, device=cache.device)[None, :]
        keep = (k <= q) & cache.valid[:, None, None, :end]  # [B, 1, steps, end]
        # A pad query sees no real key; let it see itself so its (unused) output stays finite: a NaN there
        # would reach real tokens through the masked pad values (0 * NaN = NaN in the weighted sum).
        return keep | (k == q), False

    def _attend(self, attn: Attention, x: torch.Tensor, cos, sin, k_cache: torch.Tensor, v_cache: torch.Tensor,
                start: int, mask, causal: bool) -> torch.Tensor:
        b, steps, _ = x.shape
        q = _linear(attn.q_proj, x).view(b, steps, attn.num_heads, attn.head_dim)  # [B, T, H, D]
        k = _linear(attn.k_proj, x).view(b, steps, attn.num_kv_heads, attn.head_dim)
        v = _linear(attn.v_proj, x).view(b, steps, attn.num_kv_heads, attn.head_dim)
        q, k, v = attn.q_norm(q).transpose(1, 2), attn.k_norm(k).transpose(1, 2), v.transpose(1, 2)  # [B, H*, T, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        end = start + steps
        k_cache[:, :, start:end] = k
        v_cache[:, :, start:end] = v
        out = F.scaled_dot_product_attention(q, k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=mask,
                                             is_causal=causal, scale=self.scale,
                                             enable_gqa=attn.num_heads != attn.num_kv_heads)
        out = out.transpose(1, 2).reshape(b, steps, attn.num_heads * attn.head_dim)  # [B, H, T, D] -> [B, T, H*D]
        return _linear(attn.o_proj, out)

    def hidden(self, input_ids: torch.Tensor, cache: StaticCache, attention_mask: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Run `input_ids` [B, T] at cache positions length..length+T-1 -> final-norm states [B, T, hidden].

        attention_mask [B, T] (1 = real, 0 = left pad) is only meaningful for the first chunk (the prefill).
        """
        b, steps = input_ids.shape
        start = cache.length
        if b != cache.batch:
            raise ValueError(f"input_ids has {b} rows but the cache was made for {cache.batch}")
        if start + steps > cache.capacity:
            raise ValueError(f"sequence of {start + steps} tokens exceeds the cache capacity {cache.capacity}")
        if attention_mask is not None:
            real = attention_mask.to(device=cache.device, dtype=torch.bool)
            cache.valid[:, start:start + steps] = real
            cache.padded = cache.padded or not bool(real.all())
        mask, causal = self._mask(cache, start, steps)
        cos, sin = cache.cos[start:start + steps], cache.sin[start:start + steps]
        h = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            h = h + self._attend(layer.self_attn, layer.input_layernorm(h), cos, sin, cache.keys[i], cache.values[i],
                                 start, mask, causal)
            h = h + _swiglu(layer.mlp, layer.post_attention_layernorm(h))
        cache.length = start + steps
        return self.norm(h)

    def logits(self, h: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Tied head. rows: a contiguous block of vocabulary rows to score (default: all).

        The product runs in the weight dtype, as transformers computes it, and is then upcast: float32
        logits that hold exactly the values the official code upcasts before CFG and sampling.
        """
        w = self.embed_tokens.weight if rows is None else self.embed_tokens.weight[rows]
        return _matmul(h, w).float()

    def forward(self, input_ids: torch.Tensor, cache: StaticCache, attention_mask: torch.Tensor | None = None,
                *, last_only: bool = True) -> torch.Tensor:
        """Logits [B, V] of the last position (or [B, T, V] of every position with last_only=False), float32."""
        h = self.hidden(input_ids, cache, attention_mask)
        return self.logits(h[:, -1]) if last_only else self.logits(h)
