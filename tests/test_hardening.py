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
    from weights_convert.convert import convert_checkpoint, write_checkpoint

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
    from weights_convert.convert import convert_checkpoint

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
