"""int8 weight-only quantization: the kernel against the dequantized matmul, the pipeline against fp32,
the converter's round trip and strict loading of a quantized folder."""

import json
from pathlib import Path

import pytest
import torch

from acestep_core.checkpoint import read_ours
from acestep_core.convert.cli import main as convert_main
from acestep_core.pipeline import load_pipeline
from acestep_core.quantize import Int8Linear, quantize_linears, quantize_weight
from acestep_core.safetensors_io import CheckpointError, read_safetensors, write_safetensors

CKPT = Path(__file__).parent / "fixtures" / "official_tiny_turbo" / "checkpoints"
ARGS = dict(prompt="pop", lyrics="[verse]\nla la", audio_duration=6, seed=3, output_type="latent")


def _cos(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0).item()


@pytest.mark.parametrize("k", [7, 24, 64, 96])
def test_int8_linear_equals_the_dequantized_linear(k):
    torch.manual_seed(0)
    lin = torch.nn.Linear(k, 48)
    q = Int8Linear.from_linear(lin)
    codes, scale = quantize_weight(lin.weight)
    assert codes.dtype == torch.int8 and codes.abs().max() == 127
    x = torch.randn(2, 5, k)
    want = torch.nn.functional.linear(x, codes.float() * scale[:, None], lin.bias)
    torch.testing.assert_close(q(x), want, atol=1e-5, rtol=1e-5)
    assert (q(x) - lin(x)).abs().max() < 0.02 * lin(x).abs().max()
    assert q(x.bfloat16()).dtype == torch.bfloat16  # the output keeps the input dtype


def test_quantized_pipeline_is_close_to_fp32_and_smaller():
    ref_pipe = load_pipeline(CKPT)
    q = load_pipeline(CKPT, quantize="int8")
    assert isinstance(q.dit.layers[0].mlp.up_proj, Int8Linear) and isinstance(q.text_encoder.layers[0].mlp.up_proj,
                                                                                 Int8Linear)
    assert _cos(q(**ARGS).latents, ref_pipe(**ARGS).latents) > 0.99
    mixed = load_pipeline(CKPT, dtype=torch.bfloat16, precision="mixed", quantize="int8")(**ARGS).latents
    assert mixed.dtype == torch.float32 and _cos(mixed, ref_pipe(**ARGS).latents) > 0.99
    with pytest.raises(ValueError, match="quantize"):
        load_pipeline(CKPT, quantize="int4")


def test_convert_round_trip_and_strict_loading(tmp_path):
    dst = tmp_path / "q"
    assert convert_main([str(CKPT), str(dst), "--quantize", "int8"]) == 0
    assert json.loads((dst / "quantization.json").read_text()) == {"scheme": "int8",
                                                                    "components": ["dit", "condition", "text_encoder"]}
    dit = read_safetensors(dst / "dit.safetensors")
    assert dit["layers.0.mlp.up_proj.weight"].dtype == torch.int8
    assert dit["layers.0.mlp.up_proj.weight_scale"].dtype == torch.float32
    assert read_ours(str(dst)).quantize == "int8"
    from_file = load_pipeline(dst)(**ARGS).latents
    at_load = load_pipeline(CKPT, quantize="int8")(**ARGS).latents
    assert torch.equal(from_file, at_load)  # quantized once at conversion = quantized at load
    # strict: a missing scale, or a float weight where int8 is expected, is an error naming the key
    for change, match in (("drop", "missing"), ("float", "int8")):
        bad = tmp_path / change
        convert_main([str(CKPT), str(bad), "--quantize", "int8"])
        t = read_safetensors(bad / "dit.safetensors")
        t = {k: v.clone() for k, v in t.items()}
        if change == "drop":
            del t["layers.0.mlp.up_proj.weight_scale"]
        else:
            t["layers.0.mlp.up_proj.weight"] = t["layers.0.mlp.up_proj.weight"].float()
        write_safetensors(t, bad / "dit.safetensors")
        with pytest.raises(CheckpointError, match=match):
            load_pipeline(bad)
    (dst / "quantization.json").write_text(json.dumps({"scheme": "int4", "components": ["dit"]}))
    with pytest.raises(CheckpointError, match="quantization.json"):
        load_pipeline(dst)


def test_quantize_linears_covers_any_module():
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Sequential(torch.nn.Linear(64, 8)))
    quantize_linears(m)
    assert isinstance(m[0], Int8Linear) and isinstance(m[2][0], Int8Linear)
