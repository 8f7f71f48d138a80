"""`acestep generate` (also `python -m acestep_core generate`): a song from the command line.

    acestep generate --prompt "lofi hip hop, mellow piano" --lyrics @lyrics.txt --duration 30 --seed 7
    acestep generate --checkpoint ACE-Step/Ace-Step1.5 --task cover --src-audio in.wav --out cover.flac

--checkpoint takes a folder in our layout, an official checkpoints/ folder (or a model folder inside it),
a diffusers AceStepPipeline folder, or a Hugging Face Hub id ("owner/name[@revision]", see hub.py).
Without it, a tiny RANDOM demo model is written to the acestep-core cache ($ACESTEP_CORE_CACHE, default
~/.cache/acestep-core) and used, so the command runs anywhere in seconds; its output is noise.

Every error prints one line `error: ...` and no traceback. Exit status: 0 done; 2 a bad argument or input
file (nothing was generated); 1 anything else (a bad checkpoint, a failure while generating or writing);
130 interrupted (the message names exactly the --batch outputs already written). Output files are written
atomically (audio_io.write_audio): a failed or killed run never leaves a partial file under the output name.
Once the last output is in place the run has succeeded: a SIGINT/SIGTERM arriving after that is ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import sys
import tempfile
import time

from .safetensors_io import read_text_bounded

READ_RATE = 48000  # ACE-Step 1.5's VAE rate; input audio is read and checked at it before the model loads
DTYPES = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEFAULT_SECONDS = 10.0  # short enough for the CPU demo; the official minimum length is 5.12 s
DEMO_NOTICE = "no checkpoint given: using a tiny RANDOM demo model; the output is noise"
TEXT_FILE_LIMIT = 1 << 20  # @FILE arguments (lyrics, audio codes): real lyrics are a few KB
# Text arguments checked to be valid UTF-8 (undecodable bytes on the command line reach Python as lone
# surrogates, which the tokenizer rejects with an error that names no argument).
_TEXT_FLAGS = (("--prompt", "prompt"), ("--lyrics", "lyrics"), ("--language", "language"), ("--key", "key"),
               ("--time-signature", "time_signature"), ("--audio-codes", "audio_codes"),
               ("--track-name", "track_name"), ("--complete-tracks", "complete_tracks"))


class CliError(Exception):
    """A one-line error and the exit status that goes with it."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message; we keep to one line
        raise CliError(f"{message} (see `{self.prog} --help`)", 2)


def build_parser() -> argparse.ArgumentParser:
    from .tasks import TASKS

    parser = _Parser(prog="acestep", description="ACE-Step 1.5 text-to-music (acestep-core).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # `parity` has its own parser (acestep_parity/engine.py); it is listed here so --help shows it.
    commands.add_parser("parity", add_help=False, help="compare our pipeline with diffusers or the official code stage by stage "
                                                        "(acestep parity --help; docs/parity-report.md)")
    commands.add_parser("train-lora", add_help=False, help="fine-tune a LoRA on your own songs "
                                                            "(acestep train-lora --help; docs/adapters.md)")
    commands.add_parser("batch", add_help=False, help="generate every song of a JSON-lines requests file, on one "
                                                       "or many devices (acestep batch --help; docs/scale.md)")
    g = commands.add_parser("generate", help="generate a song and write it as .wav or .flac",
                            description="Generate a song (48 kHz stereo) and write it as .wav (32-bit float) "
                                        "or .flac (24-bit).")
    src = g.add_argument_group("model")
    src.add_argument("--checkpoint", metavar="DIR_OR_HUB_ID",
                     help="our layout, official checkpoints/ (or a model folder in it), a diffusers pipeline "
                          "folder, or a Hub id owner/name[@revision]; default: a tiny random demo model")
    src.add_argument("--variant",
                     help="model in a folder or repository holding several: turbo, base, sft, xl-turbo, ...")
    src.add_argument("--dtype", choices=tuple(DTYPES), default="auto",
                     help="model precision; auto (default): bf16 (bf16 matmuls, fp32 state) where the hardware has "
                          "bf16 arithmetic, else fp32")
    src.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available, else cpu)")
    src.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                     help="a LoRA / LoKr adapter (PEFT folder, diffusers or LyCORIS file) and its scale (default 1); "
                          "repeatable, all active")

    think = g.add_argument_group("planner (the 5 Hz LM, official 'thinking')")
    think.add_argument("--think", action="store_true",
                       help="let the 5 Hz LM plan the song first: metadata left empty, caption, audio codes")
    think.add_argument("--lm", metavar="DIR", help="5 Hz LM folder (default: an acestep-5Hz-lm-* folder in the checkpoint)")

    req = g.add_argument_group("song")
    req.add_argument("--prompt", default="", help="caption: genre, mood, instruments, ...")
    req.add_argument("--lyrics", default="", metavar="TEXT|@FILE", help="lyrics, or @path to a UTF-8 file")
    req.add_argument("--language", help="vocal language code (en, zh, ja, ..., unknown; default en, or the LM's "
                                        "choice with --think)")
    req.add_argument("--duration", type=float, metavar="SECONDS",
                     help=f"length (default {DEFAULT_SECONDS:g}; with --src-audio or --audio-codes, theirs)")
    req.add_argument("--bpm", type=int)
    req.add_argument("--key", metavar="KEYSCALE", help='e.g. "C major", "F# minor"')
    req.add_argument("--time-signature", metavar="BEATS", help="beats per bar: 2, 3, 4 or 6")
    req.add_argument("--seed", type=int, help="random seed; item i of a batch uses seed + i (default: random, printed)")
    req.add_argument("--steps", type=int, help="sampling steps (default: 8 turbo, 30 base/sft)")
    req.add_argument("--shift", type=float, help="timestep shift (default 3)")
    req.add_argument("--guidance", type=float, help="guidance scale for base/sft models (default 7; turbo ignores it)")

    task = g.add_argument_group("task")
    task.add_argument("--task", choices=TASKS, default="text2music")
    task.add_argument("--src-audio", metavar="FILE",
                      help="source audio (48 kHz) for repaint, cover, extract, lego, complete")
    task.add_argument("--reference-audio", metavar="FILE", help="timbre reference audio (48 kHz)")
    task.add_argument("--audio-codes", metavar="TEXT|@FILE",
                      help="5 Hz audio codes (<|audio_code_N|>...), or @file; implies cover")
    task.add_argument("--repaint", nargs=2, type=float, metavar=("START", "END"),
                      help="repaint / lego window in seconds (END -1: to the end of the source)")
    task.add_argument("--track-name", help="track for extract / lego, e.g. vocals, drums")
    task.add_argument("--complete-tracks", metavar="A,B", help="tracks to add for complete, comma separated")

    _plan_parser(commands)
    out = g.add_argument_group("output")
    out.add_argument("--out", default="song.wav", metavar="FILE.wav|FILE.flac", help="output file (default song.wav)")
    out.add_argument("--batch", type=int, default=1, metavar="N",
                     help="songs to generate in one batch; writes FILE_0, FILE_1, ... (default 1)")
    return parser


# --- inputs ------------------------------------------------------------------------------------------------

def _plan_parser(commands) -> None:
    p = commands.add_parser("plan", help="plan a song with the 5 Hz LM alone: metadata, caption and audio codes",
                            description="Run the 5 Hz LM planner (official 'thinking') and print or save its plan.")
    p.add_argument("--lm", required=True, metavar="DIR", help="5 Hz LM folder (official acestep-5Hz-lm-* or ours)")
    p.add_argument("--prompt", default="", help="caption")
    p.add_argument("--lyrics", default="", metavar="TEXT|@FILE", help="lyrics, or @path to a UTF-8 file")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="length (default: the LM decides)")
    p.add_argument("--bpm", type=int)
    p.add_argument("--key", metavar="KEYSCALE")
    p.add_argument("--time-signature", metavar="BEATS")
    p.add_argument("--language", help="vocal language code (default: the LM decides)")
    p.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--json", metavar="FILE", help="write the plan (metadata, caption, audio codes, timings) here")


def _plan_command(args) -> int:
    import json

    import torch

    from .lm.planner import load_planner

    lyrics = _text_or_file(args.lyrics, "--lyrics")
    for value, flag in ((args.prompt, "--prompt"), (lyrics, "--lyrics")):
        _check_utf8(value, flag)
    device = _device(args.device)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    planner = load_planner(args.lm, device=device, dtype=getattr(torch, DTYPES[args.dtype]))
    print(f"planner: {args.lm} on {device} ({args.dtype}); seed {seed}", file=sys.stderr)
    try:
        plan = planner.plan(args.prompt, lyrics, bpm=args.bpm, keyscale=args.key, timesignature=args.time_signature,
                            duration=args.duration, vocal_language=args.language, seed=seed)
    except (ValueError, TypeError) as e:
        raise CliError(str(e), 2) from None
    record = {"metadata": plan.metadata, "caption": plan.caption, "audio_codes": plan.audio_codes,
              "num_codes": len(plan.codes), "seed": seed, "timings": plan.timings}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2, ensure_ascii=False)
            f.write("\n")
    meta = ", ".join(f"{k}: {v}" for k, v in sorted(plan.metadata.items()) if k != "caption")
    print(f"plan: {meta}; {len(plan.codes)} audio codes" + (f"; wrote {args.json}" if args.json else ""))
    return 0


def _planner_folder(args, checkpoint: str) -> str:
    """--lm, else the one acestep-5Hz-lm-* folder of an official checkpoints/ folder (1.7B preferred, the
    official default)."""
    if args.lm is not None:
        return args.lm
    root = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(checkpoint)
    for folder in (root, os.path.dirname(root)):
        names = sorted(n for n in os.listdir(folder) if n.startswith("acestep-5Hz-lm-")) if os.path.isdir(folder) else []
        if names:
            return os.path.join(folder, "acestep-5Hz-lm-1.7B" if "acestep-5Hz-lm-1.7B" in names else names[0])
    raise CliError("--think needs the 5 Hz LM: pass --lm DIR (e.g. checkpoints/acestep-5Hz-lm-1.7B)", 2)


def _check_utf8(value: str | None, flag: str) -> None:
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CliError(f"{flag}: not valid UTF-8 text (an undecodable byte at character {e.start})", 2) from None


def _text_or_file(value: str | None, flag: str) -> str | None:
    """TEXT, or the contents of FILE for "@FILE" (trailing whitespace and newlines removed).

    FILE must be a regular UTF-8 file of at most TEXT_FILE_LIMIT bytes, checked before it is read.
    """
    if value is None or not value.startswith("@"):
        return value
    try:
        return read_text_bounded(value[1:], TEXT_FILE_LIMIT, "text file").rstrip()
    except ValueError as e:
        raise CliError(f"{flag}: {e}", 2) from None


def _output_paths(out: str, batch: int) -> list[str]:
    from . import audio_io

    try:
        ext = audio_io.output_format(out)
    except ValueError as e:
        raise CliError(f"--out: {e}", 2) from None
    out = os.path.abspath(out)
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise CliError(f"--out: folder {folder} does not exist", 2)
    if not os.access(folder, os.W_OK):
        raise CliError(f"--out: folder {folder} is not writable", 2)
    if batch == 1:
        paths = [out]
    else:
        stem = out[: -len(ext)]
        paths = [f"{stem}_{i}{ext}" for i in range(batch)]
    # Checked now, not after minutes of compute: each name must fit the file system.
    limit = audio_io.name_max(folder)
    for p in paths:
        if os.path.isdir(p):
            raise CliError(f"--out: {p} is a folder", 2)
        size = len(os.fsencode(os.path.basename(p)))
        if size > limit:
            raise CliError(f"--out: the file name {os.path.basename(p)[:40]}... is {size} bytes, over the "
                           f"{limit}-byte limit of this file system", 2)
    return paths


def _device(name: str | None):
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise CliError(f"--device: {e}", 2) from None
    if device.type == "meta":
        raise CliError(f"--device {name}: the meta device holds no data; use cpu or cuda", 2)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available here", 2)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CliError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)", 2)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"--device {name}: MPS is not available here", 2)
    return device


def _read_inputs(args) -> dict:
    """Every user input checked and read before any model is loaded (errors: status 2)."""
    from . import audio_io

    if not 1 <= args.batch <= 64:
        raise CliError(f"--batch must lie in [1, 64], got {args.batch}", 2)
    if args.duration is not None and not 0 < args.duration <= 1200:
        raise CliError(f"--duration must lie in (0, 1200] seconds, got {args.duration}", 2)
    if args.variant is not None and args.checkpoint is None:
        raise CliError("--variant needs --checkpoint (the demo model has no variants)", 2)
    inputs = {"lyrics": _text_or_file(args.lyrics, "--lyrics"),
              "audio_codes": _text_or_file(args.audio_codes, "--audio-codes")}
    for flag, key in _TEXT_FLAGS:  # the texts themselves: an @FILE's name may be any bytes, its text not
        _check_utf8(inputs[key] if key in inputs else getattr(args, key), flag)
    for flag, key in (("--src-audio", "src_audio"), ("--reference-audio", "reference_audio")):
        path = getattr(args, key)
        if path is None:
            inputs[key] = None
            continue
        try:
            inputs[key] = audio_io.read_audio(path, READ_RATE)
        except ValueError as e:
            raise CliError(f"{flag}: {e}", 2) from None
    inputs["out"] = _output_paths(args.out, args.batch)
    inputs["lora"] = [_lora_spec(v) for v in args.lora]
    inputs["device"] = _device(args.device)
    return inputs


def _lora_spec(value: str) -> tuple[str, float]:
    """PATH or PATH:SCALE -> (path, scale); a path that itself holds ':' works when it exists as given."""
    path, sep, scale = value.rpartition(":")
    if not sep or os.path.exists(value):
        path, scale = value, "1"
    try:
        weight = float(scale)
    except ValueError:
        raise CliError(f"--lora {value}: SCALE must be a number", 2) from None
    if not os.path.exists(path):
        raise CliError(f"--lora {value}: {path} not found", 2)
    return path, weight


def _request(args, inputs: dict, seed: int) -> dict:
    """The pipeline's keyword arguments (acestep_core.requests.parse_request)."""
    duration = args.duration
    if duration is None and inputs["src_audio"] is None and inputs["audio_codes"] is None and not args.think:
        duration = DEFAULT_SECONDS  # with --think, the LM decides the length
    src, ref = inputs["src_audio"], inputs["reference_audio"]
    tracks = None
    if args.complete_tracks is not None:
        tracks = [t.strip() for t in args.complete_tracks.split(",") if t.strip()]
    language = {} if args.language is None else {"vocal_language": args.language}
    return dict(
        **language, thinking=bool(args.think),
        prompt=[args.prompt] * args.batch, lyrics=inputs["lyrics"],
        audio_duration=duration, num_inference_steps=args.steps, shift=args.shift, guidance_scale=args.guidance,
        seed=seed, bpm=args.bpm, keyscale=args.key, timesignature=args.time_signature, task_type=args.task,
        track_name=args.track_name, complete_track_classes=tracks,
        src_audio=None if src is None else src[None],  # [2, S] -> [1, 2, S]
        reference_audio=None if ref is None else ref[None],
        audio_codes=inputs["audio_codes"],
        repainting_start=None if args.repaint is None else args.repaint[0],
        repainting_end=None if args.repaint is None else args.repaint[1],
    )


# --- the command -------------------------------------------------------------------------------------------

def _checkpoint(args, stack: contextlib.ExitStack) -> str:
    from . import hub

    if args.checkpoint is not None:
        return hub.resolve_checkpoint(args.checkpoint, args.variant)
    from . import demo

    print(DEMO_NOTICE, file=sys.stderr)
    try:
        return demo.demo_checkpoint()
    except OSError as e:  # an unwritable cache: a demo for this run only
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="acestep-demo-"))
        print(f"(cache {hub.cache_dir()} unusable: {e.strerror}; writing the demo to {folder})", file=sys.stderr)
        return demo.write_demo_checkpoint(os.path.join(folder, "demo"))


def generate(args) -> int:
    import torch

    from . import audio_io
    from .pipeline import load_pipeline
    from .precision import resolve_precision
    from .requests import parse_request

    start = time.perf_counter()
    inputs = _read_inputs(args)
    device = inputs["device"]
    dtype = "auto" if args.dtype == "auto" else getattr(torch, DTYPES[args.dtype])
    precision = resolve_precision(dtype, device).summary  # what the load below will use, for the log line
    if device.type == "cpu" and args.dtype == "fp16":
        print("note: fp16 on the CPU is slow; fp32 or bf16 are faster there", file=sys.stderr)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)

    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        path = _checkpoint(args, stack)  # a Hub download or the demo's first build happen here
        planner = _planner_folder(args, path) if args.think else None
        pipe = load_pipeline(path, device, dtype, variant=args.variant, planner=planner)
        for lora, scale in inputs["lora"]:
            pipe.load_adapter(lora, scale=scale)
        load_seconds = time.perf_counter() - t0
        if pipe.sample_rate != READ_RATE and (inputs["src_audio"] is not None or inputs["reference_audio"] is not None):
            raise CliError(f"the checkpoint's VAE runs at {pipe.sample_rate} Hz; input audio is read at {READ_RATE} Hz")
        print(f"model: {pipe.config.pipeline.model_version} from {path} on {device} ({args.dtype}: {precision}); seed {seed}",
              file=sys.stderr)

        kwargs = _request(args, inputs, seed)
        try:
            parse_request(pipe, **kwargs)  # the arguments alone, before any compute: a rejection is status 2
        except (ValueError, TypeError) as e:
            raise CliError(str(e), 2) from None
        result = pipe(**kwargs, progress=True)

    t0 = time.perf_counter()
    written = _write_outputs(inputs["out"], result.audios, result.sample_rate)
    timings = {"load": load_seconds, **result.timings, "write": time.perf_counter() - t0}

    for i, plan in enumerate(result.plans or ()):
        meta = ", ".join(f"{k}: {v}" for k, v in sorted(plan.metadata.items()) if k != "caption")
        print(f"plan{'' if len(result.plans) == 1 else f' {i}'}: {meta}; {len(plan.codes)} audio codes")
    seconds = result.audios.shape[-1] / result.sample_rate
    kind = audio_io.FORMATS[audio_io.output_format(written[0])]
    for p in written:
        print(f"wrote {p} ({seconds:.2f} s, {result.sample_rate} Hz, {result.audios.shape[1]} ch, {kind})")
    stages = ", ".join(f"{name} {sec:.2f}s" for name, sec in timings.items())
    print(f"timings: {stages}; total {time.perf_counter() - start:.2f}s")
    return 0


def _identity(path: str):
    """What a path is on disk now: a write (a rename of a new file) always changes it; None when absent."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _write_outputs(paths: list[str], audios, sample_rate: int) -> list[str]:
    """Write every output; an interruption names exactly which were written.

    Whether a file was written is read from the disk (a new file was renamed over the path), not from how
    far the loop got: a signal can arrive between the rename and the next line. When every output is in
    place the interruption came too late to stop anything, and the run succeeds.
    """
    from . import audio_io

    before = {p: _identity(p) for p in paths}
    try:
        written = [audio_io.write_audio(p, audio, sample_rate) for p, audio in zip(paths, audios)]
        _ignore_signals()
        return written
    except KeyboardInterrupt:
        written = [p for p in paths if _identity(p) != before[p]]
        if len(written) < len(paths):
            kept = [p for p in paths if p not in written]
            done = f"wrote {', '.join(written)}" if written else "no output was written"
            raise CliError(f"interrupted; {done}; not written (left as they were): {', '.join(kept)}", 130) from None
        _ignore_signals()
        return written


def _ignore_signals() -> None:
    """Every output is in place: a SIGINT/SIGTERM from here to the exit must not turn success into failure."""
    if _main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)


class _OneLine(logging.Formatter):
    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of `acestep` and `python -m acestep_core`; returns the exit status.

    Called without argv (as the program), a success leaves SIGINT/SIGTERM ignored up to the process exit
    (see _ignore_signals). Called with argv (in-process), the previous handlers are restored on return.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    loggers = [logging.getLogger(n) for n in ("acestep_core", "weights_convert")]
    for lg in loggers:
        lg.addHandler(handler)
    as_program = argv is None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
    # SIGTERM (kill, a job scheduler) ends the run like Ctrl-C, so temporary files are removed on the way out.
    if previous:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "parity":
        # A separate package: it imports the reference implementation, which acestep_core never does.
        try:
            from acestep_parity import main as parity_main
        except ImportError as e:
            return _fail(f"acestep parity needs the reference implementation ({e}); "
                         'install it with: pip install "acestep-core[parity]"', 2)
        return parity_main(argv[1:])
    if argv and argv[0] == "train-lora":
        from .train_lora import main as train_lora_main

        return train_lora_main(argv[1:])
    if argv and argv[0] == "batch":
        from .batch import main as batch_main  # imported on use, like every heavy module here: `--help` stays fast

        return batch_main(argv[1:])
    try:
        args = build_parser().parse_args(argv)
        return _plan_command(args) if args.command == "plan" else generate(args)
    except CliError as e:
        return _fail(str(e), e.status)
    except KeyboardInterrupt:  # before any output was written (_write_outputs reports the writes)
        return _fail("interrupted; no output was written", 130)
    except (ValueError, TypeError) as e:
        # CheckpointError / ConfigError (both ValueError) and errors raised while generating.
        return _fail(str(e), 1)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}", 1)
    except MemoryError:
        return _fail("out of memory; try a shorter --duration, --batch 1 or --dtype bf16", 1)
    except RuntimeError as e:
        if "out of memory" in str(e).lower():  # torch.OutOfMemoryError and allocator messages
            return _fail("out of memory; try a shorter --duration, --batch 1 or --dtype bf16", 1)
        raise
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        # A program that succeeded keeps ignoring signals to its exit; otherwise the old handlers return.
        if previous and not (as_program and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN):
            for s, h in previous.items():
                signal.signal(s, h)


def _fail(message: str, status: int) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"error: {first}", file=sys.stderr)
    return status


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
