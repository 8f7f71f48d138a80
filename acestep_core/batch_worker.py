"""One rank's share of `acestep batch`: prepare each request, generate its batch, write and record every song.

A batch is always generated whole, done items included, so that every item sees exactly the batch it would
see in a fresh run (results depend on the batch only through float rounding, but bytes are bytes). A request
that cannot be prepared (a missing or unreadable file, a bad value that only its real audio shows) fails on
its own; a batch that fails as a whole is retried item by item, so one bad item does not sink the others.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import sys
import threading
import time

import torch
from tqdm import tqdm

from . import audio_io
from . import batch_manifest as manifest
from .batch_requests import AUDIO_FILES, PER_ITEM, Job, check_line, input_hashes, read_text_file
from .config import AceStepConfig
from .requests import validate_request

POLL_SECONDS = 0.5  # rank 0's global progress count: how often it reads the other ranks' part files


@contextlib.contextmanager
def _uninterrupted():
    """Ctrl-C and SIGTERM wait until a song's file and its manifest line are both written, then stop the run:
    a stopped run never leaves a song without its line (SIGKILL cannot wait; a resume then redoes that song)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def identity(job: Job, ext: str, same: dict, hashes: dict) -> dict:
    """The manifest fields a finished request must repeat to count as done (batch_manifest.IDENTITY).
    hashes: path -> sha256 of the input files, filled as needed."""
    return {"request": job.request, "inputs": input_hashes(job.files, hashes), "output": job.id + ext, **same}


class Progress:
    """One bar per rank; rank 0's counts every rank's finished requests, read from their part files."""

    def __init__(self, rank: int, world: int, local: int, mine: int, total: int, out: str, offsets: dict):
        self.shared = rank == 0 and world > 1
        self.bar = tqdm(total=total if self.shared else mine, desc="all ranks" if self.shared else f"rank {rank}",
                        unit="song", position=local, leave=True, dynamic_ncols=True)
        self.out, self.offsets, self.stop = out, dict(offsets), threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True) if self.shared else None
        if self.thread:
            self.thread.start()

    def _count_new_lines(self) -> int:
        new = 0
        for path in glob.glob(os.path.join(self.out, manifest.PARTS, "*-rank*.jsonl")):
            start = self.offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
            self.offsets[path] = start + len(data)
            new += data.count(b"\n")
        return new

    def _poll(self):
        while not self.stop.wait(POLL_SECONDS):
            self.bar.update(self._count_new_lines())

    def advance(self):
        if not self.shared:
            self.bar.update(1)

    def close(self):
        if self.thread:
            self.stop.set()
            self.thread.join()
            self.bar.update(self._count_new_lines())
        self.bar.close()


class Worker:
    """What every request of this rank's share needs: where to write, what to record, the running totals."""

    def __init__(self, config: AceStepConfig, out: str, ext: str, requests: str, seed_base: int, rank: int, same: dict):
        self.config, self.out, self.ext, self.rank, self.same = config, os.path.abspath(out), ext, rank, same
        self.folder, self.seed_base = os.path.dirname(os.path.abspath(requests)), seed_base
        self.songs, self.seconds, self.failed = 0, 0.0, 0
        self.hashes: dict[str, str] = {}  # input file -> sha256 (inputs are taken not to change during a run)

    def fail(self, job: Job, error: BaseException) -> None:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        manifest.append_line(manifest.part_path(self.out, "failures", self.rank),
                             {"id": job.id, "line": job.line, "error": message, "request": job.request,
                              "timings": {"rank": self.rank, "finished_at": time.time()}})
        tqdm.write(f"failed: {job.id} (line {job.line}): {message}", file=sys.stderr)
        self.failed += 1

    def prepare(self, job: Job, audio_cache: dict) -> tuple[Job, dict]:
        """The job (checked again if a file it names was missing at the start) and its pipe arguments."""
        for key, path in job.files.items():
            if not os.path.isfile(path):
                raise ValueError(f"{key}: {path}: file not found")
        if job.pending:
            job, _ = check_line(self.config, {"id": job.id, **job.kwargs}, job.line, self.folder, self.seed_base)
        kwargs = dict(job.kwargs)
        for key in AUDIO_FILES:
            if key in job.files:
                path = job.files[key]
                if path not in audio_cache:
                    audio_cache[path] = audio_io.read_audio(path, self.config.vae.sampling_rate,
                                                            self.config.vae.audio_channels)
                kwargs[key] = audio_cache[path]
        if "audio_codes" in job.files:
            kwargs["audio_codes"] = read_text_file(job.files["audio_codes"])
        validate_request(self.config, **kwargs)  # this item with its real audio, alone
        input_hashes(job.files, self.hashes)  # for its manifest line, read now rather than while writing
        return job, kwargs

    def run_batch(self, pipe, batch: list[Job], todo: set[str], progress: Progress) -> None:
        """Generate a batch (all its items, done or not, so each item sees the same batch as in a fresh run)."""
        live, cache = [], {}
        for job in batch:
            try:
                live.append(self.prepare(job, cache))
            except (ValueError, TypeError, OSError) as e:
                if job.id in todo:
                    self.fail(job, e)
                    progress.advance()
        if any(job.id in todo for job, _ in live):
            self._generate(pipe, live, todo, progress)

    def _generate(self, pipe, live: list[tuple[Job, dict]], todo: set[str], progress: Progress) -> None:
        items = [kw for _, kw in live]
        first = items[0]
        kwargs = {k: v for k, v in first.items() if k not in PER_ITEM}
        for key in ("prompt", "lyrics", "vocal_language", "seed"):
            kwargs[key] = ["" if kw[key] is None else kw[key] for kw in items]
        kwargs["retake_seed"] = [kw["retake_seed"] for kw in items] if first["retake_variance"] > 0 else None
        for key in AUDIO_FILES:
            if first[key] is not None:
                kwargs[key] = first[key][None]  # [2, S] -> [1, 2, S], shared by the batch (same file: same group)
        start = time.perf_counter()
        try:
            result = pipe(**kwargs)
        except (ValueError, TypeError, RuntimeError) as e:  # RuntimeError: out of memory, among others
            if len(live) == 1:
                self.fail(live[0][0], e)
                progress.advance()
                return
            for job, kw in live:  # one bad item must not sink the others: each alone
                if job.id in todo:
                    self._generate(pipe, [(job, kw)], todo, progress)
            return
        timings = {"rank": self.rank, "batch_items": len(live), "generate": round(time.perf_counter() - start, 4),
                   **{k: round(v, 4) for k, v in result.timings.items()}}
        for (job, _), audio in zip(live, result.audios):
            if job.id in todo:
                self._write(job, audio, result.sample_rate, timings)
                progress.advance()

    def _write(self, job: Job, audio: torch.Tensor, rate: int, timings: dict) -> None:
        start = time.perf_counter()
        with _uninterrupted():
            try:
                path = audio_io.write_audio(os.path.join(self.out, job.id + self.ext), audio, rate)
            except (ValueError, OSError) as e:
                self.fail(job, e)
                return
            seconds = audio.shape[-1] / rate
            record = {"id": job.id, **identity(job, self.ext, self.same, self.hashes), "seed": job.kwargs["seed"],
                      "sha256": manifest.samples_sha256(audio), "bytes": os.path.getsize(path),
                      "seconds": round(seconds, 6), "sample_rate": rate,
                      "timings": {**timings, "write": round(time.perf_counter() - start, 4),
                                  "finished_at": time.time()}}
            manifest.append_line(manifest.part_path(self.out, "manifest", self.rank), record)
            self.songs, self.seconds = self.songs + 1, self.seconds + seconds
