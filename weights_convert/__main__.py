"""python -m weights_convert SRC DST [--to ours|diffusers] [--dtype fp32|bf16|fp16] [--variant NAME] [--force]

SRC is an official `checkpoints/` folder (or the acestep-v15-* folder inside it) or a diffusers
AceStepPipeline folder (with --to diffusers, also our layout); DST is written in our layout (see
weights_convert/convert.py) or, with --to diffusers, as a diffusers AceStepPipeline folder (see
weights_convert/to_diffusers.py). Errors print one line and exit with status 1; nothing is left at DST.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from tqdm import tqdm


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weights_convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="official checkpoints/ folder, an acestep-v15-* folder, or a diffusers pipeline "
                                    "folder (with --to diffusers, also a folder in our layout)")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--to", choices=("ours", "diffusers"), default="ours",
                        help="layout of DST: ours (default) or a diffusers AceStepPipeline folder")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                        help="store tensors in this dtype (default: keep the source dtype)")
    parser.add_argument("--variant", default=None, help="model folder to pick from an official checkpoints/ folder, "
                                                         "e.g. turbo, base, sft, xl-turbo")
    parser.add_argument("--force", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)

    from acestep_core.config import ConfigError
    from acestep_core.safetensors_io import CheckpointError

    from .configs import SourceConfigError
    from .convert import COMPONENTS, convert_checkpoint, write_checkpoint

    start = time.perf_counter()
    # SIGTERM ends the run like Ctrl-C, so the temporary folder is removed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        import os

        if os.path.exists(args.dst) and not args.force:
            raise CheckpointError(f"{os.path.abspath(args.dst)}: already exists (use --force to replace it)")
        if args.to == "diffusers":
            from .to_diffusers import read_source, write_diffusers

            conv, write = read_source(args.src, args.variant), write_diffusers
        else:
            conv, write = convert_checkpoint(args.src, args.variant), write_checkpoint
        with tqdm(total=len(COMPONENTS), desc="writing", unit="file") as bar:
            write(conv, args.dst, dtype=args.dtype, force=args.force,
                  progress=lambda name: (bar.set_postfix_str(name), bar.update()))
    except (CheckpointError, ConfigError, SourceConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"converted {conv.source} checkpoint ({conv.config.pipeline.model_version}) -> {args.dst} "
          f"({args.to} layout) in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
