"""Oobleck VAE decode / encode (ACE-Step 1.5 VAE, real size, random weights): acestep-core vs diffusers.

    python benchmarks/bench_vae.py                                   # dec10, enc10 fp32 (one process per case)
    python benchmarks/bench_vae.py --cases dec60,enc60 --repeats 2
    python benchmarks/bench_vae.py --cases dec240_chunked --dtype bf16 --warmup 0 --repeats 1

Cases (batch 1, stereo 48 kHz):
  decN / encN       one pass over N seconds, both implementations (ours: chunk_size=None / chunk_seconds=None,
                    as diffusers does without tiling); ratio = diffusers_s / ours_s.
  dec240_chunked    ours only: 240 s decoded in overlapping windows (--chunk frames, default 256 = what the
                    pipeline uses on CPU) with the reference model freed first, so the peak RSS is what a user
                    of ours pays (target: < 3 GiB in bf16). --with-diffusers also times diffusers' tiled decode.
Each case runs in a fresh interpreter by default (--no-isolate to share one), so peak RSS is per case.
"""

from __future__ import annotations

import gc
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CASES = ["dec10", "dec60", "enc10", "enc60", "dec240_chunked"]
DEFAULT = ["dec10", "enc10"]


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], CASES, DEFAULT)
    p.add_argument("--no-isolate", action="store_true", help="run every case in this process")
    p.add_argument("--chunk", type=int, default=512, help="decode window in latent frames for dec240_chunked")
    p.add_argument("--with-diffusers", action="store_true", help="dec240_chunked: also time diffusers (tiled)")
    p.add_argument("--profile", action="store_true",
                   help="profile one call of each implementation (top ops to stderr and a JSON line)")
    args = p.parse_args()
    cases = common.setup(args, CASES)
    if not args.no_isolate and len(cases) > 1:
        common.run_isolated(os.path.abspath(__file__), cases)
        return
    dtype, device = common.DTYPES[args.dtype], args.device
    config = common.real_config()
    vcfg = config.vae
    peak = common.matmul_peak(dtype, device)["peak_gflops"]

    for case in cases:
        ref = common.diffusers_vae(config)
        ours = common.ours_from("vae", config, ref)  # weight norm folded: new tensors
        ref, ours = ref.to(device=device, dtype=dtype), ours.to(device=device, dtype=dtype)
        gen = torch.Generator().manual_seed(0)
        chunked = case == "dec240_chunked"
        seconds = 240 if chunked else int(case[3:])
        frames = seconds * vcfg.sampling_rate // vcfg.hop_length
        rec = {"bench": "vae", "case": case, "dtype": args.dtype, "device": device, "seconds": seconds,
               "frames": frames}
        res = {}
        with torch.inference_mode():
            if case.startswith("dec"):
                z = torch.randn(1, vcfg.latent_channels, frames, generator=gen).to(device=device, dtype=dtype)
                flops = common.oobleck_decode_flops(vcfg, frames)
                if chunked:
                    rec["chunk_frames"] = args.chunk
                    if args.with_diffusers:
                        ref.enable_tiling()
                        res["diffusers"] = common.measure(lambda: ref.decode(z).sample, repeats=args.repeats,
                                                          warmup=args.warmup, device=device)
                    del ref
                    gc.collect()
                    common.reset_peak_rss()
                    res["ours"] = common.measure(lambda: ours.decode(z, chunk_size=args.chunk),
                                                 repeats=args.repeats, warmup=args.warmup, device=device)
                    # Chunking recomputes the overlaps: count the convolutions actually run.
                    stride = args.chunk - 2 * 64
                    windows = [(max(0, s - 64), min(frames, s + stride + 64)) for s in range(0, frames, stride)]
                    rec["gflop_with_overlaps"] = sum(common.oobleck_decode_flops(vcfg, e - s)
                                                     for s, e in windows) / 1e9
                else:
                    res = common.compare({"diffusers": lambda: ref.decode(z).sample,
                                          "ours": lambda: ours.decode(z, chunk_size=None)},
                                         repeats=args.repeats, warmup=args.warmup, device=device)
            else:
                samples = frames * vcfg.hop_length
                wave = (0.1 * torch.randn(1, vcfg.audio_channels, samples, generator=gen)).to(device=device,
                                                                                                dtype=dtype)
                flops = common.oobleck_encode_flops(vcfg, samples)
                res = common.compare({"diffusers": lambda: ref.encode(wave).latent_dist.mean,
                                      "ours": lambda: ours.encode(wave, chunk_seconds=None)},
                                     repeats=args.repeats, warmup=args.warmup, device=device)
            if args.profile and not chunked:
                calls = {"ours": lambda: ours.decode(z, chunk_size=None) if case.startswith("dec")
                         else ours.encode(wave, chunk_seconds=None)}
                if "diffusers" in res:
                    calls["diffusers"] = (lambda: ref.decode(z).sample) if case.startswith("dec") else (
                        lambda: ref.encode(wave).latent_dist.mean)
                for name, fn in calls.items():
                    rows, table = common.profile_top(fn, device=device)
                    common.log(f"--- profile {case} {name} ---\n{table}")
                    common.emit({"bench": "vae_profile", "case": case, "variant": name, "dtype": args.dtype,
                                 "top_ops": rows})
        rec["ours_s"] = res["ours"]["median_s"]
        rec["ours_s_per_audio_s"] = rec["ours_s"] / seconds
        if "diffusers" in res:
            rec["diffusers_s"] = res["diffusers"]["median_s"]
            rec["diffusers_s_per_audio_s"] = rec["diffusers_s"] / seconds
            rec["ratio"] = rec["diffusers_s"] / rec["ours_s"]
            rec.update(common.extra_ratios(res["ours"], res["diffusers"]))
            outs = (res["ours"]["output"], res["diffusers"]["output"])
            if all(o is not None for o in outs):
                tol, metric = common.parity_tolerance(dtype)
                rec["parity_rel_err"] = common.check_parity(f"vae {case} {args.dtype}", *outs, tol, metric=metric)
                rec["parity_metric"] = metric
        rec["gflop"] = flops / 1e9
        rec["ours_gflops"] = flops / rec["ours_s"] / 1e9
        rec["matmul_peak_gflops"] = peak
        rec["ours_pct_peak"] = 100 * rec["ours_gflops"] / peak
        if "diffusers" in res:
            rec["diffusers_pct_peak"] = 100 * flops / rec["diffusers_s"] / 1e9 / peak
        rec["ours_weight_gib"] = common.param_gib(ours)
        rec.update(common.result_fields("ours", res["ours"]))
        if "diffusers" in res:
            rec.update(common.result_fields("diffusers", res["diffusers"]))
        rec["loadavg_1m"] = res["ours"]["loadavg_1m"]
        rec["repeats"], rec["warmup"] = res["ours"]["repeats"], res["ours"]["warmup"]
        common.emit(rec)
        del res, ours
        gc.collect()


if __name__ == "__main__":
    main()
