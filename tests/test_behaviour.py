"""The official / diffusers differences as data: one Behaviour field per documented row, two presets."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from acestep_core import behaviour as b
from acestep_core.behaviour import DIFFUSERS, OFFICIAL, Behaviour

ROOT = Path(__file__).parent.parent


def test_every_field_names_its_row_and_the_row_exists():
    source = (ROOT / "acestep_core" / "behaviour.py").read_text()
    parity = (ROOT / "docs" / "parity.md").read_text()
    rows = set(re.findall(r"^\| (\d+) \|", parity, flags=re.M))
    for field in b.FIELDS:
        doc = re.search(rf"^    {field}: [^\n]*\n    \"\"\"(.*?)\"\"\"", source, flags=re.M | re.S)
        assert doc, f"{field} has no docstring"
        named = re.findall(r"Rows? (\d+)(?:[-/ ]+(\d+))?", doc.group(1))
        assert named, f"{field}'s docstring names no row of docs/parity.md"
        for first, second in named:
            assert first in rows and (not second or second in rows), (field, first, second)
        assert f"`{field}`" in parity, f"{field} is missing from the Behaviour table of docs/parity.md"


def test_presets_differ_in_every_field():
    assert [f for f in b.FIELDS if getattr(OFFICIAL, f) == getattr(DIFFUSERS, f)] == []


def test_compat_is_read_only_where_a_preset_is_picked():
    """No module tests which reference is followed: only behaviour.pick turns `compat` into a preset."""
    for path in (ROOT / "acestep_core").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"compat\s*(==|!=|in\b)", text), path
        assert "req.compat" not in text and ".compat ==" not in text, path


def test_pick_presets_and_custom():
    assert b.pick(None, None) is OFFICIAL and b.pick("diffusers", None) is DIFFUSERS
    mine = dataclasses.replace(OFFICIAL, trim_to_duration=False)
    assert b.pick(None, mine) is mine
    with pytest.raises(ValueError, match="not both"):
        b.pick("official", mine)
    with pytest.raises(ValueError, match="compat"):
        b.pick("upstream", None)
    with pytest.raises(TypeError, match="behaviour"):
        b.pick(None, {"trim_to_duration": False})
    with pytest.raises(ValueError, match="guidance_interval_on"):
        dataclasses.replace(OFFICIAL, guidance_interval_on="t2")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from acestep_core import demo as demo_model
    from acestep_core.pipeline import load_pipeline

    return load_pipeline(demo_model.write_demo_checkpoint(str(tmp_path_factory.mktemp("demo") / "demo")))


def test_one_field_switches_one_rule(demo):
    args = dict(prompt="x", audio_duration=2.0, num_inference_steps=1, seed=0)
    trimmed = demo(**args).audios
    untrimmed = demo(**args, behaviour=dataclasses.replace(OFFICIAL, trim_to_duration=False)).audios
    assert trimmed.shape[-1] == 2 * 48000 and untrimmed.shape[-1] == 128 * 1920
    torch.testing.assert_close(untrimmed[..., : trimmed.shape[-1]], trimmed)


def test_compat_name_equals_the_preset(demo):
    args = dict(prompt=["a", "a longer caption"], audio_duration=3.0, num_inference_steps=2, seed=[1, 2],
                output_type="latent")
    by_name = demo(**args, compat="diffusers").latents
    by_table = demo(**args, behaviour=DIFFUSERS).latents
    assert torch.equal(by_name, by_table)
    assert isinstance(DIFFUSERS, Behaviour)
