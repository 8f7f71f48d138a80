"""5 Hz LM conversion (official folder -> our layout), loading both layouts, and one clear error per bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import acestep_core
from acestep_core.config import ConfigError
from acestep_core.lm.checkpoint import load_lm
from acestep_core.lm.config import LMConfig, read_lm_config
from acestep_core.safetensors_io import CheckpointError
from acestep_core.convert.lm import convert_lm_folder, write_lm_checkpoint

FIX = Path(__file__).parent / "fixtures" / "official_tiny_lm"
LM_DIR = FIX / "checkpoints" / "acestep-5Hz-lm-tiny"
TINY = LMConfig(vocab_size=64554, hidden_size=16, intermediate_size=48, num_layers=3, num_heads=4, num_kv_heads=2,
                head_dim=32, rope_theta=1e6, rms_norm_eps=1e-6)


@pytest.fixture(scope="module")
def planner():
    return acestep_core.load_planner(LM_DIR, progress=False)


@pytest.fixture
def official(tmp_path):
    """A writable copy of the official tiny LM folder."""
    dst = tmp_path / "acestep-5Hz-lm-tiny"
    shutil.copytree(LM_DIR, dst)
    return dst


def test_convert_in_memory():
    config, tensors, tokenizer = convert_lm_folder(LM_DIR)
    assert config == TINY and Path(tokenizer) == LM_DIR / "tokenizer.json"
    source = load_file(LM_DIR / "model.safetensors")
    assert set(tensors) == {k.removeprefix("model.") for k in source}
    assert all(torch.equal(tensors[k.removeprefix("model.")], v) for k, v in source.items())


@torch.inference_mode()
def test_our_layout_loads_with_identical_logits(tmp_path):
    out = Path(write_lm_checkpoint(LM_DIR, tmp_path / "lm"))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "lm.safetensors", "tokenizer.json"]
    assert json.loads((out / "config.json").read_text())["format"] == "acestep-core-lm"
    assert read_lm_config(out) == TINY
    ids = torch.tensor([[550, 882 % 549, 12, 553, 198, 600, 64553]])
    (a, _), (b, _) = load_lm(LM_DIR), load_lm(out)
    assert torch.equal(a(ids, a.new_cache(1, 8)), b(ids, b.new_cache(1, 8)))
    planner = acestep_core.load_planner(out, dtype=torch.bfloat16, progress=False)
    assert planner.model.embed_tokens.weight.dtype == torch.bfloat16 and planner.tokenizer.code_offset == 554


def test_imports_work_from_either_side():
    """Every entry point imports cleanly in a fresh interpreter, whichever module comes first."""
    for first in ("acestep_core.convert.configs", "acestep_core.convert.convert", "acestep_core.convert.lm",
                  "acestep_core.lm.planner", "acestep_core.config", "weights_convert.__main__"):
        code = f"import {first}; import acestep_core; assert callable(acestep_core.load_planner)"
        subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def _edit_state_dict(folder: Path, fn) -> None:
    sd = load_file(folder / "model.safetensors")
    fn(sd)
    save_file(sd, folder / "model.safetensors")


def test_key_map_errors(official):
    _edit_state_dict(official, lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(1)))
    with pytest.raises(CheckpointError, match="unknown key 'model.extra.weight'"):
        convert_lm_folder(official)
    _edit_state_dict(official, lambda sd: (sd.pop("model.extra.weight"), sd.pop("model.layers.1.mlp.up_proj.weight")))
    with pytest.raises(CheckpointError, match="missing key 'layers.1.mlp.up_proj.weight'"):
        load_lm(official)
    _edit_state_dict(official, lambda sd: sd.__setitem__("model.layers.1.mlp.up_proj.weight", torch.zeros(48, 15)))
    with pytest.raises(CheckpointError, match=r"shape \(48, 15\)"):
        convert_lm_folder(official)


def test_tied_head_is_dropped_and_an_untied_one_refused(official):
    _edit_state_dict(official, lambda sd: sd.__setitem__("lm_head.weight", sd["model.embed_tokens.weight"].clone()))
    assert "lm_head.weight" not in convert_lm_folder(official)[1]
    _edit_state_dict(official, lambda sd: sd.__setitem__("lm_head.weight", torch.zeros(64554, 16)))
    with pytest.raises(CheckpointError, match="only a tied head"):
        convert_lm_folder(official)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(foo=1), "unknown key 'foo'"),
    (lambda c: c.pop("head_dim"), "missing key 'head_dim'"),
    (lambda c: c.update(attention_bias=True), "attention_bias=True is not supported"),
    (lambda c: c.update(tie_word_embeddings=False), "tie_word_embeddings=False"),
    (lambda c: c.update(model_type="llama"), "model_type='llama'"),
])
def test_source_config_errors(official, edit, message):
    cfg = json.loads((official / "config.json").read_text())
    edit(cfg)
    (official / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        load_lm(official)


def test_our_config_is_strict(tmp_path):
    out = Path(write_lm_checkpoint(LM_DIR, tmp_path / "lm"))
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "num_layer": 3}))
    with pytest.raises(ConfigError, match="unknown key 'num_layer'"):
        load_lm(out)
    (out / "config.json").write_text(json.dumps({**cfg, "format_version": 9}))
    with pytest.raises(ConfigError, match="format_version"):
        load_lm(out)


def test_folder_without_code_tokens(official):
    data = json.loads((official / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if not t["content"].startswith("<|audio_code_")]
    (official / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no audio-code tokens"):
        load_lm(official)
    with pytest.raises(CheckpointError, match="not a folder"):
        load_lm(official / "config.json")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(duration=5), ValueError, "duration=5 is outside 10..600"),
    (dict(duration=300, max_duration=240), ValueError, "duration=300 is outside 10..240"),
    (dict(vocal_language="xx"), ValueError, "language='xx'"),
    (dict(keyscale="H major"), ValueError, "keyscale='H major'"),
    (dict(timesignature=5), ValueError, "timesignature=5"),
    (dict(bpm=10), ValueError, "bpm=10"),
    (dict(max_duration=700), ValueError, "max_duration"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(top_p=2.0), ValueError, "top_p"),
    (dict(temperature=-1), ValueError, "temperature"),
    (dict(use_cot_metas="yes"), TypeError, "use_cot_metas"),
])
def test_bad_plan_input_gets_one_clear_error(planner, kwargs, error, message):
    with pytest.raises(error, match=message):
        planner.plan("piano", "", **kwargs)


def test_bad_codes_and_queries(planner):
    with pytest.raises(ValueError, match="audio code 64000 is outside 0..63999"):
        planner.understand("<|audio_code_12|><|audio_code_64000|>")
    with pytest.raises(ValueError, match="outside 0..63999"):
        planner.understand([1, 70000])
    with pytest.raises(ValueError, match="no <|audio_code_N|>"):
        planner.understand("   ")
    with pytest.raises(ValueError, match="language='klingon'"):
        planner.inspire("space opera", vocal_language="klingon")
    with pytest.raises(TypeError, match="metadata must be a dict"):
        planner.plan_codes("x", "", "bpm: 120")
