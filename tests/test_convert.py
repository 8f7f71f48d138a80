"""weights_convert: key maps at real size, the tiny official fixture end to end, and bad checkpoints."""

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acestep_core.config import AceStepConfig, load_config
from acestep_core.loading import expected_shapes, load_checkpoint
from acestep_core.safetensors_io import read_safetensors
from acestep_core.convert import configs
from acestep_core.convert.convert import (
    COMPONENTS,
    ConversionError,
    check_against_config,
    convert_checkpoint,
    convert_component,
    write_checkpoint,
)

FIX = Path(__file__).parent / "fixtures"
KEYS = FIX / "keys"
OFFICIAL = FIX / "official_tiny_turbo" / "checkpoints"

# Qwen3-Embedding-0.6B as published (its config.json; no key list ships with the fixtures).
REAL_QWEN3 = configs.Qwen3Config(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_layers=28,
                                 num_heads=16, num_kv_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6)


def _meta_state_dict(entries):
    return {e["name"]: torch.empty(e["shape"], device="meta") for e in entries}


def _real_vae():
    data = json.loads((KEYS / "diffusers_AutoencoderOobleck_acestep_keys.json").read_text())
    return configs.oobleck_from_diffusers(data["config"], "vae keys"), data["state_dict"]


@pytest.mark.parametrize("name", ["turbo", "base", "sft", "xl_turbo", "xl_base"])
def test_official_real_key_lists_map_completely(name):
    data = json.loads((KEYS / f"official_{name}_keys.json").read_text())
    dit, cond, tok, version = configs.acestep_from_official(data["config"], name)
    vae_cfg, _ = _real_vae()
    config = configs.assemble(REAL_QWEN3, vae_cfg, dit, cond, tok, configs.pipeline_config(version, 151643))
    sd = _meta_state_dict(data["state_dict"])
    produced = 0
    for component in ("dit", "condition", "audio_tokenizer", "audio_detokenizer"):
        out = convert_component(sd, "official", component, name)
        check_against_config(out, component, config, name)
        produced += len(out)
    assert produced == len(sd) == data["num_entries"]
    assert version == name
    assert cond.timbre_prepend_cls == name.startswith("xl")


@pytest.mark.parametrize("cls,component", [
    ("AceStepTransformer1DModel", "dit"),
    ("AceStepConditionEncoder", "condition"),
    ("AceStepAudioTokenizer", "audio_tokenizer"),
    ("AceStepAudioTokenDetokenizer", "audio_detokenizer"),
])
def test_diffusers_real_key_lists_map_completely(cls, component):
    data = json.loads((KEYS / f"diffusers_{cls}_keys.json").read_text())
    turbo = json.loads((KEYS / "official_turbo_keys.json").read_text())
    dit, cond, tok, version = configs.acestep_from_official(turbo["config"], "turbo")
    vae_cfg, _ = _real_vae()
    config = configs.assemble(REAL_QWEN3, vae_cfg, dit, cond, tok, configs.pipeline_config(version, 151643))
    sd = _meta_state_dict(data["state_dict"])
    out = convert_component(sd, "diffusers", component, cls)
    check_against_config(out, component, config, cls)
    # the silence latent is the only key routed elsewhere
    assert len(out) == len(sd) - (component == "condition")


def test_real_vae_key_list_folds_and_maps():
    vae_cfg, entries = _real_vae()
    sd = {e["name"]: torch.ones(e["shape"]) for e in entries}  # folding needs real (tiny enough) tensors
    out = convert_component(sd, "diffusers", "vae", "vae keys")
    config = _tiny_config()
    config = AceStepConfig(**{**config.__dict__, "vae": vae_cfg})
    check_against_config(out, "vae", config, "vae keys")
    assert not any(k.endswith(("weight_g", "weight_v")) for k in out)


def _tiny_config() -> AceStepConfig:
    return convert_checkpoint(str(OFFICIAL)).config


def test_unknown_source_config_key_is_rejected():
    cfg = json.loads((OFFICIAL / "acestep-v15-turbo" / "config.json").read_text())
    cfg["brand_new_knob"] = 3
    with pytest.raises(configs.SourceConfigError, match="brand_new_knob"):
        configs.acestep_from_official(cfg, "x/config.json")
    del cfg["brand_new_knob"], cfg["hidden_size"]
    with pytest.raises(configs.SourceConfigError, match="hidden_size"):
        configs.acestep_from_official(cfg, "x/config.json")


def test_official_fixture_converts_and_loads(tmp_path):
    conv = convert_checkpoint(str(OFFICIAL))  # the checkpoints/ folder
    conv2 = convert_checkpoint(str(OFFICIAL / "acestep-v15-turbo"))  # or the model folder inside it
    for c in COMPONENTS:
        assert conv.components[c].keys() == conv2.components[c].keys()
    assert conv.silence_latent.shape == (1, 1500, 64)
    dst = tmp_path / "ours"
    write_checkpoint(conv, str(dst))
    assert sorted(os.listdir(dst)) == sorted(
        ["config.json", "tokenizer.json", "silence_latent.safetensors"] + [c + ".safetensors" for c in COMPONENTS])
    assert load_config(dst) == conv.config
    loaded = load_checkpoint(dst)
    for c in COMPONENTS:
        sd = loaded.modules[c].state_dict()
        for k, v in conv.components[c].items():
            torch.testing.assert_close(sd[k], v, rtol=0, atol=0)
    # the official silence_latent.pt is [1, 64, T]; ours is time-major
    raw = torch.load(OFFICIAL / "acestep-v15-turbo" / "silence_latent.pt", weights_only=True)
    torch.testing.assert_close(loaded.silence_latent, raw.transpose(1, 2))


def test_dtype_option_and_no_overwrite(tmp_path):
    conv = convert_checkpoint(str(OFFICIAL))
    dst = tmp_path / "bf16"
    write_checkpoint(conv, str(dst), dtype="bf16")
    assert read_safetensors(dst / "dit.safetensors")["proj_in.weight"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="already exists"):
        write_checkpoint(conv, str(dst))


# --- bad checkpoints through the CLI: exit != 0, one line naming the file or key, no traceback, no DST ---

def _copy_official(tmp_path) -> Path:
    src = tmp_path / "checkpoints"
    shutil.copytree(OFFICIAL, src)
    for p in src.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return src


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "weights_convert", *map(str, args)], capture_output=True, text=True)


def _edit_model(src: Path, edit):
    from safetensors.torch import save_file

    path = src / "acestep-v15-turbo" / "model.safetensors"
    sd = read_safetensors(path)
    edit(sd)
    save_file(sd, str(path))


def _truncate(src):
    p = src / "acestep-v15-turbo" / "model.safetensors"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _pickle_instead(src):
    p = src / "acestep-v15-turbo" / "model.safetensors"
    torch.save({"x": torch.zeros(2)}, p)


def _header_too_long(src):
    p = src / "vae" / "diffusion_pytorch_model.safetensors"
    data = p.read_bytes()
    p.write_bytes(struct.pack("<Q", 10**9) + data[8:])


@pytest.mark.parametrize("case,breaker,expect", [
    ("truncated", _truncate, "model.safetensors"),
    ("pickle", _pickle_instead, "pickle"),
    ("header", _header_too_long, "diffusion_pytorch_model.safetensors"),
    ("empty", lambda s: (s / "acestep-v15-turbo" / "model.safetensors").write_bytes(b""), "empty"),
    ("missing key", lambda s: _edit_model(s, lambda sd: sd.pop("decoder.norm_out.weight")), "norm_out.weight"),
    ("unknown key", lambda s: _edit_model(s, lambda sd: sd.__setitem__("decoder.extra.weight", torch.zeros(1))),
     "decoder.extra.weight"),
    ("wrong shape", lambda s: _edit_model(s, lambda sd: sd.__setitem__("decoder.norm_out.weight", torch.zeros(7))),
     "norm_out.weight"),
    ("missing config", lambda s: (s / "vae" / "config.json").unlink(), "config.json"),
    ("missing silence", lambda s: (s / "acestep-v15-turbo" / "silence_latent.pt").unlink(), "silence_latent.pt"),
])
def test_bad_checkpoints_fail_cleanly(tmp_path, case, breaker, expect):
    src = _copy_official(tmp_path)
    breaker(src)
    dst = tmp_path / "out"
    r = _run_cli(src, dst)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and expect in lines[0], lines[0]
    assert not dst.exists()
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())


def test_cli_converts_and_refuses_overwrite(tmp_path):
    dst = tmp_path / "ours"
    r = _run_cli(OFFICIAL, dst, "--dtype", "fp32")
    assert r.returncode == 0, r.stderr
    assert (dst / "config.json").is_file()
    r = _run_cli(OFFICIAL, dst)
    assert r.returncode != 0 and "already exists" in r.stderr
    r = _run_cli(OFFICIAL, dst, "--force")
    assert r.returncode == 0, r.stderr


def test_wrong_variant_is_named(tmp_path):
    r = _run_cli(OFFICIAL, tmp_path / "x", "--variant", "xl-base")
    assert r.returncode != 0 and "xl-base" in r.stderr


def test_shape_check_names_the_key():
    conv = convert_checkpoint(str(OFFICIAL))
    bad = dict(conv.components["dit"])
    bad["proj_out.bias"] = torch.zeros(3)
    with pytest.raises(ConversionError, match="proj_out.bias"):
        check_against_config(bad, "dit", conv.config, "here")
    assert set(expected_shapes("dit", conv.config)) == set(conv.components["dit"])


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_interrupted_conversion_leaves_nothing(tmp_path, sig):
    """Stop the converter while it writes: no DST and no temporary folder are left behind."""
    import signal
    import time

    dst = tmp_path / "out"
    slow = ("import time, sys, acestep_core.checkpoint as c, acestep_core.convert.cli as m\n"
            "orig = c.write_safetensors\n"
            "def slow(*a, **k):\n    orig(*a, **k); print('writing', flush=True); time.sleep(30)\n"
            "c.write_safetensors = slow\n"
            f"sys.exit(m.main([{str(OFFICIAL)!r}, {str(dst)!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", slow], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "interrupted" in err
    time.sleep(0.1)
    assert not dst.exists() and list(tmp_path.iterdir()) == []
