"""bf16 weights with fp32 compute (CPUs without bf16 units) and native bf16."""

from pathlib import Path

import pytest
import torch

from acestep_core.pipeline import load_pipeline

CKPT = Path(__file__).parent / "fixtures" / "official_tiny_turbo" / "checkpoints"
ARGS = dict(prompt="pop", lyrics="[verse]\nla la", audio_duration=6, seed=3, output_type="latent")


def _weight_bytes(pipe) -> int:
    mods = (pipe.text_encoder, pipe.dit, pipe.condition_encoder, pipe.audio_tokenizer, pipe.audio_detokenizer)
    return sum(t.numel() * t.element_size() for m in mods for t in m.state_dict().values())


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0).item()


def test_bf16_storage_fp32_compute():
    fp32 = load_pipeline(CKPT)
    emulated = load_pipeline(CKPT, dtype=torch.bfloat16, compute_dtype=torch.float32)
    ref, out = fp32(**ARGS).latents, emulated(**ARGS).latents
    assert out.dtype == torch.float32 and _cos(ref, out) >= 0.999
    # matmul weights in bf16, the small parameters in fp32: close to half of the fp32 weight memory
    assert _weight_bytes(emulated) <= 0.55 * _weight_bytes(fp32)
    layer = emulated.dit.layers[0]
    assert layer.mlp.up_proj.parametrizations.weight.original.dtype == torch.bfloat16
    assert layer.mlp.up_proj.weight.dtype == torch.float32 and layer.mlp_norm.weight.dtype == torch.float32


def test_native_bf16_is_close_to_fp32():
    fp32 = load_pipeline(CKPT)
    native = load_pipeline(CKPT, dtype=torch.bfloat16, compute_dtype=torch.bfloat16)
    out = native(**ARGS).latents
    assert out.dtype == torch.bfloat16 and _cos(fp32(**ARGS).latents, out) >= 0.999


def test_bad_compute_dtype():
    with pytest.raises(ValueError, match="compute_dtype"):
        load_pipeline(CKPT, dtype=torch.bfloat16, compute_dtype=torch.float16)
