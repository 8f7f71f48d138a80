"""Precision modes as data: mixed (bf16 matmuls, fp32 state) is the bf16 default, pure-bf16 keeps the
official all-bf16 numerics, dtype="auto" follows the hardware."""

from pathlib import Path

import pytest
import torch

from acestep_core import precision
from acestep_core.pipeline import load_pipeline

CKPT = Path(__file__).parent / "fixtures" / "official_tiny_turbo" / "checkpoints"
ARGS = dict(prompt="pop", lyrics="[verse]\nla la", audio_duration=6, seed=3, output_type="latent")
BF16 = torch.bfloat16


def _err(a, b):
    return (a.float() - b.float()).norm().item() / b.float().norm().item()


@pytest.fixture
def native(monkeypatch):
    """Pretend the CPU has bf16 arithmetic, so the test runs the same on every machine."""
    monkeypatch.setattr(precision, "native_compute", lambda dtype, device: True)


def test_modes_resolve_from_the_arguments(native, monkeypatch):
    r = precision.resolve_precision
    assert r(torch.float32, "cpu").name == "fp32"
    assert (r(BF16, "cpu").name, r(BF16, "cpu").state, r(BF16, "cpu").compute) == ("mixed", torch.float32, BF16)
    assert r(BF16, "cpu", "pure-bf16").state == BF16
    assert r(BF16, "cpu", compute_dtype=BF16).name == "pure-bf16"  # the older switch still means pure
    assert r(BF16, "cpu", compute_dtype=torch.float32).name == "emulated"
    assert r("auto", "cpu").weights == BF16 and r("auto", "cuda").weights == BF16
    monkeypatch.setattr(precision, "native_compute", lambda dtype, device: False)
    assert r("auto", "cpu").name == "fp32" and r(BF16, "cpu").name == "emulated"
    for bad, match in ((dict(dtype="half"), "dtype"), (dict(precision="pure-fp16"), "precision"),
                       (dict(precision="fast"), "precision"), (dict(precision="mixed", compute_dtype=BF16), "both")):
        with pytest.raises(ValueError, match=match):
            r(bad.pop("dtype", BF16), "cpu", **bad)


def test_mixed_is_closer_to_fp32_than_pure_bf16(native):
    ref = load_pipeline(CKPT)(**ARGS).latents
    mixed_pipe = load_pipeline(CKPT, dtype=BF16)
    mixed = mixed_pipe(**ARGS).latents
    pure = load_pipeline(CKPT, dtype=BF16, precision="pure-bf16")(**ARGS).latents
    assert mixed.dtype == torch.float32 and pure.dtype == BF16
    layer = mixed_pipe.dit.layers[0]
    assert layer.self_attn.q_proj.weight.dtype == BF16 and layer.self_attn_norm.weight.dtype == torch.float32
    assert mixed_pipe.dit.time_embed.linear_1.weight.dtype == torch.float32  # the timestep path stays fp32
    assert _err(mixed, ref) < _err(pure, ref) and _err(mixed, ref) < 0.02
