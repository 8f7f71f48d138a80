"""`acestep parity --compare A.json B.json [--html FILE]`: two reports side by side.

For instance fp32 against bf16, or before against after a change. Rows are matched by (stage, step, view);
a row only one report has is shown with blanks on the other side. B/A is the ratio of the relative errors
(> 1: B is further from its reference).
"""

from __future__ import annotations

import json
import math

from .report import SCHEMA


class BadReport(ValueError):
    """A file that is not a report of `acestep parity --json`."""


def load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BadReport(f"--compare: {path}: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("stages"), list):
        raise BadReport(f"--compare: {path} is not an `acestep parity --json` report (schema {SCHEMA})")
    return data


def _key(row: dict) -> tuple:
    return row["stage"], row.get("step"), row["view"]


def _label(row: dict) -> str:
    return row["stage"] if row.get("step") is None else f"{row['stage']}[{row['step']}]"


def paired(a: dict, b: dict) -> list[tuple[dict | None, dict | None]]:
    """Rows of A in A's order (with B's match), then B's rows that A lacks."""
    by_b = {_key(r): r for r in b["stages"]}
    out = [(r, by_b.get(_key(r))) for r in a["stages"]]
    seen = {_key(r) for r in a["stages"]}
    return out + [(None, r) for r in b["stages"] if _key(r) not in seen]


def ratio(a: dict | None, b: dict | None) -> float | None:
    x, y = (a or {}).get("max_rel"), (b or {}).get("max_rel")
    if x is None or y is None:
        return None
    if x == 0:
        return 1.0 if y == 0 else math.inf
    return y / x


def describe(data: dict) -> str:
    verdict = "PASS" if data["passed"] else "FAIL"
    return (f"{verdict}, {data['against']} {data['reference_version']}, {data['task']}, {data['steps']} steps, "
            f"{data['dtype']} on {data['device']}, seed {data['seed']}")


def _num(x, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if x is None else format(x, spec).rjust(width)


def table(a: dict, b: dict, name_a: str, name_b: str) -> str:
    lines = [f"A: {name_a}: {describe(a)}", f"B: {name_b}: {describe(b)}", "",
             f"{'stage':<18} {'view':<11} {'A err/std':>10} {'B err/std':>10} {'B/A':>8} {'A cosine':>10} "
             f"{'B cosine':>10} {'A SNR':>6} {'B SNR':>6}  A / B"]
    for ra, rb in paired(a, b):
        row = ra or rb
        r = ratio(ra, rb)
        verdicts = " / ".join("-" if x is None else ("ok" if x["passed"] else "FAIL") for x in (ra, rb))
        lines.append(f"{_label(row):<18} {row['view']:<11} {_num((ra or {}).get('max_rel'), '.2e', 10)} "
                     f"{_num((rb or {}).get('max_rel'), '.2e', 10)} {_num(r, '.2f', 8)} "
                     f"{_num((ra or {}).get('cosine'), '.7f', 10)} {_num((rb or {}).get('cosine'), '.7f', 10)} "
                     f"{_num((ra or {}).get('snr_db'), '.1f', 6)} {_num((rb or {}).get('snr_db'), '.1f', 6)}  "
                     f"{verdicts}")
    return "\n".join(lines)


def html_page(a: dict, b: dict, name_a: str, name_b: str) -> str:
    from . import plots
    from .html_report import esc, fmt, key_values, page

    head = ("<tr><th>stage</th><th>view</th><th>A err/std</th><th>B err/std</th><th>B/A</th><th>A cosine</th>"
            "<th>B cosine</th><th>A SNR dB</th><th>B SNR dB</th><th>A</th><th>B</th></tr>")
    body = []
    for ra, rb in paired(a, b):
        row = ra or rb
        cells = [fmt("max_rel", (ra or {}).get("max_rel")), fmt("max_rel", (rb or {}).get("max_rel")),
                 "-" if ratio(ra, rb) is None else f"{ratio(ra, rb):.2f}",
                 fmt("cosine", (ra or {}).get("cosine")), fmt("cosine", (rb or {}).get("cosine")),
                 fmt("snr_db", (ra or {}).get("snr_db")), fmt("snr_db", (rb or {}).get("snr_db"))]
        verdicts = ["-" if x is None else ("ok" if x["passed"] else "FAIL") for x in (ra, rb)]
        tds = "".join(f"<td>{esc(c)}</td>" for c in cells)
        tds += "".join(f"<td{' class=bad' if v == 'FAIL' else ''}>{v}</td>" for v in verdicts)
        body.append(f"<tr><td class=l>{esc(_label(row))}</td><td class=l>{esc(row['view'])}</td>{tds}</tr>")
    image = plots.stage_errors({"A": a["stages"], "B": b["stages"]}, None)
    parts = ["<h1>acestep parity: A against B</h1>",
             key_values([("A", f"{esc(name_a)}: {esc(describe(a))}<br><code>{esc(a.get('command', '-'))}</code>"),
                         ("B", f"{esc(name_b)}: {esc(describe(b))}<br><code>{esc(b.get('command', '-'))}</code>")]),
             f"<table>{head}{''.join(body)}</table>", f"<img alt='relative error per stage, A and B' src='{image}'>"]
    return page(f"acestep parity: {name_a} against {name_b}", "\n".join(parts))


def compare_files(path_a: str, path_b: str, *, html: str | None = None) -> int:
    a, b = load(path_a), load(path_b)
    print(table(a, b, path_a, path_b))
    if html:
        with open(html, "w", encoding="utf-8") as f:
            f.write(html_page(a, b, path_a, path_b))
    return 0
