"""`acestep parity --html` (against a tiny random diffusers pipeline) and `acestep parity --compare A.json B.json`.

1. The HTML file is self-contained (images embedded as data URIs, no link to fetch), names every stage of the
   report, embeds the error plots and the audio figures, and marks the cell that failed.
2. --compare lays two reports side by side in the terminal and in HTML; a file that is not a report is one
   line and exit 2.
"""

import json
import re

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from _tiny_diffusers import build  # noqa: E402
import acestep_parity.cli as cli  # noqa: E402
from acestep_parity import html_report  # noqa: E402
from acestep_parity.report import Report, StageResult, Thresholds  # noqa: E402


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """One repaint run written as JSON and HTML, and its JSON with one row made worse (a "B" report)."""
    tmp = tmp_path_factory.mktemp("html")
    folder = build(tmp, "turbo", responsive_vae=True)
    a, page = tmp / "a.json", tmp / "a.html"
    status = cli.main(["--checkpoint", str(folder), "--task", "repaint", "--duration", "0.4", "--steps", "2",
                       "--device", "cpu", "--json", str(a), "--html", str(page)])
    assert status == 0
    data = json.loads(a.read_text())
    worse = next(s for s in data["stages"] if s["stage"] == "final_latents" and s["view"] == "accumulated")
    worse.update(max_rel=3e-3, passed=False)
    data["passed"] = False
    b = tmp / "b.json"
    b.write_text(json.dumps(data))
    return a, b, page


def images(text: str) -> list[str]:
    return re.findall(r"src='(data:image/png;base64,[A-Za-z0-9+/=]+)'", text)


def test_html_names_every_stage_and_embeds_the_plots(reports):
    a, _, page = reports
    text, data = page.read_text(), json.loads(a.read_text())
    assert "<h1 class=pass>PASS: all" in text
    for s in data["stages"]:
        assert s["stage"] in text
    # stage errors, per-step errors, waveforms, log-mel spectrograms
    assert len(images(text)) == 4
    assert "http://" not in text and "https://" not in text and "<script" not in text and "<link" not in text
    for needle in ("acestep parity --checkpoint", data["fingerprint"], "seed", "torch", "SNR", "MR-STFT"):
        assert needle in text, needle


def test_failing_cell_is_marked():
    rows = [StageResult("token_ids", "direct", True, "identical", [1, 4], mismatches=0),
            StageResult("dit_velocity", "isolated", False, "err/std <= 0.0001", [1, 8, 64], max_abs=1.0,
                        max_rel=0.5, cosine=0.99, step=0, t=1.0),
            StageResult("decoded_audio", "accumulated", False, "SNR >= 35 dB", [1, 2, 4096], max_abs=0.1,
                        max_rel=0.01, cosine=0.999, snr_db=20.0, stft=0.1)]
    meta = dict(against="diffusers", reference_version="0.42.1", ours_version="0", compat="diffusers", task="x",
                steps=1, guidance_scale=1.0, shift=3.0, seed=0, latent_frames=8, seconds=0.32, dtype="fp32",
                device="cpu", source=None)
    wave = torch.randn(2, 4096, generator=torch.Generator().manual_seed(0))
    text = html_report.render(Report(meta, Thresholds(), rows, audio=(wave, 0.9 * wave, 48000)))
    assert "<h1 class=fail>FAIL: 2 of 3" in text and "first stage that differs on its own: dit_velocity[0]" in text
    marked = re.findall(r"<td class=bad>([^<]*)</td>", text)
    assert marked == ["5.00e-01", "20.0"]  # the err/std of the DiT row, the SNR of the audio row


def test_compare_side_by_side(reports, tmp_path, capsys):
    a, b, _ = reports
    page = tmp_path / "c.html"
    assert cli.main(["--compare", str(a), str(b), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert f"A: {a}: PASS" in out and f"B: {b}: FAIL" in out
    line = next(x for x in out.splitlines() if x.startswith("final_latents") and "accumulated" in x)
    assert "3.00e-03" in line and line.rstrip().endswith("ok / FAIL")
    text = page.read_text()
    assert str(a) in text and str(b) in text and len(images(text)) == 1 and "class=bad>FAIL" in text


def test_compare_rejects_what_is_not_a_report(reports, tmp_path, capsys):
    a, _, _ = reports
    junk = tmp_path / "junk.json"
    junk.write_text('{"stages": []}')
    page = tmp_path / "c.html"
    assert cli.main(["--compare", str(a), str(junk), "--html", str(page)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an `acestep parity --json` report" in err[0] and not page.exists()
