"""`acestep parity --against official`: ours against the official ACE-Step 1.5 code on the official tiny fixtures.

The official code needs its own environment (transformers 4.57.3, ...; docs/parity-report.md shows how to make
it). These tests run it when ACESTEP_OFFICIAL_SRC names a folder holding the official `acestep/` package, with
ACESTEP_OFFICIAL_PYTHON (default: this interpreter) and ACESTEP_OFFICIAL_PYTHONPATH (prepended to PYTHONPATH,
e.g. a `pip install --target` folder); otherwise they are skipped. The bad-input tests need no such environment.

1. text2music, repaint (injection and crossfade), cover (FSQ context, cover noise, DCW) on the guided base
   model: every stage within the fp32 thresholds.
2. A perturbed DiT weight in OUR pipeline fails from the DiT on; a different repaint strength in ours fails
   only the sampler rows (the official update rule fed our velocities), not the DiT rows.
3. Bad input: no official package, a Python that cannot import it, an unknown variant, a checkpoint in
   another layout: one line, exit 2, no report written.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

import acestep_parity.cli as cli
import acestep_parity.official as official
from acestep_parity.case import ParityCase, stand_in_latents, stand_in_source
from acestep_parity.report import Thresholds

FIX = Path(__file__).parent / "fixtures"
TURBO = FIX / "official_tiny_turbo" / "checkpoints"
SRC = os.environ.get("ACESTEP_OFFICIAL_SRC")
PYTHON = os.environ.get("ACESTEP_OFFICIAL_PYTHON", sys.executable)
PYTHONPATH = os.environ.get("ACESTEP_OFFICIAL_PYTHONPATH", "")
needs_official = pytest.mark.skipif(
    not SRC, reason="the official ACE-Step 1.5 environment is not set up: set ACESTEP_OFFICIAL_SRC to a clone of "
                    "ace-step/ACE-Step-1.5 and ACESTEP_OFFICIAL_PYTHON / ACESTEP_OFFICIAL_PYTHONPATH to an "
                    "interpreter / --target folder that imports it (docs/parity-report.md)")
OFFICIAL_ARGS = ["--against", "official", "--official-src", SRC or "", "--official-python", PYTHON,
                 "--official-pythonpath", PYTHONPATH, "--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """An official checkpoints/ folder with the tiny turbo and base models, vae/ and Qwen3-Embedding-0.6B/."""
    root = tmp_path_factory.mktemp("official") / "checkpoints"
    shutil.copytree(TURBO, root)
    shutil.copytree(FIX / "official_tiny_samplers" / "checkpoints" / "acestep-v15-base", root / "acestep-v15-base")
    return root


@pytest.fixture(scope="module")
def env():
    paths = tuple(p for p in PYTHONPATH.split(os.pathsep) if p)
    return official.OfficialEnv(SRC, PYTHON, paths)


@pytest.fixture(scope="module")
def probe(env):
    return env.probe()  # set up but unusable: an error here, not a skip


def run(checkpoints, env, probe, variant, case):
    model_dir, version = official.official_checkpoint(str(checkpoints), variant, probe["variants"])
    pipe = cli._load_ours(model_dir, "cpu", torch.float32)
    return official.compare_official(pipe, env, case, model_dir, version, probe=probe, thresholds=Thresholds())


def source_case(task, **kw):
    # The tiny VAE's encoder yields 2 channels: the DiT gets stand-in latents on both sides (as the CLI does).
    return ParityCase(task=task, src_audio=stand_in_source(6.0, 48000, 1920), src_latents=stand_in_latents(150, 64),
                      **kw)


def failing(report):
    return {(s.stage, s.view) for s in report.stages if not s.passed}


@needs_official
def test_text2music_cli_json_and_html(checkpoints, tmp_path, capsys):
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    status = cli.main(["--checkpoint", str(checkpoints), "--variant", "turbo", "--duration", "6", "--steps", "2",
                       "--json", str(out), "--html", str(page)] + OFFICIAL_ARGS)
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    assert "vs official" in captured.out and "PASS: all" in captured.out
    data = json.loads(out.read_text())
    assert data["against"] == "official" and data["compat"] == "official" and data["passed"] is True
    assert data["fingerprint"].startswith("sha256:") and data["command"].startswith("acestep parity ")
    assert data["versions"]["official transformers"].startswith("4.57")
    stages = {(s["stage"], s["view"]) for s in data["stages"]}
    assert {("token_ids", "direct"), ("text_encoder", "isolated"), ("condition", "accumulated"),
            ("context", "direct"), ("dit_velocity", "isolated"), ("sampler_step", "isolated"),
            ("final_latents", "isolated"), ("decoded_audio", "accumulated")} <= stages
    text = page.read_text()
    assert all(s["stage"] in text for s in data["stages"]) and text.count("data:image/png;base64,") >= 3


@needs_official
def test_repaint_injection_and_crossfade(checkpoints, env, probe):
    report = run(checkpoints, env, probe, "turbo", source_case("repaint", steps=4))
    assert report.passed, report.table()
    notes = [s.note for s in report.stages if s.stage == "sampler_step" and s.view == "isolated"]
    assert notes[0].endswith("repaint injection") and notes[-1].endswith("repaint crossfade")
    assert {s.stage for s in report.stages} >= {"vae_encode", "context", "sampler_step"}


@needs_official
def test_guided_cover_with_noise_and_dcw(checkpoints, env, probe):
    if probe.get("dcw_missing"):
        pytest.skip(f"the official environment has no pytorch_wavelets ({probe['dcw_missing']})")
    report = run(checkpoints, env, probe, "base", source_case("cover", steps=4, cover_noise_strength=0.3, dcw=True))
    assert report.passed, report.table()
    assert report.meta["guidance_scale"] == 7.0
    assert [s.view for s in report.stages if s.stage == "cover_noise"] == ["isolated", "accumulated"]
    assert next(s for s in report.stages if s.stage == "dit_velocity").shape[0] == 2  # cond + null halves


@needs_official
def test_a_different_dit_or_sampler_in_ours_is_located(checkpoints, env, probe, monkeypatch):
    load = cli._load_ours

    def perturbed(*args):
        pipe = load(*args)
        w = pipe.dit.layers[0].mlp.up_proj.weight
        w.data += 0.5 * w.std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(0))
        return pipe

    monkeypatch.setattr(cli, "_load_ours", perturbed)
    report = run(checkpoints, env, probe, "turbo", ParityCase(duration=6, steps=2))
    # (The tiny official VAE's decoder hardly depends on its latents: decoded_audio may pass either way.)
    assert {stage for stage, _ in failing(report)} - {"decoded_audio"} == {"dit_velocity", "sampler_step",
                                                                           "final_latents"}
    assert report.first_own_failure().stage == "dit_velocity"
    monkeypatch.undo()

    # Ours repaints with another strength: its velocities still match (isolated DiT rows pass), its updates do not.
    run_ours = official.run_ours
    monkeypatch.setattr(official, "run_ours", lambda pipe, request, *a, **k: run_ours(
        pipe, dict(request, repaint_strength=0.9), *a, **k))
    report = run(checkpoints, env, probe, "turbo", source_case("repaint", steps=2))
    assert ("sampler_step", "isolated") in failing(report)
    assert not any(s.stage == "dit_velocity" and s.view == "isolated" and not s.passed for s in report.stages)


@needs_official
def test_unknown_variant_or_layout_is_one_line_exit_2(checkpoints, tmp_path, capsys):
    odd = tmp_path / "checkpoints"
    shutil.copytree(checkpoints, odd, ignore=shutil.ignore_patterns("acestep-v15-base"))
    cfg = odd / "acestep-v15-turbo" / "config.json"
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), model_version="turbo_v9")))
    out = tmp_path / "r.json"
    assert cli.main(["--checkpoint", str(odd), "--json", str(out)] + OFFICIAL_ARGS) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not know the variant 'turbo_v9'" in err[0] and not out.exists()
    ours = tmp_path / "ours"
    from acestep_core.convert.convert import convert_checkpoint, write_checkpoint

    write_checkpoint(convert_checkpoint(str(TURBO)), str(ours))
    assert cli.main(["--checkpoint", str(ours), "--json", str(out)] + OFFICIAL_ARGS) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the official layout" in err[0] and not out.exists()


# --- bad input that needs no official environment ----------------------------------------------------------

def _bad(argv, tmp_path, capsys):
    out, page = tmp_path / "r.json", tmp_path / "r.html"
    status = cli.main(["--checkpoint", str(TURBO), "--against", "official", "--device", "cpu", "--json", str(out),
                       "--html", str(page)] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not out.exists() and not page.exists()
    return err[0]


def test_official_src_without_the_package(tmp_path, capsys):
    line = _bad(["--official-src", str(tmp_path)], tmp_path, capsys)
    assert f"--official-src {tmp_path}: no official `acestep` package" in line and "ACE-Step-1.5" in line


def test_a_python_that_cannot_import_it(tmp_path, capsys):
    fake = tmp_path / "src"
    for sub in ("acestep/models", "acestep/core/generation/handler"):
        (fake / sub).mkdir(parents=True)
    for sub in ("acestep", "acestep/models", "acestep/core", "acestep/core/generation"):
        (fake / sub / "__init__.py").write_text("")
    line = _bad(["--official-src", str(fake), "--official-python", sys.executable], tmp_path, capsys)
    assert "cannot import the official code" in line and "docs/parity-report.md" in line
    line = _bad(["--official-src", str(fake), "--official-python", str(tmp_path / "no-python")], tmp_path, capsys)
    assert f"--official-python {tmp_path / 'no-python'}" in line


def test_official_only_options_need_against_official(capsys):
    assert cli.main(["--checkpoint", str(TURBO), "--dcw"]) == 2
    assert "need --against official" in capsys.readouterr().err
