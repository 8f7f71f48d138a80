"""Our config.json: strict loading with one-line errors naming the key and the file."""

import json

import pytest

from acestep_core.config import AceStepConfig, ConfigError, Qwen3Config, from_dict, load_config, save_config
from acestep_core.demo import demo_config


def _write(tmp_path, data) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_round_trip(tmp_path):
    config = demo_config()
    save_config(config, tmp_path / "config.json")
    assert load_config(tmp_path) == config
    assert isinstance(load_config(tmp_path / "config.json"), AceStepConfig)


@pytest.mark.parametrize("edit,key", [
    (lambda d: d["dit"].__setitem__("hidden_sise", 32), "hidden_sise"),
    (lambda d: d["dit"].pop("patch_size"), "patch_size"),
    (lambda d: d["condition"]["encoder"].pop("head_dim"), "head_dim"),
    (lambda d: d.__setitem__("extra_section", {}), "extra_section"),
    (lambda d: d.pop("vae"), "vae"),
    (lambda d: d["dit"].__setitem__("num_heads", "4"), "num_heads"),
    (lambda d: d["vae"].__setitem__("downsampling_ratios", 1920), "downsampling_ratios"),
])
def test_unknown_missing_or_mistyped_key_is_named(tmp_path, edit, key):
    save_config(demo_config(), tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    edit(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert key in message and str(tmp_path) in message and "\n" not in message


def test_format_version_and_bad_json(tmp_path):
    save_config(demo_config(), tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    data["format_version"] = 99
    with pytest.raises(ConfigError, match="format_version"):
        load_config(_write(tmp_path, data))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing")


def test_from_dict_is_strict():
    fields = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                  head_dim=4, rope_theta=1e6, rms_norm_eps=1e-6)
    assert from_dict(Qwen3Config, fields).head_dim == 4
    with pytest.raises(ConfigError, match="'bogus'"):
        from_dict(Qwen3Config, {**fields, "bogus": 1}, "x.json")


@pytest.mark.parametrize("name", ["turbo", "base", "sft", "xl-turbo", "xl-base"])
def test_presets_equal_the_real_checkpoints_configs(name):
    """config.preset(name) = what the converter derives from the real checkpoint's config (key fixtures)."""
    import json
    from pathlib import Path

    from acestep_core.config import preset
    from acestep_core.convert import configs

    keys = Path(__file__).parent / "fixtures" / "keys"
    official = json.loads((keys / f"official_{name.replace('-', '_')}_keys.json").read_text())["config"]
    vae = json.loads((keys / "diffusers_AutoencoderOobleck_acestep_keys.json").read_text())["config"]
    dit, cond, tok, version = configs.acestep_from_official(dict(official), name)
    p = preset(name)
    assert (p.dit, p.condition, p.audio_tokenizer, p.pipeline.model_version) == (dit, cond, tok, version)
    assert p.vae == configs.oobleck_from_diffusers(dict(vae), "vae")
    assert p.text_encoder.vocab_size == 151669 and p.text_encoder.num_layers == 28
