"""Fidelity and time of the precision modes against our own fp32, on a mid-size random DiT.

    python benchmarks/bench_precision.py                  # hidden 1024, 8 layers, 10 s, 8 turbo steps
    python benchmarks/bench_precision.py --audio          # also decode with a real-size random VAE (fp32)

Modes: mixed (bf16 matmuls and attention, fp32 state; the bf16 default), pure-bf16 (everything bf16, the
official GPU numerics), int8 (int8 weights, fp32 activations) and mixed+int8. Each runs the 8-step turbo loop
from the same noise and condition as fp32; reported: latent cosine, max error / fp32 std, with --audio the SNR of
the fp32-decoded audio, and the loop time relative to pure-bf16 (ratios from one run on one machine).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from acestep_core import config as cfgs, sampling  # noqa: E402
from acestep_core.dit import DiT  # noqa: E402
from acestep_core.generate import Condition, generate_latents  # noqa: E402
from acestep_core.oobleck import Oobleck  # noqa: E402
from acestep_core.precision import PRECISIONS, Precision, apply_precision  # noqa: E402
from acestep_core.quantize import quantize_linears  # noqa: E402

BF16, FP32 = torch.bfloat16, torch.float32
MODES = {"fp32": (Precision("fp32", FP32, FP32, FP32), False),
         "mixed": (Precision("mixed", BF16, BF16, FP32), False),
         "pure-bf16": (Precision("pure-bf16", BF16, BF16, BF16), False),
         "int8": (Precision("fp32", FP32, FP32, FP32), True),
         "mixed+int8": (Precision("mixed", BF16, BF16, FP32), True)}
assert "pure-bf16" in PRECISIONS


def mid_size_dit(hidden: int, layers: int) -> DiT:
    real = cfgs.preset("turbo").dit
    cfg = dataclasses.replace(real, hidden_size=hidden, intermediate_size=3 * hidden, num_heads=hidden // 128,
                              num_kv_heads=max(1, hidden // 256), head_dim=128,
                              layer_types=tuple(("sliding", "full")[i % 2] for i in range(layers)))
    torch.manual_seed(0)
    return DiT(cfg).eval().requires_grad_(False)


def snr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.double(), x.double()
    return (10 * torch.log10(ref.pow(2).sum() / (ref - x).pow(2).sum().clamp(min=1e-30))).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--audio", action="store_true", help="decode with a real-size random fp32 VAE for the SNR")
    p.add_argument("--modes", default=",".join(MODES))
    args = p.parse_args()
    common.emit(common.machine_header("cpu"))
    base = mid_size_dit(args.hidden, args.layers)
    frames = int(args.seconds * 25)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(1, frames, base.cfg.latent_dim, generator=g)
    context = torch.randn(1, frames, base.context_dim, generator=g)
    states = torch.randn(1, 200, base.cfg.condition_dim, generator=g)
    timesteps = sampling.turbo_schedule(args.steps, 3.0)
    vae = Oobleck(cfgs.preset("turbo").vae).eval().requires_grad_(False) if args.audio else None
    results, ref = {}, None
    for name in args.modes.split(","):
        mode, int8 = MODES[name]
        dit = copy.deepcopy(base)
        if int8:
            quantize_linears(dit)
        dit = apply_precision(dit, "dit", mode)
        cond = Condition(states.to(mode.state), torch.ones(1, 200, dtype=torch.bool), context.to(mode.state))
        run = lambda: generate_latents(dit, noise.to(mode.state), timesteps, cond)  # noqa: E731
        with torch.no_grad():
            run()  # warm-up (oneDNN primitive caches)
            start = time.perf_counter()
            latents = run().float()
            seconds = time.perf_counter() - start
            audio = vae.decode(latents.transpose(1, 2)) if vae is not None else None
        if ref is None:
            ref = (latents, audio)
        row = {"kind": "precision", "mode": name, "hidden": args.hidden, "layers": args.layers,
               "seconds_audio": args.seconds, "steps": args.steps, "loop_s": round(seconds, 3),
               "latent_cosine": torch.nn.functional.cosine_similarity(latents.flatten(), ref[0].flatten(), dim=0).item(),
               "one_minus_cosine": 1 - torch.nn.functional.cosine_similarity(latents.flatten().double(), ref[0].flatten().double(), dim=0).item(),
               "max_err_over_std": ((latents - ref[0]).abs().max() / ref[0].std()).item()}
        if audio is not None:
            row["audio_snr_db"] = snr_db(ref[1], audio)
        results[name] = row
    pure = results.get("pure-bf16", {}).get("loop_s")
    for row in results.values():
        if pure:
            row["time_vs_pure_bf16"] = round(row["loop_s"] / pure, 3)
        common.emit(row)


if __name__ == "__main__":
    main()
