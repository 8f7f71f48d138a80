"""Checkpoint load time: our converted layout vs diffusers `AceStepPipeline.from_pretrained` of the same weights.

    python benchmarks/bench_load.py                      # bf16 weights (~6 GB per folder), 2 loads each
    python benchmarks/bench_load.py --dtype fp32 --keep /tmp/acestep_ckpts

Steps:
  1. random real-size weights for all six components, written as a diffusers AceStepPipeline folder
     (acestep_core.convert.to_diffusers.write_diffusers);
  2. `python -m weights_convert DIFFUSERS OURS` (timed: the one-off conversion a user runs);
  3. each loader in a fresh interpreter (imports timed apart from loading), --repeats times, alternating:
       ours            acestep_core.pipeline.load_pipeline(OURS)          (memory-mapped safetensors, assign=True)
       ours_from_diff  acestep_core.pipeline.load_pipeline(DIFFUSERS)     (converted in memory on every load)
       diffusers       diffusers.AceStepPipeline.from_pretrained(DIFFUSERS, torch_dtype=...)
     "load_s" is the call itself; "touch_s" then reads every parameter once (a sum), which pays for pages a
     memory-mapped loader has not read yet, so load_s + touch_s is comparable across loaders. The first
     load of each loader warms the page cache and is not counted unless --repeats 1.
ratio = diffusers (load + touch) / ours (load + touch).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CASES = ["load"]
LOADERS = ("ours", "ours_from_diff", "diffusers")

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
kind, path, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
if kind == "diffusers":
    from diffusers import AceStepPipeline
else:
    from acestep_core.pipeline import load_pipeline
t1 = time.perf_counter()
if kind == "diffusers":
    pipe = AceStepPipeline.from_pretrained(path, torch_dtype=dtype)
    mods = [pipe.text_encoder, pipe.vae, pipe.transformer, pipe.condition_encoder, pipe.audio_tokenizer,
            pipe.audio_token_detokenizer]
else:
    pipe = load_pipeline(path, dtype=dtype)
    mods = [pipe.text_encoder, pipe.vae, pipe.dit, pipe.condition_encoder, pipe.audio_tokenizer, pipe.audio_detokenizer]
t2 = time.perf_counter()
total = 0.0
n = 0
with torch.no_grad():
    for m in mods:
        for p in m.parameters():
            total += float(p.float().sum()) if p.numel() < 2**24 else float(p.sum(dtype=torch.float32))
            n += p.numel()
t3 = time.perf_counter()
hwm = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1])
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "touch_s": t3 - t2, "params": n,
                  "peak_rss_gib": hwm / 1024**2}))
"""


def write_folders(root: str, dtype: torch.dtype) -> tuple[str, str, dict]:
    from acestep_core.loading import COMPONENTS, build_module
    from acestep_core.convert.convert import Converted
    from acestep_core.convert.to_diffusers import write_diffusers

    config = common.real_config()
    components = {}
    for i, name in enumerate(COMPONENTS):
        common.log(f"random {name} ...")
        with torch.device("meta"):
            m = build_module(name, config, "meta")
        m = common.init_small_(m.to_empty(device="cpu"), seed=i)
        # Cast component by component so only one fp32 copy is alive at a time.
        components[name] = {k: v.to(dtype) for k, v in m.state_dict().items()}
        del m
        gc.collect()
    silence = 0.5 * torch.randn(1, 15000, config.dit.latent_dim, generator=torch.Generator().manual_seed(9))
    conv = Converted(config, components, silence, str(common.TINY_TOKENIZER), "bench")
    diff = os.path.join(root, "diffusers")
    ours = os.path.join(root, "ours")
    t0 = time.perf_counter()
    write_diffusers(conv, diff, force=True)
    write_s = time.perf_counter() - t0
    del conv, components
    gc.collect()
    common.log("python -m weights_convert DIFFUSERS OURS ...")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "weights_convert", diff, ours, "--force"], check=True, cwd=common.ROOT,
                   stdout=subprocess.DEVNULL)
    convert_s = time.perf_counter() - t0
    sizes = {k: sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(d) for f in fs) / common.GIB
             for k, d in (("diffusers", diff), ("ours", ours))}
    return diff, ours, {"write_diffusers_s": write_s, "convert_cli_s": convert_s, "folder_gib": sizes}


def load_once(kind: str, path: str, dtype_name: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, kind, path, dtype_name], stdout=subprocess.PIPE, text=True,
                       cwd=common.ROOT, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], CASES, CASES)
    p.set_defaults(dtype="bf16")
    p.add_argument("--keep", default=None, help="folder for the two checkpoints (kept; reused when present)")
    args = p.parse_args()
    common.setup(args, CASES)
    dtype = common.DTYPES[args.dtype]
    dtype_name = {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]
    root = args.keep or tempfile.mkdtemp(prefix="acestep_load_", dir=os.environ.get("TMPDIR", "/tmp"))
    try:
        diff, ours = os.path.join(root, "diffusers"), os.path.join(root, "ours")
        if args.keep and os.path.isdir(diff) and os.path.isdir(ours):
            prep = {"reused": root}
        else:
            diff, ours, prep = write_folders(root, dtype)
        paths = {"ours": ours, "ours_from_diff": diff, "diffusers": diff}
        repeats = args.repeats or 2
        runs = {k: [] for k in LOADERS}
        for k in LOADERS:  # warm the page cache (and catch errors early)
            common.log(f"warm-up load: {k}")
            first = load_once(k, paths[k], dtype_name)
            if repeats == 1 or args.warmup == 0:
                runs[k].append(first)
        for i in range(repeats if args.warmup else repeats - 1):
            for k in (LOADERS if i % 2 == 0 else LOADERS[::-1]):
                common.log(f"load {i + 1}/{repeats}: {k}")
                runs[k].append(load_once(k, paths[k], dtype_name))
        med = {k: {f: statistics.median(r[f] for r in v) for f in ("import_s", "load_s", "touch_s", "peak_rss_gib")}
               for k, v in runs.items()}
        for k in LOADERS:
            med[k]["total_s"] = med[k]["load_s"] + med[k]["touch_s"]
        rec = {"bench": "load", "case": "load", "dtype": args.dtype, **prep,
               "ours_s": med["ours"]["total_s"], "diffusers_s": med["diffusers"]["total_s"],
               "ratio": med["diffusers"]["total_s"] / med["ours"]["total_s"],
               "ours_from_diffusers_s": med["ours_from_diff"]["total_s"],
               "detail": {k: {f: round(v, 3) for f, v in m.items()} for k, m in med.items()},
               "params": runs["ours"][0]["params"], "diffusers_params": runs["diffusers"][0]["params"],
               "repeats": repeats, "page_cache": "warm", "loadavg_1m": os.getloadavg()[0]}
        common.emit(rec)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
