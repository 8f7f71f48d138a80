"""The record of `acestep batch`: OUT/manifest.jsonl, OUT/failures.jsonl and the per-rank part files behind them.

Each rank appends one JSON line per finished (or failed) request to its own part file in OUT/.acestep-batch/,
flushed and fsync'ed before the next request starts, so a crash or kill keeps every line written so far (a
SIGKILL in the middle of a write can leave a torn last line, which readers skip). Rank 0 merges the parts
into manifest.jsonl / failures.jsonl at the end of a run; a resumed run reads the merged files and any parts
a killed run left behind. For each id the newest record wins: a success puts it in the manifest, a failure
in failures.jsonl.

A manifest line: id, request (every default resolved), inputs (sha256 of every file the request reads),
seed, output (the file name inside OUT), sha256 of the audio samples (float32, interleaved little-endian:
for .wav exactly the data chunk), bytes, seconds, sample_rate, library, checkpoint (fingerprint), dtype,
device (kind), and timings (everything that varies from run to run: stage seconds, batch size, rank, time).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets

import numpy as np
import torch

from .checkpoint import fingerprint as checkpoint_fingerprint

PARTS = ".acestep-batch"
MANIFEST, FAILURES = "manifest.jsonl", "failures.jsonl"
# The fields a finished request must repeat exactly to be skipped by a resumed run.
IDENTITY = ("request", "inputs", "output", "library", "checkpoint", "dtype", "device")


def part_path(out: str, kind: str, rank: int) -> str:
    """kind: "manifest" or "failures"."""
    return os.path.join(out, PARTS, f"{kind}-rank{rank}.jsonl")


def append_line(path: str, record: dict) -> None:
    """One JSON line, on disk before this returns."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: str) -> list[dict]:
    """The records of a JSON-lines file (none if it does not exist); torn or foreign lines are skipped."""
    if not os.path.isfile(path):
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for text in f:
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                records.append(record)
    return records


def _finished_at(record: dict) -> float:
    timings = record.get("timings")
    return float(timings.get("finished_at", 0.0)) if isinstance(timings, dict) else 0.0


def load_records(out: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """-> (successes, failures) by id: the newest record of each id, from the merged files and the parts."""
    newest: dict[str, tuple[float, bool, dict]] = {}
    for name, ok in ((MANIFEST, True), (FAILURES, False)):
        paths = [os.path.join(out, name)] + sorted(glob.glob(os.path.join(out, PARTS, f"{name[:-6]}-rank*.jsonl")))
        for path in paths:
            for record in read_lines(path):
                when = _finished_at(record)
                if record["id"] not in newest or when >= newest[record["id"]][0]:
                    newest[record["id"]] = (when, ok, record)
    successes = {i: r for i, (_, ok, r) in newest.items() if ok}
    failures = {i: r for i, (_, ok, r) in newest.items() if not ok}
    return successes, failures


def is_done(record: dict | None, expected: dict, out: str) -> bool:
    """Does a manifest record stand for `expected` (the IDENTITY fields), with its output file in place?"""
    if record is None or any(record.get(k) != expected[k] for k in IDENTITY):
        return False
    path = os.path.join(out, record["output"])
    return os.path.isfile(path) and os.path.getsize(path) == record.get("bytes")


def _write_lines(path: str, records: list[dict]) -> None:
    """Atomically: a temporary file in the same folder, fsync'ed, then renamed onto `path`."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{secrets.token_hex(4)}.partial")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def merge(out: str, order: list[str], *, remove_parts: bool) -> tuple[int, int]:
    """Rewrite manifest.jsonl and failures.jsonl from everything recorded, requests-file order first.

    remove_parts: only when no rank can still be writing (the end of a run). -> (successes, failures)."""
    successes, failures = load_records(out)
    rank = {ident: i for i, ident in enumerate(order)}

    def key(ident):
        return (0, rank[ident], "") if ident in rank else (1, 0, ident)

    _write_lines(os.path.join(out, MANIFEST), [successes[i] for i in sorted(successes, key=key)])
    _write_lines(os.path.join(out, FAILURES), [failures[i] for i in sorted(failures, key=key)])
    if remove_parts:
        for path in glob.glob(os.path.join(out, PARTS, "*-rank*.jsonl")):
            os.remove(path)
    return len(successes), len(failures)


def samples_sha256(audio: torch.Tensor) -> str:
    """sha256 of float32 samples [C, S] in file order (interleaved [S, C], little-endian)."""
    # float32 on the CPU: the samples as written to a .wav file.
    frames = audio.detach().to(device="cpu", dtype=torch.float32).numpy().T  # [C, S] -> [S, C]
    return hashlib.sha256(np.ascontiguousarray(frames).astype("<f4", copy=False).tobytes()).hexdigest()


def fingerprint(path: str, variant: str | None = None) -> str:
    """The checkpoint folder's identity for the manifest (`checkpoint.fingerprint`, salted with the variant)."""
    return checkpoint_fingerprint([path], f"variant={variant}\n")
