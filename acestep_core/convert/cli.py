"""python -m weights_convert SRC DST [--to ours|diffusers] [--dtype fp32|bf16|fp16] [--quantize int8] [--variant NAME] [--force]

SRC is an official `checkpoints/` folder (or the acestep-v15-* folder inside it), a 5 Hz LM folder
(`acestep-5Hz-lm-*`, written as our LM layout) or a diffusers AceStepPipeline folder (with --to diffusers,
also our layout); DST is written in our layout (see
acestep_core/checkpoint.py) or, with --to diffusers, as a diffusers AceStepPipeline folder (see
acestep_core/convert/to_diffusers.py). Every error prints one line. Exit status: 0 written; 2 DST refused
(a source, the current or home folder, a file, a link, or a folder this tool did not write: nothing was
touched); 1 any other error (DST left as it was); 130 interrupted (the message says what DST holds).
--force replaces only a checkpoint this tool wrote, atomically (acestep_core/convert/destination.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from tqdm import tqdm

from ..components import COMPONENTS
from ..config import ConfigError
from ..safetensors_io import CheckpointError
from .configs import SourceConfigError
from .convert import convert_checkpoint, write_checkpoint
from .destination import DestinationError, check_destination
from .lm import is_lm_folder, write_lm_checkpoint
from .to_diffusers import read_source, write_diffusers

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """Run the converter; returns the exit status.

    Called without argv (as the program), SIGINT and SIGTERM are ignored once DST is written, up to the
    process exit: the work is done, and a late signal must not turn it into a failure. Called with argv
    (in-process), the previous signal handlers are restored on return.
    """
    parser = argparse.ArgumentParser(prog="python -m weights_convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="official checkpoints/ folder, an acestep-v15-* folder, or a diffusers pipeline "
                                    "folder (with --to diffusers, also a folder in our layout)")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--to", choices=("ours", "diffusers"), default="ours",
                        help="layout of DST: ours (default) or a diffusers AceStepPipeline folder")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="store tensors in this dtype (default: keep the source dtype)")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="ours only: int8 weight-only Linear layers (per output channel) in the DiT, condition "
                             "and text encoders, half the memory of bf16")
    parser.add_argument("--variant", default=None, help="model folder to pick from an official checkpoints/ folder, "
                                                         "e.g. turbo, base, sft, xl-turbo")
    parser.add_argument("--force", action="store_true",
                        help="replace DST if it is a checkpoint this tool wrote (never anything else)")
    args = parser.parse_args(argv)

    handlers = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in _SIGNALS} if handlers else {}
    if handlers:
        # SIGTERM ends the run like Ctrl-C, so the temporary folder is removed on the way out.
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args, handlers)
    finally:
        # A program that succeeded keeps ignoring signals to its exit; otherwise the old handlers return.
        if not (argv is None and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN):
            for s, handler in previous.items():
                signal.signal(s, handler)


def _identity(path: str):
    """What a path is on disk now, to tell whether DST was replaced; None when nothing is there."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _ignore_signals(handlers: bool) -> None:
    if handlers:  # DST is in place: from here on a signal changes nothing
        for s in _SIGNALS:
            signal.signal(s, signal.SIG_IGN)


def _run(args, handlers: bool) -> int:
    start = time.perf_counter()
    dst = os.path.abspath(args.dst)
    before = _identity(dst)
    try:
        # DST is checked before anything is read (and again by the writer once the source is read).
        check_destination(dst, force=args.force, sources=(args.src,))
        if is_lm_folder(args.src):
            if args.to == "diffusers":
                raise CheckpointError(f"{args.src}: a 5 Hz LM folder has no diffusers layout (diffusers has no planner)")
            write_lm_checkpoint(args.src, dst, force=args.force, dtype=args.dtype)
            _ignore_signals(handlers)
            print(f"converted 5 Hz LM {args.src} -> {args.dst} in {time.perf_counter() - start:.1f}s")
            return 0
        if args.to == "diffusers":
            if args.quantize:
                print("error: --quantize writes our layout only (diffusers has no int8 layout here)", file=sys.stderr)
                return 2
            conv, write = read_source(args.src, args.variant), write_diffusers
        else:
            conv, write = convert_checkpoint(args.src, args.variant), write_checkpoint
        extra = {"quantize": args.quantize} if args.quantize else {}
        with tqdm(total=len(COMPONENTS), desc="writing", unit="file") as bar:
            write(conv, dst, dtype=args.dtype, force=args.force,
                  progress=lambda name: (bar.set_postfix_str(name), bar.update()), **extra)
        _ignore_signals(handlers)
    except DestinationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, ConfigError, SourceConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a permission: DST is left as it was (destination.replace_folder)
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}; {dst} was left as it was", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Only the final rename changes what DST is; if it did, the write is done and the signal came late.
        if _identity(dst) == before:
            print(f"error: interrupted; {f'{dst} was left as it was' if before else 'nothing was written'}",
                  file=sys.stderr)
            return 130
        _ignore_signals(handlers)
    print(f"converted {conv.source} checkpoint ({conv.config.pipeline.model_version}) -> {args.dst} "
          f"({args.to} layout) in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
