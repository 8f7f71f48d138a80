"""Oobleck VAE: live parity with diffusers, frozen official fixture, chunking, bf16, bad inputs, sampling."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acestep_core.config import OobleckConfig
from acestep_core.oobleck import Oobleck, snake
from acestep_core.convert import configs
from acestep_core.convert.convert import convert_component

FIX = Path(__file__).parent / "fixtures"
TINY = FIX / "official_tiny_turbo"
RATIOS = (2, 4, 4, 6, 10)  # the real ratios: hop 1920, 25 Hz at 48 kHz
HOP = 1920


def tiny_config(latent_channels: int = 4) -> OobleckConfig:
    # encoder_hidden_size 8 -> 4 mean channels, which the decoder takes back (latent_channels 4).
    return OobleckConfig(audio_channels=2, sampling_rate=48000, encoder_hidden_size=8, decoder_channels=6,
                         latent_channels=latent_channels, channel_multiples=(1, 2, 2, 3, 3), downsampling_ratios=RATIOS)


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter from `seed` (independent of the global RNG): no Snake at its alpha = beta = 0
    init, no zero bias, and weight-norm gains that differ from ||v||."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith(("alpha", "beta")):
                p.copy_(0.5 * noise)  # log scale: exp() spreads over ~[0.4, 2.7]
            elif name.endswith("weight_g"):
                p.copy_(0.3 + 0.3 * noise.abs())  # row norms of the folded weight
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:  # conv weights ([out, in, k], or [in, out, k] transposed): row norms ~0.5 keep outputs O(1)
                p.copy_(0.5 * noise / (p[0].numel() ** 0.5))


def tiny_ours(seed: int = 0, latent_channels: int = 4) -> Oobleck:
    model = Oobleck(tiny_config(latent_channels)).eval()
    randomize_(model, seed)
    return model


def diffusers_pair(tmp_path, seed: int = 0):
    """A random diffusers AutoencoderOobleck, saved and re-read as a checkpoint file, and ours loaded from it."""
    diffusers = pytest.importorskip("diffusers")
    cfg = tiny_config()
    ref = diffusers.AutoencoderOobleck(
        encoder_hidden_size=cfg.encoder_hidden_size, downsampling_ratios=list(cfg.downsampling_ratios),
        channel_multiples=list(cfg.channel_multiples), decoder_channels=cfg.decoder_channels,
        decoder_input_channels=cfg.latent_channels, audio_channels=cfg.audio_channels,
        sampling_rate=cfg.sampling_rate,
    ).eval()
    randomize_(ref, seed)
    ref.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "diffusion_pytorch_model.safetensors")
    assert any(k.endswith("weight_g") for k in sd)  # the old-style weight norm the real checkpoint has
    ours = Oobleck(configs.oobleck_from_diffusers(json.loads((tmp_path / "config.json").read_text()), "tiny"))
    ours.load_state_dict(convert_component(sd, "diffusers", "vae"), strict=True)
    return ref, ours.eval()


def test_live_parity_with_diffusers(tmp_path):
    ref, ours = diffusers_pair(tmp_path)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 23, generator=g)
    wave = 0.5 * torch.randn(2, 2, 23 * HOP + 777, generator=g)  # a ragged tail past the last whole frame
    with torch.no_grad():
        want = ref.decode(z).sample
        dist = ref.encode(wave).latent_dist
        got = ours.decode(z)
        mean, std = ours.posterior(wave)
    assert got.shape == want.shape == (2, 2, 23 * HOP)
    assert mean.shape == dist.mean.shape == (2, 4, 23)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(mean, dist.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(std, dist.std, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.encode(wave), mean, rtol=0, atol=0)


def test_module_matches_diffusers_own_weight_norm_removal(tmp_path):
    # Checks our modules independently of the converter: diffusers folds its own weight norm
    # (torch's remove_weight_norm), and the resulting state dict must load into ours as is.
    from torch.nn.utils import remove_weight_norm

    ref, _ = diffusers_pair(tmp_path)
    folded = type(ref).from_pretrained(tmp_path).eval()
    for module in folded.modules():
        if hasattr(module, "weight_g"):
            remove_weight_norm(module)
    ours = Oobleck(tiny_config()).eval()
    ours.load_state_dict(folded.state_dict(), strict=True)
    z = torch.randn(1, 4, 9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, rtol=0, atol=1e-5)


def test_real_size_parameter_names_and_shapes():
    # The real ACE-Step VAE key list with weight norm folded by name must equal our state dict (meta device).
    data = json.loads((FIX / "keys" / "diffusers_AutoencoderOobleck_acestep_keys.json").read_text())
    want = {}
    for e in data["state_dict"]:
        if e["name"].endswith(".weight_g"):
            continue
        want[e["name"].replace(".weight_v", ".weight")] = tuple(e["shape"])
    with torch.device("meta"):
        model = Oobleck(configs.oobleck_from_diffusers(data["config"], "real vae"))
    assert model.hop_length == 1920
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == want


def test_frozen_official_fixture():
    cfg = configs.oobleck_from_diffusers(json.loads((TINY / "checkpoints/vae/config.json").read_text()), "fixture")
    # The fixture's encoder yields encoder_hidden_size / 2 = 2 latent channels while its decoder takes 64.
    assert cfg.encoder_hidden_size // 2 == 2 and cfg.latent_channels == 64
    model = Oobleck(cfg).eval()
    sd = load_file(TINY / "checkpoints/vae/diffusion_pytorch_model.safetensors")
    model.load_state_dict(convert_component(sd, "diffusers", "vae"), strict=True)
    ref = load_file(TINY / "reference/vae.safetensors")
    with torch.no_grad():
        wave = model.decode(ref["decode_latents"])
        mean, std = model.posterior(ref["encode_waveform"])
    torch.testing.assert_close(wave, ref["decode_waveform"], rtol=0, atol=1e-5)
    torch.testing.assert_close(mean, ref["encode_mean"], rtol=0, atol=1e-5)
    torch.testing.assert_close(std, ref["encode_std"], rtol=0, atol=1e-5)


def test_chunked_decode_matches_one_pass():
    # 260 frames in windows of 192 with the official 64-frame overlap: 5 windows, a short last one.
    # Measured gap: ~1e-6 of the peak (the overlap is far wider than the decoder's +-9-frame reach).
    model = tiny_ours(3)
    z = torch.randn(1, 4, 260, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = model.decode(z, chunk_size=None)
        chunked = model.decode(z, chunk_size=192, overlap=64)
    assert chunked.shape == whole.shape == (1, 2, 260 * HOP)
    assert (chunked - whole).abs().max() <= 1e-4 * whole.abs().max()


def test_chunked_encode_matches_one_pass():
    # 9 s + a ragged tail in 6 s windows with the official 2 s overlap: 5 windows.
    # Measured gap: ~1e-6 of the peak (an encoded frame sees only +-0.3 s of audio).
    model = tiny_ours(5)
    wave = 0.5 * torch.randn(1, 2, 9 * 48000 + 1000, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        mean, std = model.posterior(wave, chunk_seconds=None)
        mean_c, std_c = model.posterior(wave, chunk_seconds=6.0, overlap_seconds=2.0)
    assert mean_c.shape == mean.shape == (1, 4, 225)
    assert (mean_c - mean).abs().max() <= 1e-4 * mean.abs().max()
    assert (std_c - std).abs().max() <= 1e-4 * std.abs().max()


def test_short_inputs_run_in_one_pass_by_default():
    model = tiny_ours(7)
    z = torch.randn(1, 4, 40, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert torch.equal(model.decode(z), model.decode(z, chunk_size=None))


def test_bf16_decode_close_to_fp32():
    model = tiny_ours(9)
    z = torch.randn(1, 4, 30, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        want = model.decode(z)
        model_bf16 = tiny_ours(9).to(torch.bfloat16)
        got = model_bf16.decode(z)  # float32 latents into a bf16 model: cast on entry
        mean = model_bf16.encode(want)
    assert got.dtype == torch.bfloat16 and mean.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(got.float().flatten(), want.flatten(), dim=0) >= 0.999


def test_fast_snake_equals_autograd_snake():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 5, 1, 33, generator=g)
    alpha, beta = torch.randn(1, 5, 1, 1, generator=g), torch.randn(1, 5, 1, 1, generator=g)
    with torch.no_grad():
        fast = snake(x, alpha, beta)
    slow = snake(x.requires_grad_(), alpha, beta)
    assert torch.equal(fast, slow.detach())
    plain = x + 1.0 / (beta.exp() + 1e-9) * torch.sin(alpha.exp() * x) ** 2
    torch.testing.assert_close(fast, plain.detach(), rtol=0, atol=1e-6)


def test_decode_is_differentiable():
    model = tiny_ours(12)
    z = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(13), requires_grad=True)
    model.decode(z).square().mean().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_sample_is_seeded_and_matches_diffusers(tmp_path):
    ref, ours = diffusers_pair(tmp_path, seed=14)
    wave = 0.5 * torch.randn(1, 2, 8 * HOP, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        a = ours.encode(wave, sample=True, generator=torch.Generator().manual_seed(42))
        b = ours.encode(wave, sample=True, generator=torch.Generator().manual_seed(42))
        c = ours.encode(wave, sample=True, generator=torch.Generator().manual_seed(43))
        want = ref.encode(wave).latent_dist.sample(generator=torch.Generator().manual_seed(42))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("wave, words", [
    (torch.zeros(1, 3, 4000), "[B, 2, S]"),  # wrong channel count
    (torch.zeros(2, 4000), "3-D tensor [B, 2, S]"),  # missing batch dim
    (torch.zeros(1, 2, 4000, dtype=torch.int16), "floating-point"),
    (torch.zeros(1, 2, 0), "S >= 1920"),  # empty audio
    (torch.zeros(1, 2, 1000), "S >= 1920"),  # shorter than one latent frame
    (torch.zeros(0, 2, 4000), "[B, 2, S]"),  # empty batch
])
def test_bad_audio_raises(wave, words):
    with pytest.raises(ValueError, match="wave") as e:
        tiny_ours().encode(wave)
    assert words in str(e.value)


@pytest.mark.parametrize("latents, words", [
    (torch.zeros(1, 5, 10), "[B, 4, T]"),
    (torch.zeros(4, 10), "3-D tensor [B, 4, T]"),
    (torch.zeros(1, 4, 10, dtype=torch.long), "floating-point"),
    (torch.zeros(1, 4, 0), "T >= 1"),  # zero-length latents
])
def test_bad_latents_raise(latents, words):
    with pytest.raises(ValueError, match="latents") as e:
        tiny_ours().decode(latents)
    assert words in str(e.value)


def test_bad_chunking_raises():
    model = tiny_ours()
    with pytest.raises(ValueError, match="chunk_size"):
        model.decode(torch.zeros(1, 4, 10), chunk_size=128, overlap=64)
    with pytest.raises(ValueError, match="overlap"):
        model.decode(torch.zeros(1, 4, 10), overlap=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        model.decode(torch.zeros(1, 4, 10), chunk_size=512.0)
    with pytest.raises(ValueError, match="chunk_seconds"):
        model.encode(torch.zeros(1, 2, 4000), chunk_seconds=3.0, overlap_seconds=2.0)
