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
    # below the 128-frame minimum the audio is trimmed to the requested duration
    assert out.audios.shape == (1, 2, min(frames * 1920, round(args["audio_duration"] * 48000)))
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
    from acestep_core.convert.convert import convert_checkpoint, write_checkpoint

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


# --- issue 13: lengths, limits, padding side, NaN, seeds, load consistency (one case per defect) ------------

@pytest.fixture(scope="module")
def demo_pipe(tmp_path_factory):
    """The demo model: unlike the official tiny fixture, its VAE encoder matches the DiT."""
    from acestep_core import demo

    return load_pipeline(demo.write_demo_checkpoint(str(tmp_path_factory.mktemp("demo") / "demo")))


def test_short_duration_is_trimmed_to_the_request(pipe):
    """The model always makes at least 128 frames (5.12 s); the audio is trimmed to the asked 2 s."""
    out = pipe(prompt="x", audio_duration=2.0, num_inference_steps=1, seed=0)
    assert out.audios.shape == (1, 2, 2 * 48000)
    assert out.latents.shape[1] == 128  # the latents keep the model's minimum
    np_out = pipe(prompt="x", audio_duration=2.0, num_inference_steps=1, seed=0, output_type="np").audios
    assert np_out.shape == (1, 2, 2 * 48000)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(task_type="repaint", repainting_start=0.0, repainting_end=1e6), "1200"),
    (dict(task_type="repaint", repainting_start=-5000.0, repainting_end=1.0), "1200"),
    (dict(task_type="repaint", repainting_start=1190.0, repainting_end=1300.0), "1200"),
])
def test_repaint_window_cannot_bypass_the_length_limit(demo_pipe, kwargs, needle):
    src = torch.zeros(2, 48000 * 2)
    with pytest.raises(ValueError, match=needle) as info:
        demo_pipe(prompt="x", src_audio=src, num_inference_steps=1, seed=0, **kwargs)
    assert "repainting" in str(info.value)


def test_audio_codes_cannot_bypass_the_length_limit(pipe):
    codes = "<|audio_code_1|>" * 10_000  # 2000 s
    with pytest.raises(ValueError, match="audio_codes.*1200"):
        pipe(prompt="x", audio_codes=codes, num_inference_steps=1, seed=0)


def test_diffusers_compat_follows_the_tokenizer_padding_side(tmp_path):
    """A right-padding tokenizer_config: compat='diffusers' pads on the right like diffusers does."""
    pytest.importorskip("diffusers")
    import json

    from diffusers import AceStepPipeline

    from _tiny_diffusers import build
    folder = build(tmp_path, "turbo")
    cfg_path = folder / "tokenizer" / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["padding_side"] = "right"
    cfg_path.write_text(json.dumps(cfg))
    theirs, ours = AceStepPipeline.from_pretrained(folder).to(torch.float32), load_pipeline(folder)
    assert ours.config.pipeline.padding_side == "right"
    latents = torch.randn(2, 50, 64, generator=torch.Generator().manual_seed(2))
    args = dict(prompt=["bright synth pop", "a slower and much longer caption about jazz"],
                lyrics=["[verse]\nhello", "[chorus]\nla la la la"], audio_duration=2.0, latents=latents,
                num_inference_steps=2)
    ref = theirs(output_type="latent", return_dict=False, **args)[0]
    out = ours(output_type="latent", compat="diffusers", **args).latents
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)


def _ours(tmp_path, edit=None):
    """Our layout converted from the tiny fixture; `edit(folder)` may then damage it."""
    from acestep_core.convert.convert import convert_checkpoint, write_checkpoint

    dst = tmp_path / "ours"
    write_checkpoint(convert_checkpoint(str(CKPT)), str(dst))
    if edit is not None:
        edit(dst)
    return dst


def _edit_config(section, key, value):
    import json

    def edit(folder):
        data = json.loads((folder / "config.json").read_text())
        node = data
        for part in section.split("."):
            node = node[part]
        node[key] = value
        (folder / "config.json").write_text(json.dumps(data))
    return edit


@pytest.mark.parametrize("section, key, value, needle", [
    ("text_encoder", "rms_norm_eps", float("nan"), "rms_norm_eps"),
    ("dit", "rope_theta", -1.0, "rope_theta"),
    ("dit", "hidden_size", -32, "hidden_size"),
    ("dit", "num_heads", {"a": 1}, "num_heads"),
    ("vae", "channel_multiples", [[1, 2]], "channel_multiples"),
    ("dit", "layer_types", ["full", "diagonal"], "layer_types"),
])
def test_bad_config_values_are_refused_at_load(tmp_path, section, key, value, needle):
    from acestep_core.config import ConfigError

    dst = _ours(tmp_path, _edit_config(section, key, value))
    with pytest.raises(ConfigError, match=needle) as info:
        load_pipeline(dst)
    assert "\n" not in str(info.value)


def test_sample_rate_that_is_not_25_hz_latents_is_refused(tmp_path):
    dst = _ours(tmp_path, _edit_config("vae", "sampling_rate", 44100))
    with pytest.raises(ValueError, match="44100"):
        load_pipeline(dst)


def _replace_tensor(folder, file, key, fn):
    from safetensors.torch import load_file, save_file

    path = folder / file
    tensors = load_file(path)
    tensors[key] = fn(tensors[key])
    save_file(tensors, path)


def test_non_finite_weights_are_refused_at_conversion(tmp_path):
    from safetensors.torch import load_file, save_file
    from acestep_core.convert.convert import convert_checkpoint

    root = tmp_path / "checkpoints"
    import shutil
    shutil.copytree(CKPT, root)
    model = root / "acestep-v15-turbo" / "model.safetensors"
    tensors = load_file(model)
    key = next(k for k in tensors if k.endswith("q_proj.weight"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, model)
    with pytest.raises(CheckpointError, match="non-finite") as info:
        convert_checkpoint(str(root))
    assert key in str(info.value)


def test_non_finite_weights_and_silence_are_refused_at_load(tmp_path):
    def poison_weight(folder):
        def fn(t):
            t = t.clone()
            t.view(-1)[0] = float("inf")
            return t
        _replace_tensor(folder, "dit.safetensors", _first_key(folder, "dit"), fn)

    with pytest.raises(CheckpointError, match="non-finite"):
        load_pipeline(_ours(tmp_path / "a", poison_weight))

    def poison_silence(folder):
        _replace_tensor(folder, "silence_latent.safetensors", "silence_latent",
                        lambda t: torch.full_like(t, float("nan")))

    with pytest.raises(CheckpointError, match="silence"):
        load_pipeline(_ours(tmp_path / "b", poison_silence))


def _first_key(folder, component):
    from safetensors import safe_open

    with safe_open(folder / f"{component}.safetensors", "pt") as f:
        return sorted(f.keys())[0]


def test_silence_latent_of_the_wrong_shape_is_one_line(tmp_path):
    def bad(folder):
        _replace_tensor(folder, "silence_latent.safetensors", "silence_latent", lambda t: t[..., :10].contiguous())

    with pytest.raises(CheckpointError, match="silence") as info:
        load_pipeline(_ours(tmp_path, bad))
    assert "\n" not in str(info.value)


def test_callback_returning_nan_latents_is_an_error(pipe):
    def cb(p, i, t, state):
        return {"latents": torch.full_like(state["latents"], float("nan"))}

    with pytest.raises(ValueError, match="callback_on_step_end.*non-finite"):
        pipe(prompt="x", audio_duration=6.0, num_inference_steps=2, seed=0, callback_on_step_end=cb)


def test_nan_from_the_model_is_named_before_decoding(pipe, monkeypatch):
    real = pipe.dit.forward

    def broken(*a, **k):
        return torch.full_like(real(*a, **k), float("nan"))

    monkeypatch.setattr(pipe.dit, "forward", broken)
    with pytest.raises(ValueError, match="non-finite latents"):
        pipe(prompt="x", audio_duration=6.0, num_inference_steps=2, seed=0)


def test_sde_sampler_follows_the_seed(pipe):
    args = dict(prompt="x", audio_duration=6.0, num_inference_steps=4, infer_method="sde", output_type="latent")
    a = pipe(seed=3, **args).latents
    torch.manual_seed(123)  # the global generator must not matter
    b = pipe(seed=3, **args).latents
    assert torch.equal(a, b)
    c = pipe(seed=4, **args).latents
    assert not torch.equal(a, c)


def test_invalid_utf8_text_names_the_argument(pipe):
    with pytest.raises(ValueError, match="prompt"):
        pipe(prompt="caf\udce9", audio_duration=6.0, num_inference_steps=1, seed=0)
    with pytest.raises(ValueError, match="lyrics"):
        pipe(prompt="x", lyrics="\ud800", audio_duration=6.0, num_inference_steps=1, seed=0)


@pytest.mark.parametrize("size", [16, 100, 128])
def test_vae_chunk_size_too_small_fails_before_sampling(pipe, monkeypatch, size):
    def no_sampling(*a, **k):
        raise AssertionError("sampling ran")

    monkeypatch.setattr("acestep_core.pipeline.generate_latents", no_sampling)
    with pytest.raises(ValueError, match="vae_chunk_size"):
        pipe(prompt="x", audio_duration=6.0, num_inference_steps=1, seed=0, vae_chunk_size=size)


def test_meta_device_is_refused(tmp_path):
    with pytest.raises(ValueError, match="meta"):
        load_pipeline(CKPT, device="meta")


def test_vae_encoder_width_mismatch_is_named_before_any_compute(pipe):
    """The official tiny fixture's VAE encodes 2-channel latents while its DiT takes 64: tasks that encode
    audio say so at once, naming both components (text2music, which only decodes, still runs)."""
    src = torch.zeros(2, 48000 * 6)
    for kwargs in (dict(task_type="repaint", src_audio=src), dict(task_type="cover", src_audio=src),
                   dict(reference_audio=src)):
        with pytest.raises(ValueError, match=r"vae.*dit|dit.*vae") as info:
            pipe(prompt="x", num_inference_steps=1, seed=0, **kwargs)
        assert "\n" not in str(info.value)


def test_cli_meta_device_is_one_line_status_2(tmp_path, capsys, monkeypatch):
    from acestep_core import cli

    monkeypatch.chdir(tmp_path)
    status = cli.main(["generate", "--device", "meta", "--out", str(tmp_path / "a.wav")])
    err = capsys.readouterr().err
    assert status == 2 and "meta" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.wav"))


def test_cli_duration_2_writes_2_seconds(tmp_path, capsys, monkeypatch):
    import soundfile as sf

    from acestep_core import cli

    monkeypatch.setenv("ACESTEP_CORE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "short.wav"
    status = cli.main(["generate", "--duration", "2", "--steps", "1", "--seed", "0", "--device", "cpu",
                       "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert sf.info(str(out)).frames == 2 * 48000

# === File and process IO: destinations, atomic swaps, bounded reads, safetensors headers, signals ===========
# (test_io_*: the converter's --force, interrupted writes, hostile files; see docs/guarantees.md)

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from acestep_core import audio_io, cli  # noqa: E402
from acestep_core.config import ConfigError, load_config  # noqa: E402
from acestep_core.safetensors_io import read_safetensors, read_state_dict  # noqa: E402
from acestep_core.text import TextTokenizer  # noqa: E402
import acestep_core.convert.cli as convert_main  # noqa: E402
from acestep_core.convert.convert import (  # noqa: E402
    ConversionError,
    check_against_config,
    convert_checkpoint,
    convert_component,
    write_checkpoint,
)
from acestep_core.convert.to_diffusers import write_diffusers  # noqa: E402


@pytest.fixture(scope="module")
def io_conv():
    return convert_checkpoint(str(CKPT))


@pytest.fixture(scope="module")
def io_cache(tmp_path_factory):
    """The CLI's demo model goes to a test cache, never ~/.cache."""
    return tmp_path_factory.mktemp("io-cache")


def _tree(root: Path) -> dict:
    """Every file under root (links not followed) -> its bytes: a snapshot to prove nothing was touched."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p)] = p.read_bytes()
        else:
            out[str(p)] = "dir"
    return out


def _convert_cli(*args):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = convert_main.main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


REPO = Path(__file__).parent.parent
# Subprocesses import this checkout, not whichever copy the environment has installed.
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _one_line(err: str) -> str:
    """The one error line (progress bars, redrawn with \r, may come before it), no traceback."""
    lines = [line.split("\r")[-1] for line in err.splitlines()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == [x for x in lines if x.strip()][-1] and "Traceback" not in err, err
    return errors[0]


def _dit_dtype(folder: Path):
    return read_safetensors(folder / "dit.safetensors")["proj_in.weight"].dtype


# --- 1. --force deletes only a folder this tool wrote; everything else is refused with exit 2 ---------------

def test_io_destination_refusals_touch_nothing(tmp_path, monkeypatch, io_conv):
    proj = tmp_path / "proj"
    src = proj / "checkpoints"
    shutil.copytree(CKPT, src)
    (proj / "notes.txt").write_text("unrelated work")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    a_file = tmp_path / "file.bin"
    a_file.write_bytes(b"data")
    (tmp_path / "link_to_src").symlink_to(src)
    (tmp_path / "alias").symlink_to(proj)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    (work / "song.wav").write_bytes(b"x")
    monkeypatch.chdir(work)
    snapshot = _tree(tmp_path)
    cases = [
        (src, src, "is the source"),                             # SRC SRC --force deleted the source
        (src, proj, "contains the source"),                      # DST=proj deleted proj/ with the source
        (src, src / "acestep-v15-turbo" / "out", "inside the source"),
        (src, tmp_path / "alias" / "checkpoints", "is the source"),  # the same folder through a symlink
        (src, ".", "current folder"),                            # DST=. deleted the working folder
        (src, home, "home folder"),
        (src, tmp_path, "above the current folder"),
        (src, foreign, "did not write"),
        (src, a_file, "is a file"),
        (src, tmp_path / "link_to_src", "symbolic link"),
    ]
    for s, d, expect in cases:
        rc, _, err = _convert_cli(s, d, "--force")
        line = _one_line(err)
        assert rc == 2 and expect in line, (d, line)
    assert _tree(tmp_path) == snapshot
    assert not list(tmp_path.glob(".*"))

    # A folder this tool wrote is replaced; with a stranger's file in it, it is not.
    from acestep_core.convert import destination

    ours = tmp_path / "ours"
    write_checkpoint(io_conv, str(ours))
    assert destination.written_by_us(str(ours)) == "ours"
    write_checkpoint(io_conv, str(ours), force=True, dtype="bf16")
    assert _dit_dtype(ours) == torch.bfloat16
    (ours / "my_notes.txt").write_text("mine")
    with pytest.raises(destination.DestinationError, match="did not write"):
        write_checkpoint(io_conv, str(ours), force=True)
    (ours / "my_notes.txt").unlink()
    # Same for a diffusers folder we wrote (recognised by its marker file), and not for one without it.
    diff = tmp_path / "diff"
    write_diffusers(io_conv, diff)
    assert destination.written_by_us(str(diff)) == "diffusers"
    write_diffusers(io_conv, diff, force=True)
    (diff / destination.MARKER).unlink()
    with pytest.raises(destination.DestinationError, match="did not write"):
        write_checkpoint(io_conv, str(diff), force=True)
    # The library refuses a Converted's own source folders too (the ones a conversion read).
    import dataclasses

    read_from = tmp_path / "read_from"
    (read_from / "vae").mkdir(parents=True)
    (read_from / "vae" / "config.json").write_text("{}")
    conv = dataclasses.replace(io_conv, inputs=(str(read_from),))
    for dst in (read_from, read_from / "vae", read_from / "new"):
        with pytest.raises(destination.DestinationError, match="source"):
            write_checkpoint(conv, str(dst), force=True)
    assert (read_from / "vae" / "config.json").read_text() == "{}"


# --- 2. an interruption at any step of the --force swap leaves a loadable checkpoint, and says which --------

@pytest.mark.parametrize("target", ["rename", "rmtree", "write"])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("when", ["before", "after"])
def test_io_force_swap_interrupted_at_every_step(tmp_path, monkeypatch, io_conv, target, k, when):
    dst = tmp_path / "dst"
    write_checkpoint(io_conv, str(dst))  # the old checkpoint: float32
    real = {"rename": os.rename, "rmtree": shutil.rmtree}
    calls = []

    def injected(real_fn):
        def fn(*args, **kwargs):
            calls.append(args[0])
            if len(calls) == k and when == "before":
                raise KeyboardInterrupt
            out = real_fn(*args, **kwargs)
            if len(calls) == k:
                raise KeyboardInterrupt  # as if the signal came right after the call returned
            return out
        return fn

    if target == "write":
        import acestep_core.checkpoint as writer  # the one writer of our layout

        monkeypatch.setattr(writer, "write_safetensors", injected(writer.write_safetensors))
    else:
        monkeypatch.setattr(os if target == "rename" else shutil, target, injected(real[target]))
    monkeypatch.setattr(convert_main, "convert_checkpoint", lambda *a: io_conv, raising=False)
    rc, out, err = _convert_cli(CKPT, dst, "--force", "--dtype", "bf16")
    monkeypatch.undo()
    # Whatever happened, dst is a complete checkpoint (old or new) and nothing else is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]
    assert load_config(dst) == io_conv.config
    dtype = _dit_dtype(dst)
    if rc == 0:
        assert dtype == torch.bfloat16 and "converted" in out
    else:
        line = _one_line(err)
        assert rc == 130 and dtype == torch.float32 and f"{dst} was left as it was" in line, line
    # The swap itself: interrupted before the new folder is renamed in -> old; after -> new.
    if target == "rename":
        assert rc == (0 if (k, when) in ((2, "after"), (3, "before"), (3, "after")) else 130)
    if target == "rmtree":  # the first rmtree is the old folder's, after the swap
        assert rc == 0


_CONVERT_PAUSED = textwrap.dedent("""
    import os, sys, time
    import acestep_core.convert.cli as m
    pause_at, real, calls = int(sys.argv.pop(1)), os.rename, []
    def rename(a, b):
        real(a, b)
        calls.append(b)
        if len(calls) == pause_at:
            print("RENAMED", flush=True)
            time.sleep(60)
    os.rename = rename
    sys.argv[0] = "weights_convert"
    sys.exit(m.main())
""")


@pytest.mark.parametrize("pause_at,status", [(1, 130)])  # (2, 0) passes too: the new one, exit 0 (slow)
def test_io_sigterm_during_force_swap(tmp_path, io_conv, pause_at, status):
    """A real SIGTERM between the two renames keeps the old checkpoint and says so."""
    dst = tmp_path / "dst"
    write_checkpoint(io_conv, str(dst))
    script = tmp_path / "paused.py"
    script.write_text(_CONVERT_PAUSED)
    proc = subprocess.Popen([sys.executable, str(script), str(pause_at), str(CKPT), str(dst), "--force",
                             "--dtype", "bf16"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=SUBPROCESS_ENV)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "RENAMED", proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "paused.py"]
    assert load_config(dst) == io_conv.config
    if status == 130:
        assert _dit_dtype(dst) == torch.float32 and f"{dst} was left as it was" in err.splitlines()[-1]
    else:
        assert _dit_dtype(dst) == torch.bfloat16 and "converted" in out


# --- 3 and 13. generate: an interrupted --batch names what it wrote; a signal after the last write is late ---

def _generate(argv, capsys):
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("k,when,written", [(1, "before", 0), (2, "after", 2), (3, "before", 2), (3, "after", 3)])
def test_io_interrupted_batch_names_the_files_written(tmp_path, monkeypatch, k, when, written):
    """An interruption during the k-th write of a --batch: the message lists exactly the files written (read
    from the disk, so a signal landing just after a rename counts that file); after the last one, success."""
    paths = [str(tmp_path / f"song_{i}.wav") for i in range(3)]
    for p in paths:
        Path(p).write_bytes(b"old song")
    real, calls = audio_io.write_audio, []

    def write(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == k and when == "before":
            raise KeyboardInterrupt
        out = real(*args, **kwargs)
        if len(calls) == k:
            raise KeyboardInterrupt  # the file is renamed in, then the signal lands
        return out

    monkeypatch.setattr(audio_io, "write_audio", write)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if written == 3:
            assert cli._write_outputs(paths, torch.zeros(3, 2, 960), 48000) == paths
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN  # the run has succeeded: late signals wait
            return
        with pytest.raises(cli.CliError) as info:
            cli._write_outputs(paths, torch.zeros(3, 2, 960), 48000)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    done = f"wrote {', '.join(paths[:written])}" if written else "no output was written"
    assert info.value.status == 130
    assert str(info.value) == f"interrupted; {done}; not written (left as they were): {', '.join(paths[written:])}"
    assert all(Path(p).read_bytes() == b"old song" for p in paths[written:])
    assert all(sf.info(p).frames == 960 for p in paths[:written])


_GENERATE_LATE = textwrap.dedent("""
    import atexit, sys, time
    from acestep_core import audio_io, cli
    real = audio_io.write_audio
    def write(*args, **kwargs):
        path = real(*args, **kwargs)
        print("WRITTEN", flush=True)
        time.sleep(30)  # a SIGTERM lands here: the file is already in place
        return path
    audio_io.write_audio = write
    def linger():
        print("EXITING", flush=True)
        time.sleep(1.5)  # and another one here, after main returned
    atexit.register(linger)
    sys.argv[0] = "acestep"
    sys.exit(cli.main())
""")


def test_io_sigterm_after_the_output_is_written_exits_0(tmp_path, io_cache):
    out = tmp_path / "song.wav"
    script = tmp_path / "late.py"
    script.write_text(_GENERATE_LATE)
    env = {**SUBPROCESS_ENV, "ACESTEP_CORE_CACHE": str(io_cache)}
    proc = subprocess.Popen([sys.executable, str(script), "generate", "--seed", "0", "--duration", "5.12",
                             "--device", "cpu", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    try:
        for expected in ("WRITTEN", "EXITING"):
            line = proc.stdout.readline()
            while line and line.strip() != expected:
                line = proc.stdout.readline()
            assert line.strip() == expected, proc.stderr.read()
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert sf.info(str(out)).frames == round(5.12 * 48000)


# --- 4. safetensors: decided by parsing the header, whatever its length's bytes -----------------------------

def _padded_safetensors(path: Path, header_len: int) -> None:
    data = torch.arange(4, dtype=torch.float32).numpy().tobytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    assert header_len >= len(header)
    path.write_bytes(struct.pack("<Q", header_len) + header + b" " * (header_len - len(header)) + data)


def test_io_every_header_length_low_byte_is_accepted(tmp_path):
    lengths = [256 + b for b in range(256)] + [0x4B50, 0x4B50 + 0x10000]  # 0x4B50 = "PK" little-endian
    for n in lengths:
        path = tmp_path / f"h{n}.safetensors"
        _padded_safetensors(path, n)
        assert torch.equal(read_safetensors(path)["w"], torch.arange(4.0)), hex(n)
    assert (tmp_path / f"h{0x180}.safetensors").read_bytes()[:1] == b"\x80"
    assert (tmp_path / f"h{0x4B50}.safetensors").read_bytes()[:2] == b"PK"
    # Real pickles and torch zips are still named as such.
    import pickle

    (tmp_path / "p.safetensors").write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))
    torch.save({"w": torch.zeros(2)}, tmp_path / "z.safetensors")
    for name in ("p", "z"):
        with pytest.raises(CheckpointError, match="pickle"):
            read_safetensors(tmp_path / f"{name}.safetensors")


def test_io_complex_weights_are_refused_naming_the_key(tmp_path, io_conv):
    save_file({"ok": torch.zeros(2), "bad.weight": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match=r"'bad.weight' is complex"):
        read_safetensors(tmp_path / "c.safetensors")
    dit = dict(io_conv.components["dit"])
    dit["norm_out.weight"] = dit["norm_out.weight"].to(torch.complex64)
    with pytest.raises(ConversionError, match=r"source key 'decoder.norm_out.weight' \(ours 'norm_out.weight'\) "
                                              r"has dtype torch.complex64"):
        check_against_config(dit, "dit", io_conv.config, "here", io_conv.origins["dit"], "official")


# --- 5. shard indexes stay inside their folder; every JSON/text read is bounded ------------------------------

def test_io_shard_index_cannot_leave_its_folder(tmp_path):
    outside = tmp_path / "x.safetensors"
    save_file({"w": torch.ones(2)}, outside)
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    save_file({"v": torch.ones(2)}, folder / "part1.safetensors")
    index = folder / "model.safetensors.index.json"
    for shard in ("../../x.safetensors", "/etc/passwd", str(outside), "sub/../../x.safetensors"):
        index.write_text(json.dumps({"weight_map": {"w": shard}}))
        with pytest.raises(CheckpointError, match="outside"):
            read_state_dict(folder, "model")
    # A shard that is a symlink out of the folder is the folder's own file (a Hugging Face cache snapshot).
    (folder / "part2.safetensors").symlink_to(outside)
    index.write_text(json.dumps({"weight_map": {"v": "part1.safetensors", "w": "part2.safetensors"}}))
    assert sorted(read_state_dict(folder, "model")) == ["v", "w"]
    index.write_text(json.dumps({"weight_map": {"v": "part1.safetensors", "u": "part1.safetensors"}}))
    with pytest.raises(CheckpointError, match="'u'"):
        read_state_dict(folder, "model")


def test_io_json_and_text_reads_are_bounded(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(folder)
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")  # a FIFO nobody writes to: opening it must not block
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(folder)
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(" " * (2 << 20))
    with pytest.raises(ConfigError, match="over the 1 MiB limit"):
        load_config(folder)
    (folder / "tokenizer.json").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="path.*not a regular file"):
        TextTokenizer(folder)
    index = folder / "model.safetensors.index.json"
    index.symlink_to("/dev/zero")
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_state_dict(folder, "model")
    from acestep_core.safetensors_io import read_text_bounded

    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe")
    with pytest.raises(ValueError, match=r"not valid UTF-8 text \(byte 0xff at offset 3\)"):
        read_text_bounded(tmp_path / "bad.txt", 100, "text file")


def test_io_cli_text_arguments(tmp_path, capsys, monkeypatch, io_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ACESTEP_CORE_CACHE", str(io_cache))
    big = tmp_path / "lyrics.txt"
    big.write_text("la " * 700_000)  # 2.1 MB: refused before reading, let alone tokenizing
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"[verse]\n\xff\xfe")
    cases = [
        (["--lyrics", f"@{big}"], "--lyrics", "over the 1 MiB limit"),
        (["--lyrics", "@/dev/zero"], "--lyrics", "not a regular file"),
        (["--audio-codes", f"@{bad}"], "--audio-codes", "not valid UTF-8"),
        (["--lyrics", f"@{bad}"], "--lyrics", "not valid UTF-8 text (byte 0xff at offset 8)"),
        (["--prompt", "pop " + b"\xff".decode("utf-8", "surrogateescape")], "--prompt", "not valid UTF-8"),
        (["--out", "x" * 300 + ".wav"], "--out", "over the 255-byte limit"),
        (["--out", "x" * 250 + ".wav", "--batch", "2"], "--out", "over the 255-byte limit"),  # + "_0"
    ]
    for argv, flag, expect in cases:
        status, _, err = _generate(["generate", *argv], capsys)
        line = _one_line(err)
        assert status == 2 and line.startswith(f"error: {flag}") and expect in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "lyrics.txt"]


# --- 11. one-line errors: empty tokenizer.json, names at the file system's limit, source keys ----------------

def test_io_empty_tokenizer_is_one_line(tmp_path):
    (tmp_path / "tokenizer.json").write_text("")
    with pytest.raises(ValueError, match="tokenizer file is empty"):
        TextTokenizer(tmp_path)
    src = tmp_path / "checkpoints"
    shutil.copytree(CKPT, src)
    (src / "Qwen3-Embedding-0.6B" / "tokenizer.json").write_text("  \n")
    rc, _, err = _convert_cli(src, tmp_path / "out")
    assert rc == 1 and "tokenizer file is empty" in _one_line(err)
    assert not (tmp_path / "out").exists()


def test_io_longest_output_name_is_written(tmp_path):
    name = "x" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 4) + ".wav"  # its temporary name would be too long
    path = audio_io.write_audio(tmp_path / name, torch.zeros(2, 960), 48000)
    assert os.path.basename(path) == name and [p.name for p in tmp_path.iterdir()] == [name]


def test_io_conversion_errors_name_the_source_key(io_conv):
    sd = read_state_dict(CKPT / "acestep-v15-turbo", "model")
    origins = {}
    dit = convert_component(sd, "official", "dit", "model.safetensors", origins)
    dit["layers.0.self_attn.q_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ConversionError, match=r"source key 'decoder.layers.0.self_attn.q_proj.weight' "
                                              r"\(ours 'layers.0.self_attn.q_proj.weight'\) has shape \(3, 3\)"):
        check_against_config(dit, "dit", io_conv.config, "here", origins, "official")
    del dit["proj_out.bias"]
    with pytest.raises(ConversionError, match=r"missing source key 'decoder.proj_out.1.bias' \(ours 'proj_out.bias'\)"):
        check_against_config(dit, "dit", io_conv.config, "here", origins, "official")
    vae = dict(io_conv.components["vae"])
    key = next(k for k in vae if k.endswith(".weight"))
    vae[key] = torch.zeros(1)
    with pytest.raises(ConversionError, match=re.escape(f"source key '{key}_g + {key}_v' (ours '{key}')")):
        check_against_config(vae, "vae", io_conv.config, "here", io_conv.origins["vae"], "official")


# --- 13. permissions follow the umask; truncated audio is an error -------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_io_converted_checkpoint_follows_the_umask(tmp_path, io_conv, umask):
    old = os.umask(umask)
    try:
        write_checkpoint(io_conv, str(tmp_path / "ours"))
        write_diffusers(io_conv, tmp_path / "diff")
    finally:
        os.umask(old)
    for root in (tmp_path / "ours", tmp_path / "diff"):
        for p in [root, *root.rglob("*")]:
            mode = p.stat().st_mode & 0o777
            assert mode == (0o777 if p.is_dir() else 0o666) & ~umask, (p, oct(mode))


def test_io_truncated_audio_is_refused(tmp_path):
    wave = np.linspace(-0.5, 0.5, 2 * 48000, dtype=np.float32).reshape(-1, 2)
    for name, subtype in (("f.wav", "FLOAT"), ("p.wav", "PCM_16"), ("c.flac", "PCM_24")):
        path = tmp_path / name
        sf.write(str(path), wave, 48000, subtype=subtype)
        assert audio_io.read_audio(path, 48000).shape == (2, 48000)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(ValueError, match=re.escape(str(path))) as info:
            audio_io.read_audio(path, 48000)
        assert "\n" not in str(info.value)
        if name.endswith(".wav"):
            assert "truncated: the header declares 48000 frames" in str(info.value)
