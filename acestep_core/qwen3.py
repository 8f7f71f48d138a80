"""Qwen3 decoder stack used as the caption encoder (Qwen3-Embedding-0.6B).

ACE-Step uses two outputs of this model:
  - captions: `forward(ids)`, the final-norm hidden state of every position;
  - lyrics:   `embed(ids)`, only the token-embedding lookup (the lyric encoder does the rest).

How the official handler calls it (acestep/core/generation/handler/conditioning_text.py and
conditioning_embed.py): each prompt is tokenized on its own, the batch is right-padded with the pad id
(`<|endoftext|>`), and the ids go through the model with NO attention mask. Attention is causal, so a
real token never sees the padding after it: valid positions are the same as encoding the item alone.
Padded positions still get hidden states (pad tokens attending to the whole prompt before them); they
are not zeroed, and since the DiT's cross-attention does not mask padding they do reach the output of a
batched request. We reproduce them exactly by doing the same thing: no mask, `is_causal=True`.
"""

from __future__ import annotations

import torch
from torch import nn

from .checks import check_tensor, check_values
from .config import Qwen3Config
from .layers import PreNormBlock, RMSNorm, rope_tables


class Qwen3Encoder(nn.Module):
    """token embedding -> N pre-norm causal blocks (GQA, q/k norm, RoPE, SwiGLU) -> final RMSNorm.

    Parameter names equal transformers' `Qwen3Model` without any prefix, so a converted checkpoint loads
    with `load_state_dict(strict=True)`.
    """

    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        # head_dim comes from the config: 128 in the real model, which is not hidden_size / num_heads.
        self.layers = nn.ModuleList(
            PreNormBlock(cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                         cfg.rms_norm_eps)
            for _ in range(cfg.num_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] -> token embeddings [B, L, hidden] (the lyric branch's input)."""
        check_tensor("input_ids", input_ids, (None, None), "[B, L] with B, L >= 1", kind="int")
        check_values("input_ids", input_ids, 0, self.cfg.vocab_size)
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] (right-padded with the pad id) -> last hidden state [B, L, hidden], after the final norm.

        No attention mask is taken on purpose: see the module docstring.
        """
        # The residual stream in the norms' dtype (fp32 in mixed precision, where the embedding table is bf16).
        h = self.embed(input_ids).to(self.norm.weight.dtype)
        # One RoPE table for positions 0..L-1 shared by every layer; built in float32, cast to the attention dtype.
        compute = (self.layers[0].self_attn.compute_dtype or h.dtype) if len(self.layers) else h.dtype
        rope = rope_tables(h.shape[1], self.cfg.head_dim, self.cfg.rope_theta, h.device, compute)
        for layer in self.layers:
            h = layer(h, rope=rope, is_causal=True)
        return self.norm(h)
