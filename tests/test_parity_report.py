"""`acestep parity` (acestep_parity/) against a tiny random diffusers AceStepPipeline.

1. Every stage is within threshold for text2music, repaint, cover (source audio and codes) and a guided base model.
2. A perturbed weight in OUR pipeline makes exactly the later stages fail: in both views after a DiT weight,
   and only in the accumulated view after a text-encoder weight (the isolated view feeds diffusers our output).
3. The JSON schema, the exit statuses, the one-line messages for a missing reference.
"""

import json
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from _tiny_diffusers import build  # noqa: E402
import acestep_parity.cli as cli  # noqa: E402
import acestep_parity.engine as parity  # noqa: E402
import acestep_parity.report as parity_report  # noqa: E402

CODES = "".join(f"<|audio_code_{c}|>" for c in (5, 63999, 12000, 777))
SOURCE = parity.stand_in_source(0.4, 48000, 1920)  # 10 latent frames: the VAE encoder is the slow part here
STAGE_KEYS = {"stage", "view", "passed", "criterion", "shape", "max_abs", "max_rel", "cosine", "snr_db", "stft",
              "mismatches", "step", "t", "note"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build(tmp_path_factory.mktemp("parity"), "turbo", responsive_vae=True)


@pytest.fixture(scope="module")
def ref(folder):
    return cli._load_reference(folder, "cpu", torch.float32)


def ours(folder):
    return cli._load_ours(folder, "cpu", torch.float32)


def rows(report, stage, view=None):
    found = [s for s in report.stages if s.stage == stage and (view is None or s.view == view)]
    assert found, (stage, view)
    return found


def check(report, passing, failing):
    """Every row of each (stage, view) in `passing` passes, every row in `failing` fails, and that is all rows."""
    keys = {(s.stage, s.view) for s in report.stages}
    assert keys == set(passing) | set(failing), keys ^ (set(passing) | set(failing))
    for stage, view in passing:
        assert all(s.passed for s in rows(report, stage, view)), (stage, view, report.table())
    for stage, view in failing:
        assert not any(s.passed for s in rows(report, stage, view)), (stage, view, report.table())


BEFORE_DIT = [("token_ids", "direct"), ("text_encoder", "isolated"), ("text_encoder", "accumulated"),
              ("lyric_embeddings", "isolated"), ("lyric_embeddings", "accumulated"), ("condition", "isolated"),
              ("condition", "accumulated"), ("context", "direct"), ("schedule", "direct")]
AFTER = [(s, v) for s in ("dit_velocity", "final_latents", "decoded_audio") for v in ("isolated", "accumulated")]
MIRROR = [("reference_mirror", "reference")]


@pytest.mark.parametrize("case", [
    parity.ParityCase(task="text2music", duration=2.0, steps=4),
    parity.ParityCase(task="repaint", src_audio=SOURCE, steps=3, repaint_window=(0.12, 0.28)),
    parity.ParityCase(task="cover", src_audio=SOURCE, steps=3),
    parity.ParityCase(task="cover", audio_codes=CODES, steps=3),
], ids=["text2music", "repaint", "cover-audio", "cover-codes"])
def test_every_stage_within_threshold(folder, ref, case):
    report = parity.compare(ours(folder), ref, case)
    assert report.passed, report.table()
    assert len(rows(report, "dit_velocity", "isolated")) == case.steps
    if case.src_audio is not None:
        # The source reaches the context through the VAE: one direct row, then both views of the context.
        assert [s.view for s in rows(report, "vae_encode")] == ["direct"]
        assert [s.view for s in rows(report, "context")] == ["isolated", "accumulated"]
    else:
        assert [s.view for s in report.stages if s.stage == "vae_encode"] == []
    assert rows(report, "token_ids")[0].mismatches == 0
    assert all(s.max_rel < 1e-4 for s in report.stages if s.max_rel is not None and s.stage != "decoded_audio")
    assert all(s.snr_db > 60 for s in rows(report, "decoded_audio"))


def test_guided_base_model(tmp_path):
    base = build(tmp_path, "base")
    report = parity.compare(ours(base), cli._load_reference(base, "cpu", torch.float32),
                            parity.ParityCase(duration=1.0, steps=3))
    assert report.passed, report.table()
    assert report.meta["guidance_scale"] == 7.0
    # Conditional and unconditional halves in one DiT batch, compared whole.
    assert rows(report, "dit_velocity", "isolated")[0].shape[0] == 2


def test_bf16_is_judged_by_cosine(tmp_path):
    # The default build: the responsive random decoder (20-odd variance-keeping convolutions, unbounded Snake)
    # is ill-conditioned in bf16, where ours and diffusers each land about 10 dB from their own fp32 audio.
    folder = build(tmp_path, "turbo")
    ref16 = cli._load_reference(folder, "cpu", torch.bfloat16)
    report = parity.compare(cli._load_ours(folder, "cpu", torch.bfloat16), ref16,
                            parity.ParityCase(duration=1.0, steps=2))
    assert report.passed, report.table()
    assert report.meta["dtype"] == "bf16"
    assert rows(report, "final_latents")[0].criterion == "cosine >= 0.999"
    assert rows(report, "decoded_audio")[0].criterion == "SNR >= 35 dB"
    # Two pipelines computing in different precisions are not compared.
    with pytest.raises(ValueError, match="compute_dtype"):
        parity.compare(ours(folder), ref16, parity.ParityCase(duration=1.0, steps=2))


def _perturb(weight: torch.Tensor, seed: int = 1) -> None:
    weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed)))


def test_perturbed_dit_weight_fails_from_the_dit_on(folder, ref):
    pipe = ours(folder)
    _perturb(pipe.dit.layers[1].mlp.down_proj.weight)
    report = parity.compare(pipe, ref, parity.ParityCase(duration=1.0, steps=3))
    # The decoded audio still agrees in isolation: diffusers' VAE on OUR latents gives our audio.
    passing = BEFORE_DIT + [("decoded_audio", "isolated")] + MIRROR
    check(report, passing, [k for k in AFTER if k != ("decoded_audio", "isolated")])
    first = report.first_own_failure()
    assert (first.stage, first.view, first.step) == ("dit_velocity", "isolated", 0)
    assert "first stage that differs on its own: dit_velocity[0]" in report.table()


def test_perturbed_text_encoder_fails_only_accumulated_downstream(folder, ref):
    pipe = ours(folder)
    _perturb(pipe.text_encoder.layers[1].mlp.down_proj.weight)
    report = parity.compare(pipe, ref, parity.ParityCase(duration=1.0, steps=3))
    # Fed our text states, diffusers' condition encoder, DiT and VAE all agree with ours: only the text
    # encoder differs on its own, and every later stage differs only in the accumulated view.
    failing = [("text_encoder", "isolated"), ("text_encoder", "accumulated"), ("condition", "accumulated")]
    failing += [(s, "accumulated") for s in ("dit_velocity", "final_latents", "decoded_audio")]
    passing = [k for k in BEFORE_DIT + AFTER + MIRROR if k not in failing]
    check(report, passing, failing)
    assert report.first_own_failure().stage == "text_encoder"


def test_perturbed_vae_decoder_fails_only_the_audio(folder, ref):
    pipe = ours(folder)
    _perturb(pipe.vae.decoder.conv1.weight, seed=2)  # the decoder's input convolution; the encoder is untouched
    report = parity.compare(pipe, ref, parity.ParityCase(duration=1.0, steps=2))
    failing = [("decoded_audio", "isolated"), ("decoded_audio", "accumulated")]
    check(report, [k for k in BEFORE_DIT + AFTER + MIRROR if k not in failing], failing)
    assert all(s.snr_db < 35 and s.criterion == "SNR >= 35 dB" for s in rows(report, "decoded_audio"))


# --- the command line ----------------------------------------------------------------------------------------

ARGS = ["--device", "cpu", "--duration", "1", "--steps", "2"]


def test_json_schema_and_conversion_of_other_layouts(folder, tmp_path, capsys):
    from acestep_core.convert.convert import convert_checkpoint, write_checkpoint

    mine = tmp_path / "ours"
    write_checkpoint(convert_checkpoint(str(folder)), str(mine))  # our layout: parity converts it back for both
    out = tmp_path / "report.json"
    status = cli.main(["--checkpoint", str(mine), "--json", str(out), "--task", "repaint", "--duration", "0.4",
                          "--device", "cpu", "--steps", "2"])
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    assert 'compat="diffusers"' in captured.out and "docs/parity.md" in captured.out
    assert "PASS: all" in captured.out and "stand-in signal" in captured.err
    data = json.loads(out.read_text())
    assert data["schema"] == "acestep-parity/1" and data["passed"] is True
    assert data["converted_to_diffusers"] is True and data["against"] == "diffusers"
    assert data["thresholds"] == {"max_rel": 1e-4, "min_cosine": 0.999, "min_snr_db": 35.0}
    for key in ("reference_version", "ours_version", "compat", "task", "steps", "guidance_scale", "shift", "seed",
                "latent_frames", "seconds", "dtype", "device", "source", "checkpoint"):
        assert key in data, key
    assert (data["task"], data["dtype"], data["source"], data["latent_frames"]) == ("repaint", "fp32", "audio", 10)
    assert all(set(s) == STAGE_KEYS for s in data["stages"])
    velocity = [s for s in data["stages"] if s["stage"] == "dit_velocity"]
    assert [(s["step"], s["view"]) for s in velocity] == [(0, "isolated"), (0, "accumulated"),
                                                          (1, "isolated"), (1, "accumulated")]
    audio = [s for s in data["stages"] if s["stage"] == "decoded_audio"]
    assert all(s["snr_db"] is not None and s["stft"] is not None for s in audio)


def test_exit_status_1_past_thresholds(folder, tmp_path, monkeypatch, capsys):
    load = cli._load_ours

    def perturbed(*args):
        pipe = load(*args)
        _perturb(pipe.dit.layers[0].mlp.up_proj.weight)
        return pipe

    monkeypatch.setattr(cli, "_load_ours", perturbed)
    out = tmp_path / "r.json"
    assert cli.main(["--checkpoint", str(folder), "--json", str(out)] + ARGS) == 1
    text = capsys.readouterr().out
    assert "FAIL:" in text and "first stage that differs on its own: dit_velocity[0]" in text
    data = json.loads(out.read_text())
    assert data["passed"] is False and data["converted_to_diffusers"] is False
    assert {s["stage"] for s in data["stages"] if not s["passed"]} == {"dit_velocity", "final_latents",
                                                                       "decoded_audio"}


def test_thresholds_are_options(folder, capsys):
    # An impossible SNR demand fails only the audio rows.
    assert cli.main(["--checkpoint", str(folder), "--min-snr", "1000"] + ARGS) == 1
    fails = [line for line in capsys.readouterr().out.splitlines() if "FAIL (" in line]
    assert len(fails) == 2 and all(line.startswith("decoded_audio") for line in fails)


def test_missing_reference_is_one_line_exit_2(folder, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    assert cli.main(["--checkpoint", str(folder)] + ARGS) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and 'pip install "acestep-core[parity]"' in err[0]


def test_against_official_needs_the_official_source(folder, capsys):
    assert cli.main(["--checkpoint", str(folder), "--against", "official"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--official-src DIR" in err[0] and "ace-step/ACE-Step-1.5" in err[0]


@pytest.mark.parametrize("argv, message", [
    (["--task", "nope"], "invalid choice"),
    (["--task", "repaint", "--audio-codes", CODES], "repaint needs src_audio"),
    (["--task", "cover", "--src-audio", "/nonexistent.wav"], "--src-audio"),
])
def test_bad_arguments_exit_2(folder, capsys, argv, message):
    assert cli.main(["--checkpoint", str(folder), "--device", "cpu"] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def test_audio_metrics():
    x = torch.randn(1, 2, 4096, generator=torch.Generator().manual_seed(0))
    assert parity_report.snr_db(x, x) == parity_report.MAX_SNR_DB and parity_report.stft_distance(x, x) == 0.0
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    noisy = x + noise * (x.norm() / noise.norm()) * 10 ** (-30 / 20)  # error energy 30 dB below the signal
    assert parity_report.snr_db(noisy, x) == pytest.approx(30.0, abs=1e-6)
    assert 0 < parity_report.stft_distance(noisy, x) < parity_report.stft_distance(noise, x)
    assert parity_report.stft_distance(x[..., :256], x[..., :256]) is None  # shorter than every FFT size
    m = parity_report.tensor_metrics(2 * x, x)
    assert m["cosine"] == pytest.approx(1.0)
    assert m["max_rel"] == pytest.approx((x.abs().max() / x.std()).item(), rel=1e-5)
