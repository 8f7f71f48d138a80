"""DiT forward (ACE-Step 1.5 turbo, real size, random weights): acestep-core vs diffusers.

    python benchmarks/bench_dit.py                                   # matmul peaks, 10 s and 60 s, fp32
    python benchmarks/bench_dit.py --cases dit10 --dtype bf16 --repeats 1
    python benchmarks/bench_dit.py --cases dit240 --variants step,diffusers

Per case (batch 1, a 365-token condition = 300 lyric + 1 timbre + 64 caption tokens):
  <case>       ours DiT(..., encoder_hidden_states=...) (condition K/V projected inside) vs diffusers' forward
  <case>_step  ours with `prepare_condition` done once (the per-step cost of a sampler) vs diffusers' forward
               (diffusers has no condition cache: every step of its pipeline pays the full forward).
  <case>_compiled  the step under torch.compile, what `pipe.compile()` does (variant "compiled", not in the
               defaults: the first call's compile time is reported as compile_s).
ratio = diffusers_s / ours_s (> 1: ours is faster). pct_peak = achieved FLOP/s / matmul peak of the same dtype,
FLOPs counted analytically (common.dit_flops; window-aware for the sliding layers).
"""

from __future__ import annotations

import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SECONDS = {"dit10": 10, "dit60": 60, "dit240": 240}
CASES = ["matmul_fp32", "matmul_bf16", *SECONDS]
DEFAULT = ["matmul_fp32", "matmul_bf16", "dit10", "dit60"]
COND_TOKENS = 300 + 1 + 64
LATENT_RATE = 25  # latent frames per second (48000 / 1920)


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], CASES, DEFAULT)
    p.add_argument("--variants", default="full,step,diffusers",
                   help="what to time per DiT case: full (ours, condition inside), step (ours, prepared "
                        "condition), compiled (step under torch.compile = pipe.compile()), diffusers "
                        "(default: %(default)s)")
    p.add_argument("--cond-tokens", type=int, default=COND_TOKENS)
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile one call of each variant (top ops to stderr and a JSON line)")
    args = p.parse_args()
    cases = common.setup(args, CASES)
    variants = set(args.variants.split(","))
    dtype, device = common.DTYPES[args.dtype], args.device

    peaks = {}
    for name in ("fp32", "bf16"):
        if f"matmul_{name}" in cases or (name == args.dtype and any(c in SECONDS for c in cases)):
            r = common.matmul_peak(common.DTYPES[name], device)
            peaks[name] = r["peak_gflops"]
            peaks[name + "_cpu"] = r["peak_gflops_cpu_norm"]
            common.emit({"bench": "matmul", "case": f"matmul_{name}", "dtype": name, "device": device, **r})

    dit_cases = [c for c in cases if c in SECONDS]
    if not dit_cases:
        return
    config = common.real_config()
    common.log("building diffusers AceStepTransformer1DModel (random weights) ...")
    ref = common.diffusers_dit(config).to(device=device, dtype=dtype)
    ours = common.ours_from("dit", config, ref)
    common.log(f"weights: diffusers {common.param_gib(ref):.2f} GiB, ours {common.param_gib(ours):.2f} GiB, "
               f"shared storage {100 * common.shared_fraction(ours, ref):.0f}% of our tensors")
    gc.collect()
    checked = False
    gen = torch.Generator().manual_seed(0)
    for case in dit_cases:
        frames = SECONDS[case] * LATENT_RATE
        patches = -(-frames // config.dit.patch_size)

        def rnd(*shape):
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

        x, ctx = rnd(1, frames, config.dit.latent_dim), rnd(1, frames, config.dit.in_channels - config.dit.latent_dim)
        cond = rnd(1, args.cond_tokens, config.dit.condition_dim)
        t = torch.full((1,), 0.7, dtype=dtype, device=device)

        with torch.inference_mode():
            fns = {}
            if "diffusers" in variants:
                fns["diffusers"] = lambda: ref(hidden_states=x, timestep=t, timestep_r=t, encoder_hidden_states=cond,
                                               context_latents=ctx, return_dict=False)[0]
            if "full" in variants:
                fns["full"] = lambda: ours(x, t, t, cond, ctx)
            kv = ours.prepare_condition(cond) if "step" in variants else None
            if "step" in variants:
                fns["step"] = lambda: ours(x, t, t, None, ctx, cross_kv=kv)
            compile_s = None
            if "compiled" in variants:
                kv = kv or ours.prepare_condition(cond)
                compiled = torch.compile(ours.forward)  # = AceStepPipeline.compile()
                start = time.perf_counter()
                compiled(x, t, t, None, ctx, cross_kv=kv)
                compile_s = time.perf_counter() - start
                fns["compiled"] = lambda: compiled(x, t, t, None, ctx, cross_kv=kv)
            common.log(f"{case}: timing {', '.join(fns)} (interleaved) ...")
            res = common.compare(fns, repeats=args.repeats, warmup=args.warmup, device=device)
            if args.profile:
                for name, fn in fns.items():
                    rows, table = common.profile_top(fn, device=device)
                    common.log(f"--- profile {case} {name} ---\n{table}")
                    common.emit({"bench": "dit_profile", "case": case, "variant": name, "dtype": args.dtype,
                                 "top_ops": rows})
            del kv
            err = None
            if not checked and "diffusers" in res and res["diffusers"]["output"] is not None:
                mine = next((res[k]["output"] for k in ("full", "step") if k in res and res[k]["output"] is not None),
                            None)
                if mine is not None:
                    tol, metric = common.parity_tolerance(dtype)
                    err = common.check_parity(f"dit {case} {args.dtype}", mine, res["diffusers"]["output"], tol,
                                              metric=metric)
                    checked = True

        for variant in ("full", "step", "compiled"):
            if variant not in res:
                continue
            flops = common.dit_flops(config.dit, patches, args.cond_tokens, include_condition=variant == "full")
            ref_flops = common.dit_flops(config.dit, patches, args.cond_tokens, include_condition=True)
            rec = {"bench": "dit", "case": case if variant == "full" else f"{case}_{variant}", "dtype": args.dtype,
                   "device": device, "frames": frames, "patches": patches, "cond_tokens": args.cond_tokens,
                   "ours_s": res[variant]["median_s"]}
            if "diffusers" in res:
                rec["diffusers_s"] = res["diffusers"]["median_s"]
                rec["ratio"] = rec["diffusers_s"] / rec["ours_s"]
                rec.update(common.extra_ratios(res[variant], res["diffusers"]))
            rec["gflop"] = flops["flops"] / 1e9
            rec["gflop_dense_attn"] = flops["flops_dense"] / 1e9
            rec["ours_gflops"] = flops["flops"] / rec["ours_s"] / 1e9
            peak = peaks.get(args.dtype)
            if peak:
                rec["matmul_peak_gflops"] = peak
                rec["ours_pct_peak"] = 100 * rec["ours_gflops"] / peak
                if "diffusers" in res:
                    rec["diffusers_pct_peak"] = 100 * ref_flops["flops"] / rec["diffusers_s"] / 1e9 / peak
            threads = torch.get_num_threads()
            rec["ours_gflops_cpu_norm"] = flops["flops"] / res[variant]["cpu_s"] / 1e9 * threads
            if peaks.get(args.dtype + "_cpu"):
                rec["matmul_peak_gflops_cpu_norm"] = peaks[args.dtype + "_cpu"]
                rec["ours_pct_peak_cpu_norm"] = 100 * rec["ours_gflops_cpu_norm"] / peaks[args.dtype + "_cpu"]
                if "diffusers" in res:
                    rec["diffusers_pct_peak_cpu_norm"] = (100 * ref_flops["flops"] / res["diffusers"]["cpu_s"] / 1e9
                                                          * threads / peaks[args.dtype + "_cpu"])
            rec["ours_weight_gib"] = common.param_gib(ours)
            rec.update(common.result_fields("ours", res[variant]))
            if "diffusers" in res:
                rec.update(common.result_fields("diffusers", res["diffusers"]))
            rec["parity_rel_err"] = err
            if variant == "compiled":
                rec["compile_s"] = compile_s
            rec["parity_metric"] = common.parity_tolerance(dtype)[1]
            rec["loadavg_1m"] = res[variant]["loadavg_1m"]
            rec["repeats"] = res[variant]["repeats"]
            rec["warmup"] = res[variant]["warmup"]
            common.emit(rec)
        del res, x, ctx, cond
        gc.collect()


if __name__ == "__main__":
    main()
