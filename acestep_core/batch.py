"""`acestep batch`: many songs from a JSON-lines requests file, in one process or over torchrun ranks.

    acestep batch --checkpoint ckpt/ --requests songs.jsonl --out songs/              # one process
    torchrun --nproc_per_node 8 -m acestep_core batch --checkpoint ckpt/ --requests songs.jsonl --out songs/
    acestep batch --checkpoint ckpt/ --requests songs.jsonl --check                    # validate, run nothing

Every line is checked before any model loads (batch_requests.py); the requests are grouped into batches
that do not depend on the number of ranks, the batches are spread over the ranks (one device each:
cuda:LOCAL_RANK, or the CPU), and each finished song is written atomically to OUT/<id>.wav with a line in
the manifest (batch_worker.py, batch_manifest.py). Re-running the same command resumes. The ranks talk
over gloo, on the CPU, whatever the device: they only exchange a few numbers at the start and the end.
docs/scale.md says more.

Exit status: 0 every request done; 1 some request failed (OUT/failures.jsonl) or the checkpoint is bad;
2 bad arguments or bad lines (nothing ran); 130 interrupted (finished songs are kept; run again to resume).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

from . import hub
from . import batch_manifest as manifest
from .batch_requests import Job, assign, check_file, make_batches
from .batch_worker import Progress, Worker, identity
from .config import AceStepConfig
from .loading import read_config
from .pipeline import load_pipeline
from .requests import MAX_BATCH
from .version import __version__

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WAIT = datetime.timedelta(days=7)  # how long a rank that is done waits at the end for the slowest one


class UsageError(Exception):
    """Bad arguments: one line, exit status 2, nothing run."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2 (argparse would print its usage first)
        raise UsageError(f"{message} (see `acestep batch --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="acestep batch", description="Generate every song of a JSON-lines requests file.")
    p.add_argument("--checkpoint", required=True, metavar="DIR_OR_HUB_ID", help="as for `acestep generate`")
    p.add_argument("--variant", help="model in a folder holding several: turbo, base, sft, ...")
    p.add_argument("--requests", required=True, metavar="FILE.jsonl",
                   help="one JSON object per line: pipe(...) keyword arguments plus an optional id")
    p.add_argument("--out", metavar="DIR", help="output folder: <id>.wav, manifest.jsonl, failures.jsonl")
    p.add_argument("--format", choices=("wav", "flac"), default="wav",
                   help="wav: 32-bit float (default); flac: 24-bit")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="songs per forward pass (default 1)")
    p.add_argument("--device",
                   help="cpu or cuda (default: cuda when available); under torchrun rank r takes cuda:LOCAL_RANK")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="model precision (default fp32)")
    p.add_argument("--seed", type=int, default=0, help="base of the seeds derived for requests without one (default 0)")
    p.add_argument("--force", action="store_true", help="redo requests that are already done")
    p.add_argument("--check", action="store_true", help="only check the requests file (no model is loaded)")
    return p


def _ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) for a plain process."""
    return tuple(int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))


def _device(name: str | None, world: int, local: int) -> torch.device:
    try:
        device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"--device: {e}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: use cpu or cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here")
        if world > 1 and device.index is not None:
            raise UsageError("--device: under torchrun give `cuda`; rank r takes cuda:LOCAL_RANK")
        device = torch.device("cuda", local if world > 1 else (device.index or 0))
        if device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
        torch.cuda.set_device(device)
    return device


def _check(args, rank: int) -> tuple[str, AceStepConfig, list[Job]]:
    """Resolve the checkpoint, read its config and check every line (rank 0 reports)."""
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise UsageError(f"--batch-size must lie in [1, {MAX_BATCH}], got {args.batch_size}")
    if args.out is None and not args.check:
        raise UsageError("--out is required (or --check to only check the requests)")
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out: {args.out} exists and is not a folder")
    checkpoint = hub.resolve_checkpoint(args.checkpoint, args.variant)
    config = read_config(checkpoint, args.variant)
    try:
        jobs, bad, warnings = check_file(config, args.requests, args.seed)
    except FileNotFoundError:
        raise UsageError(f"--requests: {args.requests}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--requests: {args.requests}: cannot read it as UTF-8 text ({e})") from None
    if rank == 0:
        for w in warnings:
            print(f"warning: {args.requests}: {w}", file=sys.stderr)
        for b in bad:
            print(f"{args.requests}:{b.line}: {b.message}", file=sys.stderr)
    if bad:
        raise UsageError(f"{len(bad)} bad line(s) in {args.requests}; nothing was run")
    return checkpoint, config, jobs


def _what_is_done(args, checkpoint: str, jobs: list[Job], out: str, device: torch.device) -> tuple[dict, list, dict]:
    """-> (the record fields every request of this run shares, the ids already done, part file sizes now)."""
    same = {"library": f"acestep-core {__version__}", "checkpoint": manifest.fingerprint(checkpoint, args.variant),
            "dtype": args.dtype, "device": device.type}
    done, hashes = [], {}
    if not args.force:
        successes, _ = manifest.load_records(out)
        done = [j.id for j in jobs if j.id in successes
                and manifest.is_done(successes[j.id], identity(j, "." + args.format, same, hashes), out)]
    offsets = {p: os.path.getsize(p) for p in glob.glob(os.path.join(out, manifest.PARTS, "*-rank*.jsonl"))}
    return same, done, offsets


def _run(args, rank: int, world: int, local: int) -> int:
    start = time.perf_counter()
    checkpoint, config, jobs = _check(args, rank)
    batches = make_batches(jobs, args.batch_size)
    if args.check:
        if rank == 0:
            print(f"{args.requests}: {len(jobs)} requests OK, {len(batches)} batch(es) of at most {args.batch_size}")
        return 0
    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, manifest.PARTS), exist_ok=True)
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=WAIT)
    device = _device(args.device, world, local)
    # Rank 0 decides once what is already done and tells the others: every rank must plan from one view.
    shared = [_what_is_done(args, checkpoint, jobs, out, device) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(shared, src=0)
    same, done, offsets = shared[0]
    run = Worker(config, out, "." + args.format, args.requests, args.seed, rank, same)
    done = set(done)
    todo = [[j.id for j in b if j.id not in done] for b in batches]
    work = [i for i, t in enumerate(todo) if t]
    share = [work[i] for i in assign([sum(j.cost for j in batches[w]) for w in work], world)[rank]]
    mine = {ident for i in share for ident in todo[i]}
    remaining = sum(len(todo[i]) for i in work)
    if rank == 0:
        print(f"{len(jobs)} requests: {len(done)} already done, {remaining} to run in {len(work)} batch(es) "
              f"over {world} rank(s)", file=sys.stderr)
    progress = Progress(rank, world, local, len(mine), remaining, out, offsets)
    try:
        if share:
            pipe = load_pipeline(checkpoint, device, DTYPES[args.dtype], variant=args.variant)
            for i in share:
                run.run_batch(pipe, batches[i], set(todo[i]), progress)
    except KeyboardInterrupt:
        progress.close()
        if world == 1:
            manifest.merge(out, [j.id for j in jobs], remove_parts=True)
        print(f"interrupted: {run.songs} song(s) finished here are kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    progress.close()
    totals = torch.tensor([run.songs, run.seconds, run.failed], dtype=torch.float64)
    if world > 1:
        try:
            dist.all_reduce(totals)  # also waits for every rank to finish
        except RuntimeError:  # another rank stopped early (killed, crashed): the part files stay for a resume
            if rank == 0:
                manifest.merge(out, [j.id for j in jobs], remove_parts=False)
            print("error: another rank stopped before the end; every finished song is kept: run the same command "
                  "again to resume", file=sys.stderr)
            return 1
    songs, seconds, failed = int(totals[0]), float(totals[1]), int(totals[2])
    if rank == 0:
        manifest.merge(out, [j.id for j in jobs], remove_parts=True)
        wall = time.perf_counter() - start
        print(f"done: {songs} songs, {seconds:.1f} s of audio, {wall:.1f} s wall, {60 * songs / wall:.2f} songs/min, "
              f"{failed} failed, {len(done)} skipped (already done); {os.path.join(out, manifest.MANIFEST)}")
    # Only rank 0 reports failures in its status: torchrun stops every other rank as soon as one exits
    # non-zero, which could cut rank 0's merge short. torchrun's own status follows rank 0's.
    return 1 if failed and rank == 0 else 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """`acestep batch ...` (also `python -m acestep_core batch` and `torchrun -m acestep_core batch`)."""
    rank, world, local = _ranks()
    on_main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM (kill, torchrun stopping its workers, a scheduler) ends the run like Ctrl-C: no partial file.
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        args = build_parser().parse_args(argv)
        return _run(args, rank, world, local)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # a bad checkpoint (CheckpointError, ConfigError), an unwritable --out
        print(f"error: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if dist.is_initialized():
            dist.destroy_process_group()
