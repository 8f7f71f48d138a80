"""`acestep parity --html FILE`: one self-contained HTML file (images embedded, no network access).

Top to bottom: the verdict; what was run (the exact command, versions, checkpoint fingerprint, seed); the stage
table with every metric, the cell that failed marked; a log-scale plot of the relative error per stage and
one per sampler step (isolated and accumulated); for audio, both waveforms overlaid, both log-mel
spectrograms and their difference, with the SNR and MR-STFT figures.
"""

from __future__ import annotations

import html
import importlib.util

from .report import Report

MISSING = 'matplotlib is not installed (needed by --html); install it with: pip install "acestep-core[parity]"'
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
h1.pass { color: #1a7f37; } h1.fail { color: #c0392b; }
table { border-collapse: collapse; font-size: 13px; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #f0f0f0; } td.l { text-align: left; }
tr.fail td { background: #fdf0ef; } td.bad { background: #f5b7b1; font-weight: bold; }
code { background: #f4f4f4; padding: 2px 4px; } img { max-width: 100%; display: block; margin: 0.8em 0; }
"""
# The metric a row's criterion judges -> its column, so that the failing cell can be marked.
CRITERION_COLUMN = {"err/std": "max_rel", "cosine": "cosine", "SNR": "snr_db", "identical": "mismatches",
                    "max_abs": "max_abs"}
COLUMNS = (("shape", "shape"), ("max_abs", "max |err|"), ("max_rel", "err/std"), ("cosine", "cosine"),
           ("snr_db", "SNR dB"), ("stft", "MR-STFT"), ("mismatches", "differ"))


def missing_matplotlib() -> str | None:
    return None if importlib.util.find_spec("matplotlib") is not None else MISSING


def esc(x) -> str:
    return html.escape(str(x))


def fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "shape":
        return "x".join(str(d) for d in value)
    if key == "cosine":
        return f"{value:.7f}"
    if key == "snr_db":
        return f"{value:.1f}"
    if key == "stft":
        return f"{value:.5f}"
    if key == "mismatches":
        return str(value)
    return f"{value:.2e}"


def failed_column(row: dict) -> str:
    """The column to mark on a failing row ("result" when no metric explains it, e.g. different shapes)."""
    if row["passed"]:
        return ""
    if row.get("note", "").startswith("shape"):
        return "shape"
    for prefix, column in CRITERION_COLUMN.items():
        if row["criterion"].startswith(prefix) and row.get(column) not in (None, 0):
            return column
    return "result"


def label(row: dict) -> str:
    return row["stage"] if row.get("step") is None else f"{row['stage']}[{row['step']}] t={row['t']:.3f}"


def stage_table(rows: list[dict]) -> str:
    head = "".join(f"<th>{esc(name)}</th>" for _, name in COLUMNS)
    out = [f"<table><tr><th>stage</th><th>view</th>{head}<th>result</th><th>note</th></tr>"]
    for r in rows:
        bad = failed_column(r)
        cells = "".join(f"<td{' class=bad' if key == bad else ''}>{esc(fmt(key, r.get(key)))}</td>"
                        for key, _ in COLUMNS)
        result = "ok" if r["passed"] else f"FAIL ({r['criterion']})"
        out.append(f"<tr{'' if r['passed'] else ' class=fail'}><td class=l>{esc(label(r))}</td>"
                   f"<td class=l>{esc(r['view'])}</td>{cells}<td class='l{' bad' if bad == 'result' else ''}'>"
                   f"{esc(result)}</td><td class=l>{esc(r.get('note', ''))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def key_values(pairs) -> str:
    rows = "".join(f"<tr><th class=l>{esc(k)}</th><td class=l>{v}</td></tr>" for k, v in pairs)
    return f"<table>{rows}</table>"


def verdict(report: Report) -> tuple[str, str]:
    """-> (css class, the verdict in one line)."""
    return ("pass" if report.passed else "fail"), "; ".join(report.summary())


def render(report: Report) -> str:
    """The report -> a self-contained HTML page."""
    from . import plots  # matplotlib: only when an HTML report is asked for

    data = report.to_json()
    m, rows = data, data["stages"]
    cls, line = verdict(report)
    th = None if m["dtype"] == "bf16" else m["thresholds"]["max_rel"]
    parts = [f"<h1 class={cls}>{esc(line)}</h1>",
             f"<p>acestep-core {esc(m['ours_version'])} against {esc(m['against'])} {esc(m['reference_version'])}: "
             f"task {esc(m['task'])}, {m['latent_frames']} latent frames ({m['seconds']:.2f} s), {m['steps']} steps, "
             f"guidance {m['guidance_scale']:g}, seed {m['seed']}, {esc(m['dtype'])} on {esc(m['device'])}</p>",
             "<h2>What was run</h2>",
             key_values([("command", f"<code>{esc(m.get('command', '-'))}</code>"),
                         ("checkpoint", esc(m.get("checkpoint", "-"))),
                         ("fingerprint", f"<code>{esc(m.get('fingerprint', '-'))}</code>"),
                         ("seed", esc(m["seed"])), ("source", esc(m.get("source"))),
                         ("how ours runs", esc(m.get("compat"))),
                         ("thresholds", esc(", ".join(f"{k} {v:g}" for k, v in m["thresholds"].items())))]
                        + [(k, esc(v)) for k, v in m.get("versions", {}).items()]),
             "<h2>Stages</h2>", stage_table(rows),
             "<h2>Relative error</h2>",
             f"<img alt='relative error per stage' src='{plots.stage_errors({'': rows}, th)}'>"]
    steps = plots.step_errors(rows, th)
    if steps:
        parts.append(f"<img alt='relative error per sampler step' src='{steps}'>")
    if report.audio is not None:
        ours, ref, rate = report.audio
        audio_row = next((r for r in rows if r["stage"] == "decoded_audio" and r["view"] == "accumulated"), {})
        title = (f"accumulated view: SNR {fmt('snr_db', audio_row.get('snr_db'))} dB, "
                 f"MR-STFT {fmt('stft', audio_row.get('stft'))}")
        waves, mels = plots.audio_figures(ours, ref, rate, title)
        parts += ["<h2>Audio</h2>", f"<p>{esc(title)}</p>", f"<img alt='waveforms' src='{waves}'>"]
        if mels:
            parts.append(f"<img alt='log-mel spectrograms' src='{mels}'>")
    return page(f"acestep parity: {line}", "\n".join(parts))


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
