"""Audio codes: 25 Hz latents <-> 5 Hz FSQ codes, and the `<|audio_code_N|>` text format.

Tokenizer (latents -> codes):

    latents [B, T, 64] --pad with silence frames to a multiple of P (pool window, 5)-->
    [B, T5, P, 64] --audio_acoustic_proj--> [B, T5, P, W] --attention pooler--> [B, T5, W]
    --FSQ--> quantized [B, T5, W] and codes [B, T5] in 0 .. prod(levels) - 1

The attention pooler runs a small encoder stack over [CLS, P frames] for every 5 Hz step and keeps
the CLS output. Detokenizer (quantized -> latents): each 5 Hz vector is copied P times, a learned
per-position token is added, a small stack runs over those P frames and `proj_out` maps back to 64
channels, giving [B, T5 * P, 64].

FSQ is single-stage `ResidualFSQ` from vector-quantize-pytorch as the official model builds it
(num_quantizers = 1, so the residual scale is 1). That class does NOT use the plain FSQ bound
(tanh with a half-level offset for even levels, then rounding); it soft-clamps, then uses the
symmetry-preserving quantizer with a hard clamp. Per channel with L levels:

    z = project_in(x);  z = tanh(z / c) * c        c = 1 + 1 / (L - 1)
    k = floor((L - 1) * (clamp(z, -1, 1) + 1) / 2 + 0.5)      level index 0 .. L-1
    code = k * 2 / (L - 1) - 1                                 L evenly spaced values in [-1, 1]
    index = sum_d k_d * basis_d,  basis = cumprod([1, L_0, L_1, ...])  (first level varies fastest)
    quantized = project_out(code)

It always runs in float32, projections included, and casts the result back to the input dtype: the
XL modeling code casts the quantizer to float32 around this call for the same reason (FSQ forces
float32 inside, so half-precision projections around it would not match).
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from .checks import check_tensor, check_values
from .config import AudioTokenizerConfig
from .layers import EncoderStack


class FSQ(nn.Module):
    """Finite scalar quantizer with input/output projections (see the module docstring)."""

    def __init__(self, width: int, levels: tuple[int, ...]):
        super().__init__()
        if len(levels) == 0 or min(levels) < 2:
            raise ValueError(f"levels: expected a non-empty list of integers >= 2, got {levels}")
        self.project_in = nn.Linear(width, len(levels))
        self.project_out = nn.Linear(len(levels), width)
        self.levels = tuple(levels)
        self.codebook_size = math.prod(levels)

    def _project_out(self, codes: torch.Tensor) -> torch.Tensor:
        # float32 weights even when the module is half precision, as the XL code does (the codes
        # are exact in float32; the projection is where precision would be lost).
        return nn.functional.linear(codes, self.project_out.weight.float(), self.project_out.bias.float())

    def _tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(levels, basis), int64 [d]. Built per call rather than stored as buffers, so a module
        constructed on the meta device and loaded with `assign=True` still has them."""
        levels = torch.tensor(self.levels, dtype=torch.int64, device=device)
        # Mixed-radix place values: the first channel varies fastest, [1, L0, L0*L1, ...].
        basis = torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), dim=0)
        return levels, basis

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., W] -> (quantized [..., W] in x's dtype, codes [...] int64)."""
        # Quantize in float32: level boundaries in bf16 would move codes.
        z = nn.functional.linear(x.float(), self.project_in.weight.float(), self.project_in.bias.float())
        levels, basis = self._tables(x.device)
        clamp = 1 + 1 / (levels - 1)  # [d] float32
        z = torch.tanh(z / clamp) * clamp
        k = torch.floor((levels - 1) * (z.clamp(-1.0, 1.0) + 1) / 2.0 + 0.5)  # level index, float
        codes = 2.0 / (levels - 1) * k - 1.0  # [..., d]: L evenly spaced values in [-1, 1]
        indices = (k.long() * basis).sum(dim=-1)  # [...]
        return self._project_out(codes).to(x.dtype), indices  # back to the caller's dtype

    def codes_to_quantized(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [...] int -> quantized [..., W] in the module's dtype (computed in float32)."""
        levels, basis = self._tables(indices.device)
        k = (indices.long().unsqueeze(-1) // basis) % levels  # [...] -> [..., d] level indices
        codes = k * (2.0 / (levels - 1)) - 1.0  # [..., d] float32
        return self._project_out(codes).to(self.project_out.weight.dtype)


class AttentionPooler(EncoderStack):
    """[B, T5, P, W] frames -> [B, T5, W]: a learned CLS token pools each group of P frames."""

    def __init__(self, cfg: AudioTokenizerConfig):
        super().__init__(cfg.encoder, cfg.encoder.hidden_size, cfg.num_pooler_layers)
        self.special_token = nn.Parameter(torch.randn(1, 1, cfg.encoder.hidden_size) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t5, p, w = x.shape
        h = self.embed_tokens(x)  # [B, T5, P, W]
        cls = self.special_token.expand(b, t5, 1, w)  # [1, 1, W] -> [B, T5, 1, W]
        h = torch.cat([cls, h], dim=2)  # [B, T5, 1 + P, W]
        h = h.reshape(b * t5, p + 1, w)  # [B, T5, 1+P, W] -> [B*T5, 1+P, W]: one short sequence per step
        h = self.run_layers(h)  # no padding inside a window; every layer runs
        return h[:, 0].reshape(b, t5, w)  # CLS outputs [B*T5, W] -> [B, T5, W]


class AudioTokenizer(nn.Module):
    def __init__(self, cfg: AudioTokenizerConfig):
        super().__init__()
        self.cfg = cfg
        self.audio_acoustic_proj = nn.Linear(cfg.latent_dim, cfg.encoder.hidden_size)
        self.attention_pooler = AttentionPooler(cfg)
        self.quantizer = FSQ(cfg.encoder.hidden_size, cfg.fsq_levels)

    @property
    def codebook_size(self) -> int:
        return self.quantizer.codebook_size

    def tokenize(self, latents: torch.Tensor, silence_latent: torch.Tensor,
                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """latents [B, T, 64], silence_latent [1, S, 64], mask [B, T] (1 = real frame) or None (all real)
        -> (quantized [B, T5, W], codes [B, T5] int64, mask5 [B, T5] bool), T5 = ceil(T / P).

        Like the official `tokenize`, a T that is not a multiple of P is padded with the first frames
        of the silence latent (mask 0 there); a 5 Hz step is valid when any of its frames is (the
        official max-pools the mask and returns it as float).
        """
        cfg, p = self.cfg, self.cfg.pool_window_size
        check_tensor("latents", latents, (None, None, cfg.latent_dim), f"[B, T, {cfg.latent_dim}] with T >= 1")
        b, t, d = latents.shape
        pad = -t % p
        check_tensor("silence_latent", silence_latent, (1, range(pad, 2**31), d), f"[1, S, {d}] with S >= {pad}")
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=latents.device)
        else:
            check_tensor("mask", mask, (b, t), f"[{b}, {t}] (1 = real frame) or None", kind="any")
        keep = mask != 0  # [B, T]
        if pad:
            # The stored silence is float32 on the CPU; match the latents for the concat.
            fill = silence_latent[:, :pad].to(device=latents.device, dtype=latents.dtype).expand(b, pad, d)
            latents = torch.cat([latents, fill], dim=1)  # [B, T5*P, 64]
            keep = nn.functional.pad(keep, (0, pad), value=False)  # [B, T5*P]
        t5 = latents.shape[1] // p
        x = latents.reshape(b, t5, p, d)  # [B, T5*P, 64] -> [B, T5, P, 64]
        h = self.attention_pooler(self.audio_acoustic_proj(x))  # [B, T5, W]
        quantized, codes = self.quantizer(h)
        mask5 = keep.reshape(b, t5, p).any(dim=-1)  # [B, T5*P] -> [B, T5, P] -> [B, T5]
        return quantized, codes, mask5

    def codes_to_quantized(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, T5] integers in 0 .. codebook_size-1 -> quantized [B, T5, W]."""
        _check_codes("codes", codes, self.codebook_size, ndim=2)
        return self.quantizer.codes_to_quantized(codes)


class AudioDetokenizer(EncoderStack):
    """quantized [B, T5, W] -> latents [B, T5 * P, 64]."""

    def __init__(self, cfg: AudioTokenizerConfig):
        super().__init__(cfg.encoder, cfg.encoder.hidden_size, cfg.num_pooler_layers)
        self.pool_window_size = cfg.pool_window_size
        self.special_tokens = nn.Parameter(torch.randn(1, cfg.pool_window_size, cfg.encoder.hidden_size) * 0.02)
        self.proj_out = nn.Linear(cfg.encoder.hidden_size, cfg.latent_dim)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        w, p = self.cfg.hidden_size, self.pool_window_size
        check_tensor("quantized", quantized, (None, None, w), f"[B, T5, {w}]")
        b, t5, _ = quantized.shape
        h = self.embed_tokens(quantized)  # [B, T5, W]
        # Every 5 Hz vector becomes P frames that differ only by a learned per-position token.
        h = h.unsqueeze(2) + self.special_tokens.unsqueeze(0)  # [B, T5, 1, W] + [1, 1, P, W] -> [B, T5, P, W]
        h = h.reshape(b * t5, p, w)  # [B, T5, P, W] -> [B*T5, P, W]
        h = self.proj_out(self.run_layers(h))  # [B*T5, P, 64]
        return h.reshape(b, t5 * p, -1)  # [B*T5, P, 64] -> [B, T5*P, 64]


# ---- the text form of audio codes: "<|audio_code_123|><|audio_code_4567|>..." ----

_CODE_TOKEN = re.compile(r"<\|audio_code_(\d+)\|>")


def parse_audio_codes(text: str, codebook_size: int = 64000) -> torch.Tensor:
    """'<|audio_code_N|>...' -> LongTensor [T5]. Whitespace between tokens is allowed.

    Stricter than the references, which scan with `re.findall` and so silently skip any other text,
    and clamp codes above the codebook to its last entry (the official handler logs a warning; an
    empty result there means "no code hints"). Here any other text, a code >= codebook_size, or a
    string without codes is a ValueError.
    """
    if not isinstance(text, str):
        raise ValueError(f"text: expected a string of <|audio_code_N|> tokens, got {type(text).__name__}")
    codes, pos = [], 0
    for m in _CODE_TOKEN.finditer(text):
        _check_gap(text, pos, m.start())
        value = int(m.group(1))
        if value >= codebook_size:
            raise ValueError(f"text: audio code {value} at character {m.start()} is out of range "
                             f"0..{codebook_size - 1}")
        codes.append(value)
        pos = m.end()
    _check_gap(text, pos, len(text))
    if not codes:
        raise ValueError("text: contains no <|audio_code_N|> tokens")
    return torch.tensor(codes, dtype=torch.long)


def format_audio_codes(codes: torch.Tensor, codebook_size: int = 64000) -> str:
    """LongTensor [T5] -> '<|audio_code_N|>...' (the inverse of parse_audio_codes)."""
    _check_codes("codes", codes, codebook_size, ndim=1)
    return "".join(f"<|audio_code_{c}|>" for c in codes.tolist())


def _check_gap(text: str, start: int, end: int) -> None:
    gap = text[start:end]
    if gap.strip():
        bad = start + len(gap) - len(gap.lstrip())
        raise ValueError(f"text: unexpected {text[bad:bad + 20]!r} at character {bad}; "
                         "expected only <|audio_code_N|> tokens")


def _check_codes(name: str, codes: torch.Tensor, codebook_size: int, ndim: int) -> None:
    check_tensor(name, codes, (range(0, 2**31),) * ndim, "[T5]" if ndim == 1 else "[B, T5]", kind="int")
    check_values(name, codes, 0, codebook_size)
