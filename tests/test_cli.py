"""The `acestep generate` command, audio IO (atomic, checked writes) and Hub ids (offline, from a fake cache)."""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import acestep_core
from acestep_core import audio_io, cli, hub
from acestep_core.pipeline import AceStepPipeline
from acestep_core.safetensors_io import CheckpointError

FIX = Path(__file__).parent / "fixtures"
OFFICIAL = FIX / "official_tiny_turbo" / "checkpoints"
SHORT = ["--duration", "5.12"]  # the official minimum length (128 latent frames): the fastest runs


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("acestep-cache")


@pytest.fixture(autouse=True)
def _cache(cache_root, monkeypatch):
    # The demo model and linked Hub folders go to a test cache, never the user's ~/.cache.
    monkeypatch.setenv("ACESTEP_CORE_CACHE", str(cache_root))


def run(argv, capsys):
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def check_song(path, seconds):
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, round(seconds * 48000))
    data, _ = sf.read(str(path), dtype="float32")
    assert np.isfinite(data).all() and np.abs(data).max() <= 1.0 and np.abs(data).max() > 0.1


def one_error_line(err):
    """The error is one line, the last one (notices such as the demo's may come before it), no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], err
    assert "Traceback" not in err
    return lines[-1]


@pytest.fixture(scope="module")
def demo_song(tmp_path_factory, cache_root):
    """The README's command (no checkpoint, default duration) on the CPU, run once -> (path, stdout, stderr)."""
    out = tmp_path_factory.mktemp("demo") / "song.wav"
    stdout, stderr = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        mp.setenv("ACESTEP_CORE_CACHE", str(cache_root))
        status = cli.main(["generate", "--prompt", "synth pop", "--seed", "3", "--device", "cpu", "--out", str(out)])
    assert status == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue()


# --- generate -------------------------------------------------------------------------------------------------

def test_demo_without_checkpoint_writes_a_valid_wav(demo_song):
    path, out, err = demo_song
    check_song(path, cli.DEFAULT_SECONDS)
    assert sf.info(str(path)).subtype == "FLOAT"
    assert cli.DEMO_NOTICE in err  # said clearly, where the file went, and the time per stage
    assert "sampling" in err  # the progress bar
    assert f"wrote {path}" in out
    assert "timings: load" in out and "dit" in out and "vae_decode" in out
    assert not [p for p in path.parent.iterdir() if p.name != "song.wav"]  # no temporary file left


def test_same_seed_gives_identical_bytes_across_processes(demo_song, tmp_path, cache_root):
    out = tmp_path / "song.wav"
    env = {**os.environ, "ACESTEP_CORE_CACHE": str(cache_root)}
    proc = subprocess.run([sys.executable, "-m", "acestep_core", "generate", "--prompt", "synth pop", "--seed", "3",
                           "--device", "cpu", "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == demo_song[0].read_bytes()


def test_batch_writes_numbered_files_with_distinct_seeds(tmp_path, capsys):
    argv = ["generate", "--seed", "1", "--batch", "2", "--out", str(tmp_path / "s.wav"), *SHORT]
    status, out, err = run(argv, capsys)
    assert status == 0, err
    a, b = tmp_path / "s_0.wav", tmp_path / "s_1.wav"
    check_song(a, 5.12)
    check_song(b, 5.12)
    assert a.read_bytes() != b.read_bytes()
    assert not (tmp_path / "s.wav").exists()


def test_lyrics_and_codes_from_files(tmp_path, capsys, monkeypatch):
    seen = {}
    real_call = AceStepPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(AceStepPipeline, "__call__", spy)
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("[verse]\nhello é world\n\n", encoding="utf-8")
    status, _, err = run(["generate", "--lyrics", f"@{lyrics}", "--seed", "0", "--out", str(tmp_path / "a.wav"),
                          *SHORT], capsys)
    assert status == 0, err
    assert seen["lyrics"] == "[verse]\nhello é world"  # trailing blank lines dropped
    assert seen["progress"] is True
    status, _, err = run(["generate", "--lyrics", f"@{tmp_path / 'missing.txt'}"], capsys)
    assert status == 2 and "missing.txt" in one_error_line(err)


def test_official_fixture_checkpoint_to_flac(tmp_path, capsys):
    out = tmp_path / "fixture.flac"
    status, stdout, err = run(["generate", "--checkpoint", str(OFFICIAL), "--prompt", "piano", "--bpm", "90",
                               "--key", "C major", "--time-signature", "4", "--seed", "0", "--out", str(out),
                               *SHORT], capsys)
    assert status == 0, err
    assert cli.DEMO_NOTICE not in err
    check_song(out, 5.12)
    assert sf.info(str(out)).subtype == "PCM_24"
    assert "24-bit FLAC" in stdout


@pytest.mark.parametrize("argv", [
    ["generate", "--steps", "many"],
    ["generate", "--task", "remix"],
    ["generate", "--repaint", "1"],
    ["generate", "--out", "song.mp3"],
    ["generate", "--out", "/no/such/folder/song.wav"],
    ["generate", "--batch", "0"],
    ["generate", "--duration", "-3"],
    ["generate", "--variant", "base"],
    ["generate", "--task", "cover", "--src-audio", "/no/such/file.wav"],
    ["generate", "--device", "cuda:99"],
    ["generate", "--language", "klingon"],  # rejected by the pipeline's argument check: still status 2
    ["generate", "--time-signature", "5"],
    ["generate", "--task", "repaint"],  # needs --src-audio
    [],
])
def test_bad_arguments_print_one_line_and_exit_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = run(argv, capsys)
    assert status == 2
    one_error_line(err)
    assert not list(tmp_path.glob("*.wav"))


def test_bad_checkpoint_exits_1(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, err = run(["generate", "--checkpoint", str(empty), "--out", str(tmp_path / "x.wav")], capsys)
    assert status == 1
    assert "not an ACE-Step checkpoint" in one_error_line(err)


def test_input_audio_must_be_48k_stereo_or_mono(tmp_path, capsys):
    wrong_rate = tmp_path / "cd.wav"
    sf.write(str(wrong_rate), np.zeros((44100, 2), np.float32), 44100)
    status, _, err = run(["generate", "--task", "cover", "--src-audio", str(wrong_rate)], capsys)
    assert status == 2
    line = one_error_line(err)
    assert str(wrong_rate) in line and "44100" in line and "48000" in line and "resample" in line

    mono = tmp_path / "mono.wav"
    sf.write(str(mono), np.linspace(-0.5, 0.5, 4800, dtype=np.float32), 48000)
    wave = audio_io.read_audio(mono, 48000)
    assert wave.shape == (2, 4800) and wave.dtype == torch.float32 and torch.equal(wave[0], wave[1])
    surround = tmp_path / "surround.wav"
    sf.write(str(surround), np.zeros((4800, 3), np.float32), 48000)
    with pytest.raises(ValueError, match="3 channels"):
        audio_io.read_audio(surround, 48000)


# --- atomic output ------------------------------------------------------------------------------------------

def test_write_audio_leaves_nothing_on_error(tmp_path, monkeypatch):
    dest = tmp_path / "song.wav"
    good = torch.linspace(-0.5, 0.5, 960).expand(2, -1)
    with pytest.raises(ValueError, match="NaN"):
        audio_io.write_audio(dest, torch.full((2, 960), float("nan")), 48000)
    with pytest.raises(ValueError, match="exceeds"):
        audio_io.write_audio(dest, good * 3, 48000)
    assert list(tmp_path.iterdir()) == []

    dest.write_bytes(b"previous song")

    def broken_check(path, *args):
        raise OSError(f"{path}: simulated bad read-back")

    monkeypatch.setattr(audio_io, "_check_written", broken_check)
    with pytest.raises(OSError, match="simulated"):
        audio_io.write_audio(dest, good, 48000)
    monkeypatch.undo()

    def interrupted(f, *args):
        f.write(b"RIFF....half a header")
        raise KeyboardInterrupt

    monkeypatch.setattr(audio_io, "_encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        audio_io.write_audio(dest, good, 48000)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["song.wav"] and dest.read_bytes() == b"previous song"

    audio_io.write_audio(dest, good, 48000)  # and a good write replaces it, bit for bit
    assert torch.equal(audio_io.read_audio(dest, 48000), good)


_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from acestep_core import audio_io, cli
    real = audio_io._encode
    def slow(f, *args):
        real(f, *args)
        f.flush()
        print("TEMP WRITTEN", flush=True)
        time.sleep(120)
    audio_io._encode = slow
    sys.exit(cli.main(sys.argv[1:]))
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_leaves_no_partial_output(sig, tmp_path, cache_root):
    """Kill the CLI while its output file is half done: the destination keeps its previous content."""
    out = tmp_path / "song.wav"
    out.write_bytes(b"previous song")
    script = tmp_path / "slow_writer.py"
    script.write_text(_SLOW_WRITER)
    env = {**os.environ, "ACESTEP_CORE_CACHE": str(cache_root)}
    proc = subprocess.Popen([sys.executable, str(script), "generate", "--seed", "0", "--out", str(out), *SHORT],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "TEMP WRITTEN", proc.stderr.read() if not line else line
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert out.read_bytes() == b"previous song"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and leftovers == []  # cleaned up on the way out
        assert one_error_line(err.split("\r")[-1]).startswith("error: interrupted")
    else:
        assert proc.returncode == -signal.SIGKILL
        assert all(name.startswith(".song.wav.") for name in leftovers)  # hidden, never under the output name


def test_console_script_and_module_help(tmp_path):
    scripts = Path(sys.executable).parent
    for cmd in ([sys.executable, "-m", "acestep_core", "generate", "--help"], [str(scripts / "acestep"), "--help"]):
        if not Path(cmd[0]).exists():
            pytest.skip("console script not installed (pip install -e .)")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "generate" in proc.stdout


# --- Hugging Face Hub ids, offline -----------------------------------------------------------------------------

def _fake_repo(cache: Path, repo: str, files_from: dict[str, Path], revision="0" * 39 + "1") -> Path:
    """A repository in the Hub cache layout: models--owner--name/{refs/main, snapshots/<rev>/...}."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / revision
    for name, src in files_from.items():
        target = snapshot / name if name else snapshot
        shutil.copytree(src, target, dirs_exist_ok=True)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both at import time; it may already be imported by another test.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_id_resolves_from_the_cache_and_loads(offline_hub, tmp_path, monkeypatch):
    snapshot = _fake_repo(offline_hub, "acme/tiny-ace", {
        "": OFFICIAL,  # an official checkpoints/ root, like ACE-Step/Ace-Step1.5
    })
    assert hub.resolve_checkpoint("acme/tiny-ace") == str(snapshot)
    assert hub.resolve_checkpoint("acme/tiny-ace@main", variant="turbo") == str(snapshot)
    pipe = acestep_core.load_pipeline("acme/tiny-ace")
    assert isinstance(pipe, AceStepPipeline) and pipe.config.pipeline.model_version == "turbo"

    # A single-model repository gets the main repository's VAE and text encoder beside it, through links.
    _fake_repo(offline_hub, hub.MAIN_REPO, {"vae": OFFICIAL / "vae",
                                            "Qwen3-Embedding-0.6B": OFFICIAL / "Qwen3-Embedding-0.6B"})
    _fake_repo(offline_hub, "acme/acestep-v15-mine", {"": OFFICIAL / "acestep-v15-turbo"})
    linked = hub.resolve_checkpoint("acme/acestep-v15-mine")
    assert sorted(os.listdir(linked)) == ["Qwen3-Embedding-0.6B", "acestep-v15-mine", "vae"]
    assert acestep_core.load_pipeline("acme/acestep-v15-mine").config.pipeline.model_version == "turbo"

    with pytest.raises(CheckpointError, match="acme/absent") as info:
        hub.resolve_checkpoint("acme/absent")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="variant 'base'.*ACE-Step/acestep-v15-base"):
        hub.resolve_checkpoint("acme/tiny-ace", variant="base")

    # An existing local folder is never taken for a Hub id.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme" / "tiny-ace").mkdir(parents=True)
    assert hub.resolve_checkpoint("acme/tiny-ace") == "acme/tiny-ace"


def test_hub_ids_are_recognised():
    assert hub.parse_repo_id("ACE-Step/Ace-Step1.5") == ("ACE-Step/Ace-Step1.5", None)
    assert hub.parse_repo_id("ACE-Step/acestep-v15-xl-turbo-diffusers@v1.0") == (
        "ACE-Step/acestep-v15-xl-turbo-diffusers", "v1.0")
    for text in ("checkpoints", "./a/b", "/abs/path", "a/b/c", "../x", "a/.."):
        assert hub.parse_repo_id(text) is None, text


def test_hub_downloads_only_the_files_the_loader_reads(tmp_path, monkeypatch):
    """A fake `snapshot_download` applies allow_patterns to local "remote" repositories, as the Hub does."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import filter_repo_objects

    from acestep_core.demo import demo_checkpoint
    from acestep_core.convert.to_diffusers import write_diffusers

    remotes = {"ACE-Step/Ace-Step1.5": tmp_path / "remote-main", "acme/ours": Path(demo_checkpoint()),
               "acme/diffusers": tmp_path / "remote-diffusers", "acme/acestep-v15-solo": OFFICIAL / "acestep-v15-turbo"}
    shutil.copytree(OFFICIAL, remotes["ACE-Step/Ace-Step1.5"])
    write_diffusers(OFFICIAL, remotes["acme/diffusers"])
    # Files a loader never reads: a language model, model code, a scheduler, half-precision copies.
    extras = {"ACE-Step/Ace-Step1.5": ["acestep-5Hz-lm-1.7B/model.safetensors", "acestep-5Hz-lm-1.7B/config.json",
                                       "acestep-v15-turbo/modeling_acestep_v15_turbo.py", "README.md"],
              "acme/diffusers": ["scheduler/scheduler_config.json", "vae/diffusion_pytorch_model.fp16.safetensors"]}
    for repo, names in extras.items():
        for name in names:
            (remotes[repo] / name).parent.mkdir(parents=True, exist_ok=True)
            (remotes[repo] / name).write_text("{}")
    fetched: dict[str, set] = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        remote = remotes[repo_id]
        files = [p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file()]
        snapshot = tmp_path / "hf" / repo_id.replace("/", "--")
        for name in filter_repo_objects(files, allow_patterns=allow_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(remote / name, snapshot / name)
            fetched.setdefault(repo_id, set()).add(name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    for repo in ("ACE-Step/Ace-Step1.5", "acme/ours", "acme/diffusers", "acme/acestep-v15-solo"):
        pipe = acestep_core.load_pipeline(repo)
        assert pipe.sample_rate == 48000, repo
    assert fetched["ACE-Step/Ace-Step1.5"] & {n for names in extras.values() for n in names} == {
        "acestep-5Hz-lm-1.7B/config.json"}  # the configs are probed; no LM weights, code or README
    assert not fetched["acme/diffusers"] & set(extras["acme/diffusers"])
