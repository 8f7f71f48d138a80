"""pipe(..., thinking=True): the 5 Hz LM plans the request (official default path), then the DiT runs the plan."""

from pathlib import Path

import pytest
import torch

from acestep_core import demo, load_planner
from acestep_core.pipeline import load_pipeline

LM = Path(__file__).parent / "fixtures" / "official_tiny_lm" / "checkpoints" / "acestep-5Hz-lm-tiny"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = demo.write_demo_checkpoint(str(tmp_path_factory.mktemp("demo") / "demo"))
    return load_pipeline(folder, planner=load_planner(LM, progress=False))


ARGS = dict(prompt="a calm piano ballad", lyrics="[verse]\nhello world", num_inference_steps=1, seed=7,
            output_type="latent")


def test_long_lm_caption_falls_back_to_the_given_one(pipe, caplog):
    """The tiny random LM writes a caption far over the caption encoder's limit: the given one is kept."""
    out = pipe(**ARGS, audio_duration=10.0, bpm=120, keyscale="C major", thinking=True)
    assert "LM's caption is over the caption token limit" in caplog.text
    assert len(out.plans[0].codes) == 50


def test_plan_fills_what_the_caller_left_empty_and_drives_the_dit(pipe):
    # use_cot_caption=False: phase 1 writes only the metadata (the random LM's caption would be 3500 tokens).
    out = pipe(**ARGS, audio_duration=10.0, bpm=120, thinking=True, use_cot_caption=False)
    (plan,) = out.plans
    assert plan.metadata["bpm"] == 120 and plan.cot_token_ids.numel() > 0  # given values win; phase 1 ran
    assert len(plan.codes) == 50 and out.latents.shape[1] == 250  # int(10 * 5) codes -> 250 frames
    # The same request written out by hand gives the same latents: thinking only fills arguments in.
    meta = plan.metadata
    ts = meta.get("timesignature")
    by_hand = pipe(**ARGS, audio_duration=10.0, bpm=120, keyscale=meta.get("keyscale"),
                   timesignature=None if ts is None else str(ts), vocal_language=meta.get("language", "unknown"),
                   audio_codes=plan.audio_codes)
    assert torch.equal(out.latents, by_hand.latents)


def test_same_seed_same_plan_and_song(pipe):
    metas = dict(audio_duration=10.0, bpm=90, keyscale="A minor", timesignature="3")  # phase 2 alone
    a = pipe(**ARGS, **metas, thinking=True)
    b = pipe(**ARGS, **metas, thinking=True)
    assert a.plans[0].audio_codes == b.plans[0].audio_codes and torch.equal(a.latents, b.latents)


def test_language_given_by_the_caller_is_kept(pipe):
    out = pipe(**ARGS, audio_duration=10.0, bpm=100, keyscale="C major", timesignature="4", vocal_language="fr",
               thinking=True)
    # bpm, key, time signature and duration all given: phase 1 is skipped, as official
    assert out.plans[0].cot_token_ids.numel() == 0


def test_thinking_without_a_planner_is_one_clear_error(tmp_path):
    plain = load_pipeline(demo.write_demo_checkpoint(str(tmp_path / "demo")))
    with pytest.raises(ValueError, match="planner"):
        plain(**ARGS, audio_duration=10.0, thinking=True)


def test_thinking_arguments_are_checked(pipe):
    with pytest.raises(TypeError, match="thinking"):
        pipe(**ARGS, thinking="yes")
    with pytest.raises(ValueError, match="lm_temperature"):
        pipe(**ARGS, thinking=True, lm_temperature=-1.0)


def test_cli_plan_and_generate_think(tmp_path, capsys, monkeypatch):
    import json

    from acestep_core import cli

    monkeypatch.setenv("ACESTEP_CORE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "plan.json"
    status = cli.main(["plan", "--lm", str(LM), "--prompt", "calm piano", "--lyrics", "[verse]\nla", "--duration", "10",
                       "--bpm", "90", "--key", "C major", "--time-signature", "4", "--seed", "3", "--device", "cpu",
                       "--json", str(out)])
    assert status == 0, capsys.readouterr().err
    record = json.loads(out.read_text())
    assert record["num_codes"] == 50 and record["metadata"]["bpm"] == 90
    song = tmp_path / "song.wav"
    status = cli.main(["generate", "--think", "--lm", str(LM), "--prompt", "calm piano", "--duration", "10",
                       "--bpm", "90", "--key", "C major", "--time-signature", "4", "--steps", "1", "--seed", "3",
                       "--device", "cpu", "--out", str(song)])
    text = capsys.readouterr()
    assert status == 0, text.err
    assert "50 audio codes" in text.out and song.exists()
    status = cli.main(["generate", "--think", "--prompt", "x", "--out", str(tmp_path / "b.wav"), "--device", "cpu"])
    assert status == 2 and "--lm" in capsys.readouterr().err
