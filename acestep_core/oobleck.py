"""Oobleck VAE: 48 kHz stereo waveform <-> 25 Hz, 64-channel latents (ACE-Step 1.5's `vae/`).

The architecture is the Stable Audio "Oobleck" codec as diffusers' `AutoencoderOobleck` defines it:

    encoder: conv(7) -> EncoderBlock x N (3 dilated residual units, Snake, strided conv) -> Snake -> conv(3)
    decoder: conv(7) -> DecoderBlock x N (Snake, transposed conv, 3 dilated residual units) -> Snake -> conv(7)

The encoder's last conv emits `encoder_hidden_size` channels: the first half is the posterior mean,
the second half a raw scale turned into a standard deviation by softplus(scale) + 1e-4.

Parameter names and shapes are diffusers' with weight norm folded (`conv1.weight` where diffusers
stores `conv1.weight_g` / `conv1.weight_v`), so a converted checkpoint loads with strict=True and
the convolutions run as plain convolutions. The public layouts are channels-first like diffusers:
waveforms [B, audio_channels, S], latents [B, latent_channels, T], S = T * hop_length (1920).

Inside Encoder/Decoder the activations are [B, C, 1, L] tensors in channels-last memory order (that
is, [B, L, C] in memory) and every Conv1d is applied as a height-1 Conv2d. On CPU, oneDNN then keeps
one layout from end to end instead of reordering around each 1-D convolution: the decoder runs about
1.3x faster at 2 s of audio and more at longer inputs; outputs match the 1-D path to float rounding.

Long inputs are processed in overlapping windows whose overlaps are thrown away (no blending), as the
official ACE-Step handler does. A decoded sample depends on latent frames within +-9 of it and an
encoded frame on audio within +-7 frames (0.3 s), far less than the overlaps, so the chunked result
equals the one-pass result up to float rounding (measured below 1e-6 of the peak in tests/test_oobleck.py).

dtype: everything runs in the parameters' dtype (float32 or bfloat16); inputs are cast to it on
entry and outputs come back in it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_tensor
from .config import OobleckConfig

# Official handler defaults (acestep/core/generation/handler/vae_decode.py, memory_utils.py, vae_encode.py).
# At the real size in float32 on CPU one window peaks at ~2.8 GB (decode, 512 frames) / ~3.6 GB (encode, 30 s).
DECODE_CHUNK_FRAMES = 512  # latent frames per decode window (official: 512 with >= 24 GB free VRAM, 256 on CPU)
DECODE_OVERLAP_FRAMES = 64  # latent frames discarded on each inner side of a decode window
ENCODE_CHUNK_SECONDS = 30.0  # audio per encode window (official: 30 s, or 15 s with <= 8 GB GPU memory / CPU)
ENCODE_OVERLAP_SECONDS = 2.0  # audio discarded on each inner side of an encode window


def snake(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Snake activation x + sin(a x)^2 / b with a = exp(alpha), b = exp(beta) + 1e-9.

    alpha, beta: log-scale per-channel parameters (as stored), shaped to broadcast against x.
    """
    # The coefficients are computed once per call in float32 (one rounding into bf16 instead of
    # exp'ing a bf16 parameter in bf16), then cast so the element-wise work stays in x's dtype.
    a = alpha.float().exp().to(x.dtype)
    inv_b = (beta.float().exp() + 1e-9).reciprocal().to(x.dtype)
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad or beta.requires_grad):
        return x + inv_b * torch.sin(a * x).pow(2)
    # Same operations in the same order (bit-identical), in one buffer instead of four. In-place sin_
    # would break autograd (its backward needs its input), hence only when no gradient is recorded.
    y = x * a
    y.sin_().square_().mul_(inv_b)
    return y.add_(x)


class Snake(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [1, C, 1] -> [1, C, 1, 1] to broadcast over the [B, C, 1, L] activations
        return snake(x, self.alpha.unsqueeze(-1), self.beta.unsqueeze(-1))


def conv(x: torch.Tensor, layer: nn.Conv1d) -> torch.Tensor:
    """Apply a Conv1d to x: [B, C_in, 1, L] channels-last -> [B, C_out, 1, L'] channels-last."""
    w = layer.weight.unsqueeze(2)  # [C_out, C_in, K] -> [C_out, C_in, 1, K]
    return F.conv2d(
        x, w, layer.bias, stride=(1, layer.stride[0]), padding=(0, layer.padding[0]), dilation=(1, layer.dilation[0])
    )


def conv_transpose(x: torch.Tensor, layer: nn.ConvTranspose1d) -> torch.Tensor:
    """Apply a ConvTranspose1d to x: [B, C_in, 1, L] channels-last -> [B, C_out, 1, L * stride] channels-last."""
    w = layer.weight.unsqueeze(2)  # [C_in, C_out, K] -> [C_in, C_out, 1, K]
    return F.conv_transpose2d(x, w, layer.bias, stride=(1, layer.stride[0]), padding=(0, layer.padding[0]))


class ResidualUnit(nn.Module):
    """Snake -> dilated conv(7) -> Snake -> conv(1), added to the input."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.snake1 = Snake(channels)
        # padding 3 * dilation keeps the length, so the skip path never needs cropping.
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = conv(self.snake1(x), self.conv1)
        # add_ on the fresh conv output is autograd-safe (conv's backward does not need its output).
        return conv(self.snake2(h), self.conv2).add_(x)


class EncoderBlock(nn.Module):
    """Three residual units at the input width, then a strided conv that divides the length by `stride`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.res_unit1 = ResidualUnit(in_channels, dilation=1)
        self.res_unit2 = ResidualUnit(in_channels, dilation=3)
        self.res_unit3 = ResidualUnit(in_channels, dilation=9)
        self.snake1 = Snake(in_channels)
        # kernel 2s, stride s, padding s/2: L -> L // s for even s.
        self.conv1 = nn.Conv1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride, padding=stride // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
        return conv(self.snake1(x), self.conv1)


class DecoderBlock(nn.Module):
    """A transposed conv that multiplies the length by `stride`, then three residual units."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.snake1 = Snake(in_channels)
        # kernel 2s, stride s, padding s/2: L -> L * s for even s.
        self.conv_t1 = nn.ConvTranspose1d(
            in_channels, out_channels, kernel_size=2 * stride, stride=stride, padding=stride // 2
        )
        self.res_unit1 = ResidualUnit(out_channels, dilation=1)
        self.res_unit2 = ResidualUnit(out_channels, dilation=3)
        self.res_unit3 = ResidualUnit(out_channels, dilation=9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = conv_transpose(self.snake1(x), self.conv_t1)
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))


def _to_blocks(x: torch.Tensor) -> torch.Tensor:
    # [B, C, L] -> [B, C, 1, L], stored channels-last ([B, L, C] in memory)
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _from_blocks(x: torch.Tensor) -> torch.Tensor:
    # [B, C, 1, L] channels-last -> [B, C, L] contiguous (the public channels-first layout)
    return x.squeeze(2).contiguous()


class Encoder(nn.Module):
    """[B, audio_channels, S] -> [B, encoder_hidden_size, S // hop] (mean and raw scale, stacked)."""

    def __init__(self, cfg: OobleckConfig):
        super().__init__()
        width = cfg.encoder_hidden_size
        mults = (1, *cfg.channel_multiples)
        self.conv1 = nn.Conv1d(cfg.audio_channels, width, kernel_size=7, padding=3)
        self.block = nn.ModuleList(
            EncoderBlock(width * mults[i], width * mults[i + 1], stride)
            for i, stride in enumerate(cfg.downsampling_ratios)
        )
        self.snake1 = Snake(width * mults[-1])
        self.conv2 = nn.Conv1d(width * mults[-1], width, kernel_size=3, padding=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = conv(_to_blocks(wave), self.conv1)
        for block in self.block:
            x = block(x)
        return _from_blocks(conv(self.snake1(x), self.conv2))


class Decoder(nn.Module):
    """[B, latent_channels, T] -> [B, audio_channels, T * hop]; widths shrink as the rate grows."""

    def __init__(self, cfg: OobleckConfig):
        super().__init__()
        width = cfg.decoder_channels
        mults = (1, *cfg.channel_multiples)
        n = len(cfg.downsampling_ratios)
        self.conv1 = nn.Conv1d(cfg.latent_channels, width * mults[-1], kernel_size=7, padding=3)
        # Strides in reverse order of the encoder; block i maps width*mults[n-i] -> width*mults[n-i-1].
        self.block = nn.ModuleList(
            DecoderBlock(width * mults[n - i], width * mults[n - i - 1], stride)
            for i, stride in enumerate(reversed(cfg.downsampling_ratios))
        )
        self.snake1 = Snake(width)
        self.conv2 = nn.Conv1d(width, cfg.audio_channels, kernel_size=7, padding=3, bias=False)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = conv(_to_blocks(latents), self.conv1)
        for block in self.block:
            x = block(x)
        return _from_blocks(conv(self.snake1(x), self.conv2))


def _windows(total: int, chunk: int | None, overlap: int):
    """Overlap-discard tiling of `total` frames, as the official handler does it.

    Cores of `chunk - 2 * overlap` frames tile [0, total); each runs inside a window widened by
    `overlap` frames on each side (clipped at the ends). Yields (win_start, win_end, core_start,
    core_end) in frames. One window covers everything when `chunk` is None or total <= chunk.
    """
    if chunk is None or total <= chunk:
        yield 0, total, 0, total
        return
    stride = chunk - 2 * overlap
    for core_start in range(0, total, stride):
        core_end = min(core_start + stride, total)
        yield max(0, core_start - overlap), min(total, core_end + overlap), core_start, core_end


def _check_chunking(chunk: int | None, overlap: int, chunk_name: str, overlap_name: str) -> None:
    if not isinstance(overlap, int) or overlap < 0:
        raise ValueError(f"{overlap_name} must be an int >= 0, got {overlap!r}")
    if chunk is not None and not isinstance(chunk, int):
        raise ValueError(f"{chunk_name} must be an int or None, got {chunk!r}")
    if chunk is not None and chunk <= 2 * overlap:
        raise ValueError(f"{chunk_name} ({chunk}) must be greater than 2 * {overlap_name} ({overlap})")


class Oobleck(nn.Module):
    """The VAE. `encode`/`posterior` take [B, audio_channels, S] audio, `decode` takes [B, latent_channels, T]."""

    def __init__(self, cfg: OobleckConfig):
        super().__init__()
        if cfg.encoder_hidden_size % 2:
            raise ValueError(f"encoder_hidden_size must be even (mean and scale halves), got {cfg.encoder_hidden_size}")
        if any(r < 2 or r % 2 for r in cfg.downsampling_ratios):
            # Odd strides break the exact L -> L // s and L -> L * s length arithmetic the tiling relies on.
            raise ValueError(f"downsampling_ratios must all be even, got {cfg.downsampling_ratios}")
        if len(cfg.channel_multiples) != len(cfg.downsampling_ratios):
            raise ValueError("channel_multiples and downsampling_ratios must have the same length")
        self.cfg = cfg
        self.hop_length = cfg.hop_length
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv2.weight.dtype

    def _check(self, x: torch.Tensor, name: str, channels: int, length: str, min_length: int) -> torch.Tensor:
        check_tensor(name, x, (None, channels, range(min_length, 2**62)),
                     f"[B, {channels}, {length}] with {length} >= {min_length}")
        # Convolutions need input and weights in one dtype; callers may hand float32 audio or latents
        # to a bf16 model (or the reverse).
        return x.to(self.dtype)

    def posterior(
        self,
        wave: torch.Tensor,
        *,
        chunk_seconds: float | None = ENCODE_CHUNK_SECONDS,
        overlap_seconds: float = ENCODE_OVERLAP_SECONDS,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std, each [B, encoder_hidden_size // 2, S // hop_length].

        wave: [B, audio_channels, S] with S >= hop_length. Audio longer than `chunk_seconds` is encoded
        in overlapping windows, `overlap_seconds` discarded per inner side (`chunk_seconds=None`: one pass).
        """
        hop, rate = self.hop_length, self.cfg.sampling_rate
        wave = self._check(wave, "wave", self.cfg.audio_channels, "S", hop)
        # Window sizes in whole latent frames, so that every window starts on a frame boundary.
        chunk = None if chunk_seconds is None else round(chunk_seconds * rate / hop)
        overlap = round(overlap_seconds * rate / hop)
        _check_chunking(chunk, overlap, "chunk_seconds (in frames)", "overlap_seconds (in frames)")
        total = wave.shape[-1] // hop
        windows = list(_windows(total, chunk, overlap))
        if len(windows) == 1:
            h = self.encoder(wave)
        else:
            h = wave.new_empty(wave.shape[0], self.cfg.encoder_hidden_size, total)
            for win_start, win_end, core_start, core_end in windows:
                # The last window runs to the true end of the audio: samples after the last whole frame
                # still reach the last frames through the receptive field, as they do in one pass.
                end = wave.shape[-1] if win_end == total else win_end * hop
                part = self.encoder(wave[:, :, win_start * hop : end])
                h[:, :, core_start:core_end] = part[:, :, core_start - win_start : core_end - win_start]
        mean, scale = h.chunk(2, dim=1)  # [B, 2C, T] -> 2 x [B, C, T] (views)
        # The mean view skips the scale half of each item; copy it so callers get a contiguous tensor.
        return mean.contiguous(), F.softplus(scale) + 1e-4

    def encode(
        self,
        wave: torch.Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        chunk_seconds: float | None = ENCODE_CHUNK_SECONDS,
        overlap_seconds: float = ENCODE_OVERLAP_SECONDS,
    ) -> torch.Tensor:
        """Latents [B, encoder_hidden_size // 2, S // hop_length] from audio [B, audio_channels, S].

        The posterior mean by default (deterministic). `sample=True` returns mean + std * noise with the
        noise drawn in one piece for the whole output from `generator`, like diffusers'
        `latent_dist.sample(generator)`. (The official handler samples per window, without a generator.)
        """
        mean, std = self.posterior(wave, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds)
        if not sample:
            return mean
        device = generator.device if generator is not None else mean.device
        # Drawn on the generator's device in the latents' dtype, then moved: what diffusers' randn_tensor does.
        noise = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
        return mean + std * noise

    def decode(
        self,
        latents: torch.Tensor,
        *,
        chunk_size: int | None = DECODE_CHUNK_FRAMES,
        overlap: int = DECODE_OVERLAP_FRAMES,
    ) -> torch.Tensor:
        """Audio [B, audio_channels, T * hop_length] from latents [B, latent_channels, T].

        Latents longer than `chunk_size` frames are decoded in overlapping windows with `overlap` frames
        discarded per inner side (`chunk_size=None`: one pass, whose memory grows with the length).
        """
        z = self._check(latents, "latents", self.cfg.latent_channels, "T", 1)
        _check_chunking(chunk_size, overlap, "chunk_size", "overlap")
        hop, total = self.hop_length, z.shape[-1]
        windows = list(_windows(total, chunk_size, overlap))
        if len(windows) == 1:
            return self.decoder(z)
        out = z.new_empty(z.shape[0], self.cfg.audio_channels, total * hop)
        for win_start, win_end, core_start, core_end in windows:
            part = self.decoder(z[:, :, win_start:win_end])
            keep = slice((core_start - win_start) * hop, (core_end - win_start) * hop)
            out[:, :, core_start * hop : core_end * hop] = part[:, :, keep]
        return out
