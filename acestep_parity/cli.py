"""`acestep parity`: our pipeline against a reference implementation, stage by stage (docs/parity-report.md).

    acestep parity --checkpoint DIR --against diffusers --task repaint --json r.json --html r.html
    acestep parity --checkpoint checkpoints/ --against official --official-src ACE-Step-1.5/ --official-python PY
    acestep parity --compare fp32.json bf16.json --html compare.html

Exit status: 0 every comparison passes (or --compare printed), 1 a comparison fails, 2 a bad argument, an
unusable reference environment or input (one line saying what to fix; no report is written), 3 any other
error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

from acestep_core.checkpoint import detect_layout
from acestep_core.convert.to_diffusers import read_source, write_diffusers
from acestep_core.hub import resolve_checkpoint

from . import engine
from .compare_reports import BadReport, compare_files
from .html_report import missing_matplotlib, render
from .case import ParityCase, stand_in_latents, stand_in_source
from .official import OfficialEnv, OfficialSetupError, compare_official, official_checkpoint
from .provenance import checkpoint_folders, command_line, fingerprint
from .report import Thresholds

OK, FAILED, USAGE, ERROR = 0, 1, 2, 3  # exit statuses of `acestep parity`
INSTALL_HINT = 'pip install "acestep-core[parity]"'


class ParityExit(Exception):
    """A one-line message and the exit status that goes with it."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ParityExit(f"{message} (see `{self.prog} --help`)", USAGE)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--checkpoint", metavar="DIR_OR_HUB_ID",
                   help="our layout, official checkpoints/, a diffusers pipeline folder or a Hub id")
    p.add_argument("--against", choices=("diffusers", "official"), default="diffusers",
                   help="reference implementation (default diffusers 0.42.1)")
    p.add_argument("--variant", help="model in a folder holding several: turbo, base, sft, ...")
    p.add_argument("--task", choices=("text2music", "repaint", "cover"), default="text2music")
    p.add_argument("--duration", type=float, default=10.0, metavar="S",
                   help="seconds (text2music, and the stand-in source when no --src-audio is given; default 10)")
    p.add_argument("--steps", type=int, metavar="N", help="sampler steps (default 8 turbo, 30 base/sft)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the shared initial noise (default 0)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report (needs matplotlib)")
    p.add_argument("--prompt", default=ParityCase.prompt)
    p.add_argument("--lyrics", default=ParityCase.lyrics, metavar="TEXT|@FILE")
    p.add_argument("--src-audio", metavar="FILE", help="48 kHz source for repaint / cover (default: a stand-in signal)")
    p.add_argument("--audio-codes", metavar="TEXT|@FILE", help="cover from 5 Hz audio codes instead of a source")
    p.add_argument("--repaint", nargs=2, type=float, metavar=("START", "END"),
                   help="repaint window in seconds (default: the middle third of the source)")
    p.add_argument("--max-rel", type=float, default=Thresholds.max_rel, help="fp32 pass: err/std at most this")
    p.add_argument("--min-cosine", type=float, default=Thresholds.min_cosine, help="bf16 pass: cosine at least this")
    p.add_argument("--min-snr", type=float, default=Thresholds.min_snr_db, help="audio pass: SNR (dB) at least this")
    official = p.add_argument_group("--against official")
    official.add_argument("--official-src", metavar="DIR", help="folder holding the official `acestep/` package")
    official.add_argument("--official-python", metavar="PY", help="a Python that can import it (default: this one)")
    official.add_argument("--official-pythonpath", metavar="PATHS",
                          help=f"prepended to PYTHONPATH for it ('{os.pathsep}'-separated), e.g. a pip --target folder")
    official.add_argument("--src-latents", metavar="FILE", help="safetensors with one tensor [T, 64]: the source's "
                          "latents for both sides (default: the VAE's, or a stand-in when its encoder cannot feed "
                          "the DiT)")
    official.add_argument("--cover-noise", type=float, default=0.0, metavar="S", help="cover_noise_strength (cover)")
    official.add_argument("--dcw", action="store_true", help="the wavelet correction after every step, on both sides")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="lay two reports side by side (terminal, and --html) instead of running a comparison")
    return p


def _require_diffusers() -> None:
    try:
        import diffusers
        import transformers  # noqa: F401
        from diffusers import AceStepPipeline  # noqa: F401
    except ImportError as e:
        raise ParityExit(f"the diffusers reference is not installed ({e}); install it with: {INSTALL_HINT}", USAGE)
    if diffusers.__version__ != engine.REFERENCE_VERSION:
        print(f"note: diffusers {diffusers.__version__} found; this comparison follows {engine.REFERENCE_VERSION}",
              file=sys.stderr)


def _text_or_file(value: str | None, flag: str) -> str | None:
    if value is None or not value.startswith("@"):
        return value
    try:
        with open(value[1:], encoding="utf-8") as f:
            return f.read().rstrip()
    except (OSError, UnicodeDecodeError) as e:
        raise ParityExit(f"{flag}: {value[1:]}: {e}", USAGE) from None


def _src_latents(args, pipe) -> torch.Tensor | None:
    """The given source latents [T, 64], a stand-in when the VAE's encoder cannot feed the DiT, or None."""
    if args.task not in ("repaint", "cover") or args.audio_codes is not None:
        if args.src_latents:
            raise ParityExit("--src-latents: only for a repaint or cover from a source (not with --audio-codes)", USAGE)
        return None
    width = pipe.config.dit.latent_dim
    if args.src_latents:
        from safetensors.torch import load_file

        try:
            tensors = list(load_file(args.src_latents).values())
        except Exception as e:  # safetensors raises its own error types for a bad file
            raise ParityExit(f"--src-latents: {args.src_latents}: {e}", USAGE) from None
        z = tensors[0] if len(tensors) == 1 else None
        z = z[0] if z is not None and z.dim() == 3 and z.shape[0] == 1 else z
        if z is None or z.dim() != 2 or z.shape[1] != width:
            raise ParityExit(f"--src-latents: {args.src_latents} must hold one tensor [T, {width}]", USAGE)
        return z.float()
    if pipe.config.vae.encoder_hidden_size // 2 == width:
        return None
    frames = max(1, round(args.duration * pipe.sample_rate / pipe.hop))
    print(f"the VAE's encoder yields {pipe.config.vae.encoder_hidden_size // 2} channels, the DiT takes {width}: "
          f"using {frames} frames of stand-in source latents for both sides", file=sys.stderr)
    return stand_in_latents(frames, width, args.seed)


def _case(args, pipe) -> ParityCase:
    from acestep_core import audio_io

    rate, hop = pipe.sample_rate, pipe.hop
    src = None
    if args.src_audio is not None:
        try:
            src = audio_io.read_audio(args.src_audio, rate)
        except ValueError as e:
            raise ParityExit(f"--src-audio: {e}", USAGE) from None
    codes = _text_or_file(args.audio_codes, "--audio-codes")
    latents = _src_latents(args, pipe) if args.against == "official" else None
    if args.task in ("repaint", "cover") and src is None and codes is None:
        seconds = args.duration if latents is None else latents.shape[0] * hop / rate
        src = stand_in_source(seconds, rate, hop, args.seed)
        print(f"no --src-audio: using a {src.shape[-1] / rate:.2f} s stand-in signal as the source", file=sys.stderr)
    if latents is not None and src.shape[-1] // hop != latents.shape[0]:
        raise ParityExit(f"--src-latents has {latents.shape[0]} frames, the source audio {src.shape[-1] // hop}", USAGE)
    case = ParityCase(task=args.task, prompt=args.prompt, lyrics=_text_or_file(args.lyrics, "--lyrics"),
                      duration=args.duration, steps=args.steps, seed=args.seed, src_audio=src, audio_codes=codes,
                      repaint_window=tuple(args.repaint) if args.repaint else None, src_latents=latents,
                      cover_noise_strength=args.cover_noise, dcw=args.dcw)
    try:
        case.check()
    except ValueError as e:
        raise ParityExit(str(e), USAGE) from None
    return case


def _diffusers_folder(checkpoint: str, variant: str | None, tmp: str) -> tuple[str, bool, list[str]]:
    """-> (a diffusers AceStepPipeline folder with the checkpoint's weights, whether it was converted, the
    folders the checkpoint's files are in)."""
    path = resolve_checkpoint(checkpoint, variant)
    layout, root = detect_layout(path, variant)
    if layout == "diffusers":
        return root, False, [root]
    folder = f"{tmp}/diffusers"
    print(f"writing {root} ({layout} layout) as a diffusers folder for both pipelines ...", file=sys.stderr)
    write_diffusers(read_source(path, variant), folder)
    return folder, True, checkpoint_folders(root, layout)


def _load_ours(folder: str, device, dtype):
    from acestep_core.pipeline import load_pipeline

    # Native arithmetic in `dtype` even on a CPU without bf16 units (where load_pipeline would compute in
    # fp32): the comparison is between two pipelines computing in the same precision.
    return load_pipeline(folder, device, dtype, compute_dtype=dtype)


def _load_reference(folder: str, device, dtype):
    from diffusers import AceStepPipeline

    ref = AceStepPipeline.from_pretrained(folder, dtype=dtype).to(device)
    ref.set_progress_bar_config(disable=True)
    return ref


def _run_diffusers(args, device, dtype, thresholds):
    _require_diffusers()
    if args.official_src or args.src_latents or args.cover_noise or args.dcw:
        raise ParityExit("--official-src, --src-latents, --cover-noise and --dcw need --against official", USAGE)
    with tempfile.TemporaryDirectory(prefix="acestep-parity-") as tmp:
        folder, converted, files = _diffusers_folder(args.checkpoint, args.variant, tmp)
        ours = _load_ours(folder, device, dtype)
        report = engine.compare(ours, _load_reference(folder, device, dtype), _case(args, ours), thresholds=thresholds)
    report.meta.update(converted_to_diffusers=converted, fingerprint=fingerprint(files))
    return report


def _run_official(args, device, dtype, thresholds):
    if not args.official_src:
        raise ParityExit("--against official needs --official-src DIR, the folder holding the official `acestep/` "
                         "package (a clone of ace-step/ACE-Step-1.5)", USAGE)
    paths = tuple(p for p in (args.official_pythonpath or "").split(os.pathsep) if p)
    env = OfficialEnv(args.official_src, args.official_python or sys.executable, paths)
    try:
        probe = env.probe()
        model_dir, version = official_checkpoint(args.checkpoint, args.variant, probe["variants"])
    except OfficialSetupError as e:
        raise ParityExit(str(e), USAGE) from None
    ours = _load_ours(model_dir, device, dtype)
    case = _case(args, ours)
    try:
        report = compare_official(ours, env, case, model_dir, version, thresholds=thresholds, probe=probe)
    except OfficialSetupError as e:
        raise ParityExit(str(e), USAGE) from None
    report.meta.update(converted_to_diffusers=False, fingerprint=fingerprint(checkpoint_folders(model_dir, "official")))
    return report


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def run(args, argv: list[str]) -> int:
    """`acestep parity` with parsed arguments (add_arguments) -> exit status."""
    if args.html and missing_matplotlib():
        raise ParityExit(missing_matplotlib(), USAGE)
    if args.compare:
        try:
            return compare_files(*args.compare, html=args.html)
        except BadReport as e:
            raise ParityExit(str(e), USAGE) from None
    if not args.checkpoint:
        raise ParityExit("--checkpoint is required (or --compare A.json B.json)", USAGE)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    thresholds = Thresholds(args.max_rel, args.min_cosine, args.min_snr)
    runner = _run_official if args.against == "official" else _run_diffusers
    report = runner(args, device, dtype, thresholds)
    report.meta.update(checkpoint=args.checkpoint, command=command_line(argv))
    print(report.table())
    if args.json:
        _write(args.json, json.dumps(report.to_json(), indent=2) + "\n")
    if args.html:
        _write(args.html, render(report))
    return OK if report.passed else FAILED


def main(argv: list[str] | None = None) -> int:
    """`acestep parity ...` (argv: the arguments after `parity`) -> exit status 0 / 1 / 2 / 3."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = add_arguments(_Parser(prog="acestep parity", description=__doc__.splitlines()[0])).parse_args(argv)
        return run(args, argv)
    except ParityExit as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {first}", file=sys.stderr)
        return ERROR


if __name__ == "__main__":
    sys.exit(main())
