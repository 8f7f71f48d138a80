"""Hostile inputs: any valid argument combination gives finite audio of the promised shape, any invalid
one a ValueError/TypeError naming the argument (never an error from deep inside torch), plus corrupted
files and batch-position determinism."""

import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acestep_core import prompts
from acestep_core.pipeline import load_pipeline
from acestep_core.safetensors_io import CheckpointError
from conftest import CASES

FIX = Path(__file__).parent / "fixtures"
CKPT = FIX / "official_tiny_turbo" / "checkpoints"
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(CKPT)


valid_args = st.fixed_dictionaries({
    "prompt": st.text(max_size=40),
    "lyrics": st.text(max_size=60),
    "audio_duration": st.one_of(st.none(), st.floats(min_value=0.1, max_value=8.0)),
    "vocal_language": st.sampled_from(prompts.VOCAL_LANGUAGES),
    "bpm": st.one_of(st.none(), st.integers(min_value=1, max_value=300)),
    "keyscale": st.one_of(st.none(), st.sampled_from(["C major", "F# minor", "Bb major", "A minor"])),
    "timesignature": st.one_of(st.none(), st.sampled_from(prompts.TIME_SIGNATURES)),
    "num_inference_steps": st.integers(min_value=1, max_value=3),
    "shift": st.floats(min_value=1.0, max_value=5.0),
    "seed": st.integers(min_value=0, max_value=2**31),
})


@SETTINGS
@given(args=valid_args)
def test_valid_arguments_give_finite_audio(pipe, args):
    CASES["valid arguments"] += 1
    if args["audio_duration"] is None:
        args["audio_duration"] = 6.0  # the official 120 s fallback is valid but slow for a property test
    out = pipe(**args)
    frames = max(128, int(max(0.1, round(args["audio_duration"], 1)) * 48000) // 1920)
    assert out.audios.shape == (1, 2, frames * 1920)
    assert bool(torch.isfinite(out.audios).all()) and out.audios.abs().max() <= 1.0


# (argument, hostile value, text the message must contain)
hostile = st.one_of(
    st.tuples(st.just("audio_duration"), st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e9, "10", True])),
    st.tuples(st.just("vocal_language"), st.sampled_from(["english", "EN", "", "xx", None, 3])),
    st.tuples(st.just("bpm"), st.sampled_from(["fast", -5, 0, 12.5, float("nan"), "120bpm", [120]])),
    st.tuples(st.just("keyscale"), st.sampled_from(["H major", "C", "C dorian", 5, "major C"])),
    st.tuples(st.just("timesignature"), st.sampled_from(["4/4", "5", 7, "three"])),
    st.tuples(st.just("num_inference_steps"), st.sampled_from([0, -1, 2.5, 10**6, "8"])),
    st.tuples(st.just("shift"), st.sampled_from([0.0, -1.0, float("nan"), "3"])),
    st.tuples(st.just("guidance_scale"), st.sampled_from([-1.0, float("inf"), "7"])),
    st.tuples(st.just("seed"), st.sampled_from([-1, 1.5, "42", float("nan")])),
    st.tuples(st.just("task_type"), st.sampled_from(["karaoke", "", "TEXT2MUSIC"])),
    st.tuples(st.just("output_type"), st.sampled_from(["wav", "latents", None])),
    st.tuples(st.just("prompt"), st.sampled_from([3, b"bytes", ["a", 3]])),
    st.tuples(st.just("lyrics"), st.sampled_from([None, 4.0, "la " * 5000])),
    st.tuples(st.just("audio_cover_strength"), st.sampled_from([1.5, -0.1, float("nan")])),
    st.tuples(st.just("cfg_interval_start"), st.sampled_from([2.0, -1.0])),
    st.tuples(st.just("timesteps"), st.sampled_from([[], [1.5, 0.0], ["a"], [float("nan")]])),
    st.tuples(st.just("latents"), st.sampled_from([torch.zeros(1, 3, 64), torch.full((1, 128, 64), float("nan"))])),
    st.tuples(st.just("src_audio"), st.sampled_from([torch.zeros(3, 100), torch.full((2, 4000), float("nan")),
                                                     torch.zeros(2, 10), "song.wav"])),
    st.tuples(st.just("reference_audio"), st.sampled_from([torch.zeros(5), torch.ones(2, 4000, dtype=torch.int16)])),
    st.tuples(st.just("audio_codes"), st.sampled_from(["", "<|audio_code_64000|>", "<|audio_code_1|>junk", 5])),
)


@settings(SETTINGS, max_examples=150)
@given(case=hostile)
def test_invalid_arguments_name_the_argument(pipe, case):
    CASES["invalid arguments"] += 1
    name, value = case
    args = dict(prompt="pop", lyrics="[verse]\nla", audio_duration=6.0, num_inference_steps=1, seed=0,
                output_type="latent")
    args[name] = value
    if name == "src_audio":
        args["task_type"] = "cover"
    with pytest.raises((ValueError, TypeError)) as info:
        pipe(**args)
    message = str(info.value)
    assert name in message or name.replace("_", " ") in message, message
    assert "\n" not in message.strip()


def test_batch_position_does_not_matter(pipe):
    """With equal condition lengths, an item equals itself generated alone, at any batch position."""
    args = dict(lyrics="[verse]\nla la", audio_duration=6.0, num_inference_steps=2, output_type="latent")
    solo = pipe(prompt="same length A", seed=5, **args).latents
    for batch_prompts, seeds, position in ((["same length A", "same length B"], [5, 6], 0),
                                           (["same length B", "same length A"], [6, 5], 1)):
        out = pipe(prompt=batch_prompts, seed=seeds, **args).latents
        torch.testing.assert_close(out[position:position + 1], solo, atol=1e-5, rtol=0)


def test_same_seed_is_bit_identical(pipe):
    a = pipe(prompt="x", audio_duration=6.0, num_inference_steps=2, seed=11).audios
    b = pipe(prompt="x", audio_duration=6.0, num_inference_steps=2, seed=11).audios
    assert torch.equal(a, b)


def test_corrupted_our_layout_fails_with_one_line(tmp_path):
    from weights_convert.convert import convert_checkpoint, write_checkpoint

    dst = tmp_path / "ours"
    write_checkpoint(convert_checkpoint(str(CKPT)), str(dst))
    data = (dst / "dit.safetensors").read_bytes()
    (dst / "dit.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=re.escape(str(dst / "dit.safetensors"))) as info:
        load_pipeline(dst)
    assert "\n" not in str(info.value)


def test_symlink_loop_is_a_clear_error(tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    with pytest.raises(CheckpointError, match="loop"):
        load_pipeline(loop)
