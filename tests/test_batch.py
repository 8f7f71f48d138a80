"""`acestep batch`: requests checked before loading, batching that leaves results unchanged, the manifest,
failures, resume, and one process vs torchrun over two CPU ranks (gloo), byte for byte."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from acestep_core import batch, batch_manifest, batch_requests
from acestep_core.config import load_config
from acestep_core.demo import write_demo_checkpoint
from acestep_core.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
SONG = {"audio_duration": 2, "num_inference_steps": 1}  # the official minimum length is 5.12 s: 2 s is trimmed
SEVEN = [  # grouped with --batch-size 2: [4, 5], [cover], [jazz, pop], [rock], [steps2]
    {"id": "pop", "prompt": "synth pop", "seed": 1, **SONG},
    {"id": "rock", "prompt": "rock, with a caption much longer than the others", "lyrics": "[verse]\nla la", **SONG},
    {"id": "jazz", "prompt": "jazz", "vocal_language": "fr", **SONG},
    {"prompt": "ambient", "audio_duration": 3, "num_inference_steps": 1, "compat": "diffusers"},
    {"prompt": "folk", "audio_duration": 3, "num_inference_steps": 1, "compat": "diffusers", "seed": 9},
    {"id": "steps2", "prompt": "metal", "audio_duration": 2, "num_inference_steps": 2},
    {"id": "cover", "task_type": "cover", "audio_codes": "@codes.txt", "num_inference_steps": 1},
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_checkpoint(str(tmp_path_factory.mktemp("batch") / "demo"))


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    folder = tmp_path_factory.mktemp("requests")
    (folder / "codes.txt").write_text("".join(f"<|audio_code_{(i * 7919) % 64000}|>" for i in range(10)))
    return write_requests(folder / "seven.jsonl", SEVEN)


def write_requests(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def run(argv, capsys):
    status = batch.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def manifest(out):
    return [json.loads(line) for line in (Path(out) / "manifest.jsonl").read_text().splitlines()]


def without_timings(records):
    return [{k: v for k, v in r.items() if k != "timings"} for r in records]


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded")


# --- checking and planning: no model ---------------------------------------------------------------------------

def test_every_bad_line_is_reported_before_any_model_loads(demo, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(batch, "load_pipeline", no_model)
    bad = write_requests(tmp_path / "bad.jsonl", [
        {"id": "a", "prompt": "fine", **SONG},
        {"prompt": "x", "foo": 1, "bar": 2},  # 2: unknown keys, both named
        {"prompt": "x", "num_inference_steps": 0},  # 3: an invalid value, found by validate_request
        "not json",  # 4
        "",  # 5: blank lines are skipped
        {"id": "a"},  # 6: a repeated id
        {"prompt": ["one", "two"]},  # 7: one song per line
        {"id": "../x"},  # 8: ids name files
        {"latents": [0.0]},  # 9: not in a requests file
        {"task_type": "repaint"},  # 10: needs src_audio
    ])
    for extra in (["--check"], ["--out", tmp_path / "out"]):
        status, out, err = run(["--checkpoint", demo, "--requests", bad, *extra], capsys)
        assert status == 2
        reported = [int(line.split(":")[1]) for line in err.splitlines() if line.startswith(f"{bad}:")]
        assert reported == [2, 3, 4, 6, 7, 8, 9, 10], err
        assert "'foo', 'bar'" in err and "num_inference_steps" in err and "already used on line 1" in err
        assert err.splitlines()[-1] == f"error: 8 bad line(s) in {bad}; nothing was run"
    assert not (tmp_path / "out").exists()


def test_check_accepts_the_seven_requests(demo, seven, capsys, monkeypatch):
    monkeypatch.setattr(batch, "load_pipeline", no_model)
    status, out, err = run(["--checkpoint", demo, "--requests", seven, "--check", "--batch-size", "2"], capsys)
    assert status == 0, err
    assert "7 requests OK, 5 batch(es) of at most 2" in out


def test_batches_do_not_depend_on_the_ranks_and_seeds_on_the_id(demo, seven):
    config = load_config(demo)
    jobs, bad, _ = batch_requests.check_file(config, str(seven), seed_base=0)
    assert not bad
    batches = batch_requests.make_batches(jobs, 2)
    assert [[j.id for j in b] for b in batches] == [["4", "5"], ["cover"], ["jazz", "pop"], ["rock"], ["steps2"]]
    costs = [sum(j.cost for j in b) for b in batches]
    for world in (1, 2, 3, 8):
        shares = batch_requests.assign(costs, world)
        assert sorted(i for share in shares for i in share) == list(range(len(batches)))
    seeds = {j.id: j.kwargs["seed"] for j in jobs}
    assert seeds["pop"] == 1 and seeds["5"] == 9
    assert seeds["rock"] == batch_requests.derive_seed(0, "rock") != batch_requests.derive_seed(1, "rock")
    again, _, _ = batch_requests.check_file(config, str(seven), seed_base=0)
    assert [j.request for j in again] == [j.request for j in jobs]  # every default resolved, the same each time
    assert jobs[0].request["task_type"] == "text2music" and jobs[0].request["guidance_scale"] == 1.0
    assert jobs[6].request["task_type"] == "cover" and jobs[6].files["audio_codes"] == str(seven.parent / "codes.txt")


def test_batching_changes_results_only_by_rounding(demo):
    """Per-item seeds make an item's noise its own; masking the condition padding removes the only other
    thing a batch changes. What is left is float rounding (kernels pick other blockings for other shapes)."""
    pipe = load_pipeline(demo)
    prompts, lyrics = ["a", "synth pop with a much longer caption"], ["", "[verse]\nla la la la"]
    kw = dict(audio_duration=2.0, num_inference_steps=2, output_type="latent")
    solo = [pipe(prompt=p, lyrics=l, seed=s, **kw).audios[0] for p, l, s in zip(prompts, lyrics, (3, 4))]
    masked = pipe(prompt=prompts, lyrics=lyrics, seed=[3, 4], mask_condition_padding=True, **kw).audios
    plain = pipe(prompt=prompts, lyrics=lyrics, seed=[3, 4], mask_condition_padding=False, **kw).audios
    scale = solo[0].abs().max()
    assert (masked[0] - solo[0]).abs().max() < 1e-5 * scale and (masked[1] - solo[1]).abs().max() < 1e-5 * scale
    assert (plain[0] - solo[0]).abs().max() > 1e-2 * scale  # the short item sees the padding when unmasked
    alone = pipe(prompt=prompts[0], lyrics=lyrics[0], seed=3, mask_condition_padding=True, **kw).audios[0]
    assert torch.equal(alone, solo[0])  # a request alone has no padding: the batch default changes nothing


# --- in one process ----------------------------------------------------------------------------------------------

def test_a_bad_request_fails_alone_and_a_rerun_resumes(demo, tmp_path, capsys, monkeypatch):
    quick = {"audio_duration": 2, "num_inference_steps": 1, "compat": "diffusers"}
    requests = write_requests(tmp_path / "r.jsonl", [
        {"id": "one", "prompt": "one", **quick},
        {"id": "bad", "task_type": "cover", "src_audio": "missing.wav", **quick},
        {"id": "two", "prompt": "two", **quick},
    ])
    out = tmp_path / "out"
    argv = ["--checkpoint", demo, "--requests", requests, "--out", out, "--batch-size", "2", "--device", "cpu"]
    status, stdout, err = run(argv, capsys)
    assert status == 1, err
    assert "missing.wav: file not found" in err and "1 failed" in stdout
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["id"], f["line"]) for f in failures] == [("bad", 2)] and "file not found" in failures[0]["error"]
    records = manifest(out)
    assert [r["id"] for r in records] == ["one", "two"]
    for r in records:
        data, rate = sf.read(str(out / r["output"]), dtype="float32", always_2d=True)
        assert batch_manifest.samples_sha256(torch.from_numpy(data.T.copy())) == r["sha256"]
        assert (rate, r["seconds"], r["bytes"]) == (48000, 2.0, os.path.getsize(out / r["output"]))
        assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["checkpoint"].startswith("sha256:")
    assert not list(out.glob(".acestep-batch/*.jsonl"))  # merged and removed

    sf.write(str(tmp_path / "missing.wav"), np.random.default_rng(0).uniform(-0.5, 0.5, (96000, 2)), 48000,
             subtype="FLOAT")
    status, stdout, err = run(argv, capsys)
    assert status == 0, err
    assert "1 songs" in stdout and "2 skipped" in stdout
    assert (out / "failures.jsonl").read_text() == ""
    assert [r["id"] for r in manifest(out)] == ["one", "bad", "two"]
    assert without_timings(manifest(out))[::2] == without_timings(records)

    monkeypatch.setattr(batch, "load_pipeline", no_model)  # everything done: nothing is loaded
    status, stdout, err = run(argv, capsys)
    assert status == 0 and "3 skipped" in stdout
    with pytest.raises(AssertionError, match="the model was loaded"):
        batch.main([str(a) for a in argv] + ["--force"])  # --force redoes them: the model is needed again


# --- subprocesses: torchrun, kill and resume (slow) ----------------------------------------------------------------

def env(tmp_path):
    # One thread per process everywhere (torchrun's own default per rank): CPU kernels split their work by
    # the thread count, so equal bytes need equal counts (docs/scale.md).
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ACESTEP_CORE_CACHE": str(tmp_path)}


def batch_argv(demo, requests, out):
    return ["-m", "acestep_core", "batch", "--checkpoint", demo, "--requests", str(requests), "--out", str(out),
            "--batch-size", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def one_process(demo, seven, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "out"
    proc = subprocess.run([sys.executable, *batch_argv(demo, seven, out)], env=env(out.parent), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "7 songs" in proc.stdout and "0 failed" in proc.stdout
    return out


def files(out):
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.wav"))}


def test_torchrun_two_cpu_ranks_match_one_process_byte_for_byte(one_process, demo, seven, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *batch_argv(demo, seven, out)]
    proc = subprocess.run(cmd, env=env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "over 2 rank(s)" in proc.stderr and "7 songs" in proc.stdout
    assert {r["timings"]["rank"] for r in manifest(out)} == {0, 1}
    assert len(files(out)) == 7 and files(out) == files(one_process)
    assert without_timings(manifest(out)) == without_timings(manifest(one_process))


def test_killed_run_keeps_what_it_finished_and_resumes_to_the_same_bytes(one_process, demo, seven, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, *batch_argv(demo, seven, out)]
    proc = subprocess.Popen(cmd, env=env(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = out / ".acestep-batch" / "manifest-rank0.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and len(part.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    kept = manifest(out)
    assert 2 <= len(kept) < 7
    assert sorted(r["output"] for r in kept) == sorted(files(out))  # every finished song, nothing else
    assert not [p for p in out.rglob("*") if p.name.endswith(".partial")]

    proc = subprocess.run(cmd, env=env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(kept)} skipped" in proc.stdout
    assert files(out) == files(one_process)
    assert without_timings(manifest(out)) == without_timings(manifest(one_process))
