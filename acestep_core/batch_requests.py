"""Requests files for `acestep batch`: one song per JSON line, checked before any model loads, then planned.

A line is a JSON object whose keys are the keyword arguments of `pipe(...)` (`requests.validate_request`)
that JSON can carry, plus an optional `id` (default: the line number) that names the output file.
`src_audio` and `reference_audio` are audio file paths and `audio_codes` a string or `@file`; relative
paths start at the requests file's folder, so the file means the same thing from any working directory
and on every machine of a cluster.

Checking needs only the checkpoint's config: every line is validated by `validate_request` itself (audio
files stand in as silent placeholders of their real length, read from the header), so what passes here is
what the pipeline accepts. A file a request names that does not exist yet is a warning, not an error: the
request is validated again when it runs and, if the file is still missing then, fails on its own.

Planning: requests that differ only in their per-item arguments (prompt, lyrics, vocal_language, seed,
retake_seed) share a group; each group, in id order, is cut into batches of at most `batch_size`. Batches
are made from the whole file, before the split over ranks and before looking at what is already done, so
a request runs in the same batch whatever the number of ranks, and a resumed run repeats it exactly.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
from dataclasses import dataclass

import soundfile as sf
import torch

from . import tasks
from .behaviour import PRESETS
from .config import AceStepConfig
from .requests import validate_request

# pipe(...) arguments a JSON line cannot carry, and what to use instead.
NOT_IN_FILES = {
    "generator": "use seed",
    "latents": "a tensor; use seed",
    "callback_on_step_end": "a Python callable",
    "output_type": "the batch writes audio files",
    "return_dict": "the batch writes audio files",
    "progress": "the batch shows its own progress bars",
    "behaviour": "a Python object; use compat",
}
_SIGNATURE = inspect.signature(validate_request).parameters
KEYS = tuple(k for k in _SIGNATURE if k != "config" and k not in NOT_IN_FILES)
# Batch-invariant by default: items of different text lengths in one batch have padded conditions, which
# this masks out. A request alone has no padding, so the default changes nothing for it (tests/test_batch.py).
BATCH_DEFAULTS = {"mask_condition_padding": True}
DEFAULTS = {**{k: _SIGNATURE[k].default for k in KEYS}, **BATCH_DEFAULTS}
PER_ITEM = ("prompt", "lyrics", "vocal_language", "seed", "retake_seed")  # may differ inside one batch
STRINGS = ("prompt", "lyrics", "vocal_language", "audio_codes", "src_audio", "reference_audio")
AUDIO_FILES = ("src_audio", "reference_audio")
SEED_RANGE = 2**53  # derived seeds stay exact in any JSON reader (IEEE doubles)
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Job:
    """One checked request of the file."""

    id: str
    line: int
    kwargs: dict  # the pipe arguments as the line gives them, defaults and the seed added (JSON values)
    request: dict  # the same with every default resolved (task, instruction, steps, ...): what the manifest records
    files: dict  # argument -> absolute path of a file it reads
    pending: bool  # a file it reads was missing when checked: checked again when it runs
    group: str  # jobs of one group may share a batch
    cost: float  # latent frames x DiT passes; only balances the ranks


@dataclass(frozen=True)
class BadLine:
    line: int
    message: str


def derive_seed(base: int, request_id: str) -> int:
    """The seed of a request that gives none: a hash of `base` and its id (stable across runs and machines)."""
    digest = hashlib.sha256(f"{base}/{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % SEED_RANGE


def input_hashes(files: dict, cache: dict) -> dict:
    """argument -> sha256 of the file it reads (None: unreadable). Hashed on demand (a resume check, a run), never
    while checking: every rank checks every line, and covers can name terabytes of audio. `cache`: path -> digest."""
    for path in files.values():
        if path not in cache:
            h = hashlib.sha256()
            try:
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError:
                continue
            cache[path] = h.hexdigest()
    return {key: cache.get(path) for key, path in files.items()}


def read_text_file(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip()


def _placeholder(path: str, config: AceStepConfig) -> torch.Tensor:
    """Silence [C, S] of the file's length, from its header only (a view: no memory per sample)."""
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot read this audio file ({e})") from None
    rate, channels = config.vae.sampling_rate, config.vae.audio_channels
    if info.samplerate != rate:
        raise ValueError(f"{path}: sample rate is {info.samplerate} Hz but the model needs {rate} Hz")
    if info.channels not in (1, channels):
        raise ValueError(f"{path}: {info.channels} channels; the model takes mono or {channels} channels")
    return torch.zeros(()).expand(channels, info.frames)


def _check_keys(raw: dict) -> None:
    for key in raw:
        if key in NOT_IN_FILES:
            raise ValueError(f"{key} cannot be given in a requests file ({NOT_IN_FILES[key]})")
    unknown = [k for k in raw if k not in KEYS]
    if unknown:
        raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         "(not an argument of pipe(...))")
    for key in STRINGS:
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise TypeError(f"{key} must be a string (one song per line), got {type(raw[key]).__name__}")
    for key in ("seed", "retake_seed"):
        if isinstance(raw.get(key), list):
            raise TypeError(f"{key} must be an integer (one song per line), got a list")


def _request_id(raw: dict, line: int) -> str:
    ident = raw.pop("id", line)
    if isinstance(ident, bool) or not isinstance(ident, (str, int)):
        raise TypeError(f"id must be a string or an integer, got {ident!r}")
    ident = str(ident)
    if not ID_PATTERN.fullmatch(ident):
        raise ValueError(f"id {ident!r} names the output file: use 1-128 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return ident


def check_line(config: AceStepConfig, raw: dict, line: int, folder: str, seed_base: int) -> tuple[Job, str | None]:
    """One JSON object -> (Job, warning or None); a bad line raises ValueError / TypeError."""
    if not isinstance(raw, dict):
        raise TypeError(f"a line must be a JSON object {{...}}, got {type(raw).__name__}")
    raw = dict(raw)
    ident = _request_id(raw, line)
    _check_keys(raw)
    if raw.get("seed") is None:
        raw["seed"] = derive_seed(seed_base, ident)
    kwargs = {**DEFAULTS, **raw}
    files = {k: os.path.join(folder, kwargs[k]) for k in AUDIO_FILES if kwargs[k] is not None}
    codes = kwargs["audio_codes"]
    if codes is not None and codes.startswith("@"):
        files["audio_codes"] = os.path.join(folder, codes[1:])
    missing = [f"{k} {p}" for k, p in files.items() if not os.path.isfile(p)]
    if missing:
        # Validated when it runs; alone in its batch, since its length and task are not known yet.
        warning = f"{', '.join(missing)}: file not found (the request fails unless it exists when it runs)"
        return Job(ident, line, kwargs, dict(kwargs), files, True, f"alone:{ident}", 1.0), warning
    trial = dict(kwargs)
    for key in AUDIO_FILES:
        if key in files:
            trial[key] = _placeholder(files[key], config)
    if "audio_codes" in files:
        trial["audio_codes"] = read_text_file(files["audio_codes"])
    req = validate_request(config, **trial)
    request = {**kwargs, "prompt": req.prompts[0], "task_type": req.task, "instruction": req.instruction,
               "num_inference_steps": req.num_inference_steps, "shift": req.shift,
               "guidance_scale": req.guidance_scale, "chunk_mask_mode": req.chunk_mask_mode,
               "compat": next((n for n, b in PRESETS.items() if b == req.behaviour), kwargs["compat"])}
    if req.sample_posterior or not req.mask_condition_padding:
        # Posterior sampling draws one noise for the whole batch, and padding would reach unmasked
        # conditions: either would make the result depend on the batch, so such a request runs alone.
        group = f"alone:{ident}"
    else:
        group = json.dumps({k: v for k, v in request.items() if k not in PER_ITEM}, sort_keys=True)
    return Job(ident, line, kwargs, request, files, False, group, _cost(req, config)), None


def _cost(req, config: AceStepConfig) -> float:
    hop, rate = config.vae.hop_length, config.vae.sampling_rate
    if req.codes is not None:
        frames = req.codes.shape[1] * config.audio_tokenizer.pool_window_size
    elif req.src_audio is not None:
        frames = req.src_audio.shape[-1] // hop
    else:
        frames = tasks.latent_length(req.audio_duration, rate, hop, req.behaviour)
    passes = req.num_inference_steps * (2 if req.guidance_scale > 1 else 1)
    return float(frames * passes)


def check_file(config: AceStepConfig, path: str, seed_base: int = 0) -> tuple[list[Job], list[BadLine], list[str]]:
    """Every line of a requests file -> (jobs, bad lines, warnings). Blank lines are skipped."""
    folder = os.path.dirname(os.path.abspath(path))
    jobs, bad, warnings, seen = [], [], [], {}
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as e:
                bad.append(BadLine(number, f"not valid JSON ({e.msg} at column {e.colno})"))
                continue
            try:
                job, warning = check_line(config, raw, number, folder, seed_base)
            except (ValueError, TypeError, OSError) as e:  # OSError: a named file exists but cannot be read
                bad.append(BadLine(number, str(e)))
                continue
            if job.id in seen:
                bad.append(BadLine(number, f"id {job.id!r} is already used on line {seen[job.id]}"))
                continue
            seen[job.id] = number
            jobs.append(job)
            if warning is not None:
                warnings.append(f"line {number}: {warning}")
    if not jobs and not bad:
        bad.append(BadLine(0, "the file holds no requests"))
    return jobs, bad, warnings


def make_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Jobs of one group, in id order, cut into batches of at most batch_size."""
    groups: dict[str, list[Job]] = {}
    for job in sorted(jobs, key=lambda j: j.id):
        groups.setdefault(job.group, []).append(job)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def assign(costs: list[float], world: int) -> list[list[int]]:
    """Batch indices per rank: the costliest batch first, each to the least loaded rank (lowest rank on ties)."""
    loads, ranks = [0.0] * world, [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        ranks[r].append(i)
        loads[r] += costs[i]
    return ranks
