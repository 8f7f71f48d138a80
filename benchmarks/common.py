"""Shared helpers for the benchmark scripts: machine header, timing, peak memory, FLOP formulas,
real-size model construction (diffusers / transformers with random weights) and the conversion
into our modules.

The scripts compare acestep-core against diffusers 0.42.1 / transformers at the real ACE-Step 1.5
turbo sizes. Weights are random (std 0.02) because only speed and memory are measured; a single
parity check per module guards against timing two different computations.

Every result is one JSON line on stdout (see `emit`); everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from acestep_core.config import preset

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY_TOKENIZER = FIXTURES / "official_tiny_turbo" / "checkpoints" / "Qwen3-Embedding-0.6B" / "tokenizer.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GIB = 1024**3


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


# --- machine ------------------------------------------------------------------------------------------------

def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("unknown", "", platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "native_bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
        "avx512f": "avx512f" in flags,
    }


def machine_header(device: str) -> dict:
    import diffusers
    import transformers

    info = {"kind": "machine", "date": datetime.datetime.now().isoformat(timespec="seconds"), **cpu_info(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(), "device": device, "python": platform.python_version(),
            "loadavg_1m": os.getloadavg()[0]}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def emit(record: dict) -> None:
    """One result = one JSON line on stdout (floats rounded for readability)."""
    def fix(v):
        if isinstance(v, float):
            return round(v, 4) if abs(v) >= 1e-3 else float(f"{v:.3g}")
        return v
    print(json.dumps({k: fix(v) for k, v in record.items()}), flush=True)


# --- memory -------------------------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_gib() -> float:
    return _status_kib("VmRSS") / 1024**2


def peak_rss_gib() -> float:
    """Peak resident set size of this process since start or the last `reset_peak_rss` (VmHWM)."""
    return _status_kib("VmHWM") / 1024**2


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs). False if unsupported."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def param_gib(module: torch.nn.Module) -> float:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total / GIB


# --- timing -------------------------------------------------------------------------------------------------

def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure(fn, *, repeats: int | None, warmup: int = 1, device="cpu", long_run_s: float = 20.0) -> dict:
    """Time one callable; see `compare`."""
    return compare({"fn": fn}, repeats=repeats, warmup=warmup, device=device, long_run_s=long_run_s)["fn"]


def compare(fns: dict, *, repeats: int | None, warmup: int = 1, device="cpu", long_run_s: float = 20.0) -> dict:
    """Warm each callable up `warmup` times, then time them interleaved (A B, B A, A B, ...) `repeats` times each.

    Interleaving makes a slow drift of the machine (other processes, thermal state) hit both sides alike.
    repeats=None picks 3, or 2 when a warm-up took longer than `long_run_s`. Per name: median seconds, the
    times, the peak RSS of its timed runs (VmHWM reset before each run), what a run added on top of the RSS
    before it ("act_peak_gib"), and cpu_util = process CPU seconds / wall seconds (about the thread count
    when the machine is otherwise idle; lower means the run was starved by other processes). On a shared,
    busy machine "min_s" and the CPU seconds "cpu_s" are steadier than the median wall time.
    The last warm-up's output is kept under "output" for parity checks; timed outputs are dropped at once.
    """
    res = {name: {"output": None, "warmup_s": None, "times": [], "cpu": [], "cpu_s": [], "peak": 0.0,
                  "act": 0.0}
           for name in fns}
    for name, fn in fns.items():
        for _ in range(warmup):
            res[name]["output"] = None
            sync(device)
            t0 = time.perf_counter()
            res[name]["output"] = fn()
            sync(device)
            res[name]["warmup_s"] = time.perf_counter() - t0
    if repeats is None:
        slowest = max((r["warmup_s"] or 0.0) for r in res.values())
        repeats = 2 if slowest > long_run_s else 3
    names = list(fns)
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):
            r = res[name]
            gc.collect()
            base = rss_gib()
            reset_peak_rss()
            if str(device).startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            out = fns[name]()
            sync(device)
            wall = time.perf_counter() - t0
            r["cpu_s"].append(time.process_time() - c0)
            r["cpu"].append(r["cpu_s"][-1] / wall)
            r["times"].append(wall)
            del out
            r["peak"] = max(r["peak"], peak_rss_gib())
            r["act"] = max(r["act"], peak_rss_gib() - base)
            if str(device).startswith("cuda"):
                r["cuda_peak"] = max(r.get("cuda_peak", 0.0), torch.cuda.max_memory_allocated() / GIB)
    out = {}
    for name, r in res.items():
        out[name] = {"median_s": statistics.median(r["times"]), "min_s": min(r["times"]),
                     "times_s": [round(t, 3) for t in r["times"]], "cpu_s": statistics.median(r["cpu_s"]),
                     "repeats": repeats, "warmup": warmup, "warmup_s": r["warmup_s"], "peak_rss_gib": r["peak"],
                     "act_peak_gib": r["act"], "cpu_util": statistics.median(r["cpu"]), "output": r["output"],
                     "loadavg_1m": os.getloadavg()[0]}
        if "cuda_peak" in r:
            out[name]["cuda_peak_gib"] = r["cuda_peak"]
    return out


def result_fields(prefix: str, m: dict) -> dict:
    keys = ("median_s", "min_s", "times_s", "cpu_s", "cpu_util", "peak_rss_gib", "act_peak_gib", "cuda_peak_gib")
    return {f"{prefix}_{k}": m[k] for k in keys if k in m}


# --- matmul peak --------------------------------------------------------------------------------------------

def matmul_peak(dtype: torch.dtype, device="cpu", repeats: int = 5) -> dict:
    """Achievable matmul FLOP/s: the best of a square 2048^3 product and the DiT's MLP shape (F.linear).

    "peak_gflops" uses the best wall time; "peak_gflops_cpu_norm" = FLOPs / CPU seconds x threads, which stays
    meaningful when other processes share the cores (compare it with the *_cpu_norm rates of the cases).
    """
    shapes = {"mm_2048": (2048, 2048, 2048), "linear_750x2048x6144": (750, 2048, 6144)}
    best, best_cpu, per = 0.0, 0.0, {}
    for name, (m, k, n) in shapes.items():
        a = torch.randn(m, k, dtype=dtype, device=device)
        w = torch.randn(n, k, dtype=dtype, device=device)  # [out, in] as nn.Linear stores it
        wt = w.T.contiguous()  # [in, out] for the plain a @ b product
        fn = (lambda: a @ wt) if name.startswith("mm") else (lambda: torch.nn.functional.linear(a, w))
        r = measure(fn, repeats=repeats, warmup=1, device=device)
        flops = 2.0 * m * k * n
        per[name] = flops / r["min_s"] / 1e9
        best = max(best, per[name])
        # CPU-time normalised: FLOPs per CPU second x threads, what the wall rate would be without other load.
        best_cpu = max(best_cpu, flops / r["cpu_s"] / 1e9 * torch.get_num_threads())
    return {"peak_gflops": best, "peak_gflops_cpu_norm": best_cpu, "per_shape_gflops": per,
            "cpu_util": r["cpu_util"]}


# --- FLOP counts (analytic, multiply-add = 2 FLOPs) ----------------------------------------------------------

def window_pairs(n: int, window: int) -> int:
    """Number of (query, key) pairs with |i - j| <= window among n positions."""
    w = min(window, n - 1)
    # n pairs on the diagonal, plus 2 * sum_{k=1..w} (n - k) off it.
    return n + 2 * (w * n - w * (w + 1) // 2)


def dit_flops(cfg, num_patches: int, cond_len: int, *, include_condition: bool = True) -> dict:
    """FLOPs of one DiT forward over `num_patches` patches with a `cond_len`-token condition.

    Per layer:
      self-attn   q, k, v, o projections: 2 P D (H d) + 2 * 2 P D (Hkv d) + 2 P (H d) D
                  scores + weighted sum:  2 * 2 H d * pairs,  pairs = P^2 (full) or #{|i-j| <= W} (sliding)
      cross-attn  q, o projections:       2 P D (H d) + 2 P (H d) D
                  scores + weighted sum:  2 * 2 H d P L
                  k, v of the condition:  2 * 2 L D (Hkv d)      (once per request with prepare_condition)
      MLP         gate, up, down:         3 * 2 P D I
    plus proj_in (2 P (C p) D), proj_out (2 P D (c p)) and the condition embedder (2 L Dc D, once per request).
    "dense" counts every sliding layer as full (what a dense masked attention kernel computes).
    """
    p, length = num_patches, cond_len
    d_model, h, hkv, hd, inter = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    proj_self = 2 * p * d_model * h * hd * 2 + 2 * 2 * p * d_model * hkv * hd
    cross = 2 * p * d_model * h * hd * 2 + 4 * h * hd * p * length
    cross_kv = 2 * 2 * length * d_model * hkv * hd
    mlp = 3 * 2 * p * d_model * inter
    useful = dense = 0
    for kind in cfg.layer_types:
        pairs = p * p if kind == "full" else window_pairs(p, cfg.sliding_window)
        useful += proj_self + 4 * h * hd * pairs + cross + mlp
        dense += proj_self + 4 * h * hd * p * p + cross + mlp
    edges = 2 * p * cfg.in_channels * cfg.patch_size * d_model + 2 * p * d_model * cfg.latent_dim * cfg.patch_size
    once = cfg.num_layers * cross_kv + 2 * length * cfg.condition_dim * d_model
    extra = once if include_condition else 0
    return {"flops": useful + edges + extra, "flops_dense": dense + edges + extra, "condition_flops": once}


def oobleck_decode_flops(cfg, frames: int, batch: int = 1) -> int:
    """Convolution FLOPs of one decoder pass over `frames` latent frames (Snake and additions ignored).

    conv1 (k7) -> per block: transposed conv (kernel 2s, stride s: 2 Cin Cout 2s per input position),
    3 residual units (conv k7 + conv k1 at the output width: 2 C^2 (7 + 1) per position) -> conv2 (k7).
    """
    width, mults, n = cfg.decoder_channels, (1, *cfg.channel_multiples), len(cfg.downsampling_ratios)
    length = frames
    f = 2 * cfg.latent_channels * width * mults[-1] * 7 * length
    for i, s in enumerate(reversed(cfg.downsampling_ratios)):
        c_in, c_out = width * mults[n - i], width * mults[n - i - 1]
        f += 2 * c_in * c_out * 2 * s * length
        length *= s
        f += 3 * 2 * c_out * c_out * (7 + 1) * length
    f += 2 * width * cfg.audio_channels * 7 * length
    return batch * f


def oobleck_encode_flops(cfg, samples: int, batch: int = 1) -> int:
    """Convolution FLOPs of one encoder pass over `samples` audio samples (mirror of the decoder)."""
    width, mults = cfg.encoder_hidden_size, (1, *cfg.channel_multiples)
    length = samples
    f = 2 * cfg.audio_channels * width * 7 * length
    for i, s in enumerate(cfg.downsampling_ratios):
        c_in, c_out = width * mults[i], width * mults[i + 1]
        f += 3 * 2 * c_in * c_in * (7 + 1) * length
        length //= s
        f += 2 * c_in * c_out * 2 * s * length
    f += 2 * width * mults[-1] * cfg.encoder_hidden_size * 3 * length
    return batch * f


def qwen3_flops(cfg, tokens: int) -> int:
    """Causal Qwen3 forward: projections, causal scores (L (L + 1) / 2 pairs) and SwiGLU, per layer."""
    d, h, hkv, hd, inter = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    per_layer = (2 * tokens * d * (h * hd + 2 * hkv * hd) + 2 * tokens * h * hd * d
                 + 4 * h * hd * tokens * (tokens + 1) // 2 + 6 * tokens * d * inter)
    return cfg.num_layers * per_layer


def stack_flops(cfg, tokens: int, num_layers: int, input_dim: int) -> int:
    """Bidirectional encoder stack (lyric / timbre encoders): embed + layers (window-aware attention)."""
    d, h, hkv, hd, inter = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
    f = 2 * tokens * input_dim * d
    for i in range(num_layers):
        pairs = tokens * tokens if cfg.layer_types[i] == "full" else window_pairs(tokens, cfg.sliding_window)
        f += (2 * tokens * d * (h * hd + 2 * hkv * hd) + 2 * tokens * h * hd * d + 4 * h * hd * pairs
              + 6 * tokens * d * inter)
    return f


# --- real-size configs ----------------------------------------------------------------------------------------

def real_config(pad_token_id: int | None = None):
    """Our AceStepConfig for ACE-Step 1.5 turbo at real size (`acestep_core.config.preset`), with the pad id of
    the tiny fixture tokenizer the benchmarks encode with (unless given)."""
    from tokenizers import Tokenizer

    config = preset("turbo")
    if pad_token_id is None:
        pad_token_id = Tokenizer.from_file(str(TINY_TOKENIZER)).token_to_id("<|endoftext|>")
    return dataclasses.replace(config, pipeline=dataclasses.replace(config.pipeline, pad_token_id=pad_token_id))


def _strip_meta(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


# --- random initialisation ----------------------------------------------------------------------------------

@torch.no_grad()
def init_small_(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Deterministic small random weights that keep activations finite at real sizes.

    1-D parameters named like norms -> 1; Snake alpha/beta (log-scale) -> small noise around 0;
    weight-norm magnitudes `weight_g` -> 1 (unit-norm filters, variance preserving); everything else N(0, std).
    Weight-norm directions (`weight_v`) are N(0, 1) (only their direction matters).
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in list(module.named_parameters()) + list(module.named_buffers()):
        if not p.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("weight_g", "original0"):
            p.fill_(1.0)
        elif leaf in ("weight_v", "original1"):
            p.copy_(torch.randn(p.shape, generator=gen))
        elif p.dim() == 1 and "norm" in name and leaf == "weight":
            p.fill_(1.0)
        elif leaf in ("alpha", "beta"):
            p.copy_(std * torch.randn(p.shape, generator=gen))
        elif leaf == "silence_latent":
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(std * torch.randn(p.shape, generator=gen))
    return module


def _build_on_meta(cls, kwargs: dict) -> torch.nn.Module:
    """Construct without paying for the default init of billions of parameters, then allocate on CPU."""
    with torch.device("meta"):
        m = cls(**kwargs)
    return m.to_empty(device="cpu")


# --- reference modules ---------------------------------------------------------------------------------------

def diffusers_dit(config, seed: int = 0):
    from diffusers import AceStepTransformer1DModel
    from acestep_core.convert import to_diffusers

    m = _build_on_meta(AceStepTransformer1DModel, _strip_meta(to_diffusers.transformer_config(config)))
    return init_small_(m, seed).eval().requires_grad_(False)


def diffusers_condition(config, seed: int = 1):
    from diffusers.pipelines.ace_step import AceStepConditionEncoder
    from acestep_core.convert import to_diffusers

    m = _build_on_meta(AceStepConditionEncoder, _strip_meta(to_diffusers.condition_encoder_config(config)))
    return init_small_(m, seed).eval().requires_grad_(False)


def diffusers_vae(config, seed: int = 2):
    from diffusers import AutoencoderOobleck
    from acestep_core.convert import to_diffusers

    m = _build_on_meta(AutoencoderOobleck, _strip_meta(to_diffusers.vae_config(config)))
    return init_small_(m, seed).eval().requires_grad_(False)


def transformers_qwen3(config, seed: int = 3):
    """transformers Qwen3Model at Qwen3-Embedding-0.6B's size (built normally: its rotary buffers need init)."""
    import transformers
    from acestep_core.convert import to_diffusers

    cfg = to_diffusers.text_encoder_config(config)
    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}
    qcfg = transformers.Qwen3Config(**cfg)
    qcfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    m = transformers.Qwen3Model(qcfg)
    for name, p in m.named_parameters():  # transformers' own init is N(0, 0.02) already; make it seeded
        with torch.no_grad():
            if p.dim() == 1:
                p.fill_(1.0)
    return m.eval().requires_grad_(False)


def ours_from(component: str, config, reference: torch.nn.Module, source: str = "diffusers") -> torch.nn.Module:
    """Convert a reference module's state dict in memory and load it into ours.

    load_state_dict(assign=True) adopts the converted tensors, so where the conversion is a pure rename our
    parameters share storage with the reference's (no second copy of the weights).
    """
    from acestep_core.loading import load_module
    from acestep_core.convert.convert import convert_component

    sd = reference.state_dict()
    tensors = convert_component(sd, source, component)
    return load_module(component, config, tensors)


def shared_fraction(ours: torch.nn.Module, reference: torch.nn.Module) -> float:
    ref = {p.data_ptr() for p in reference.parameters()}
    mine = list(ours.parameters())
    return sum(p.data_ptr() in ref for p in mine) / max(1, len(mine))


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / std(ref), computed in float64."""
    a, b = ours.detach().double().cpu(), ref.detach().double().cpu()
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch: ours {tuple(a.shape)} vs reference {tuple(b.shape)}")
    return float((a - b).abs().max() / b.std().clamp_min(1e-30))


def rms_rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref||, in float64."""
    a, b = ours.detach().double().cpu(), ref.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_parity(name: str, ours: torch.Tensor, ref: torch.Tensor, tol: float, *, metric: str = "max") -> float:
    """Raise unless ours matches the reference. metric "max": max |ours - ref| / std(ref) (fp32);
    "rms": ||ours - ref|| / ||ref|| (bf16, where a single element's rounding says little). Returns the metric."""
    if not torch.isfinite(ref.float()).all():
        raise AssertionError(f"{name}: reference output is not finite; lower the init std")
    err_max, err_rms = rel_err(ours, ref), rms_rel_err(ours, ref)
    err = err_max if metric == "max" else err_rms
    status = "ok" if err < tol else "MISMATCH"
    log(f"[parity] {name}: max|ours - ref| / std(ref) = {err_max:.3g}, ||ours - ref|| / ||ref|| = {err_rms:.3g} "
        f"(checked: {metric} < {tol:g}) {status}")
    if err >= tol:
        raise AssertionError(f"{name}: ours and the reference disagree ({metric} rel err {err:.3g} >= {tol:g})")
    return err


def parity_tolerance(dtype: torch.dtype) -> tuple[float, str]:
    """fp32: max error below 1e-3 of the output std; bf16: RMS error below 2 % of the output RMS."""
    return (1e-3, "max") if dtype == torch.float32 else (2e-2, "rms")


# --- command line -------------------------------------------------------------------------------------------

def parser(description: str, cases: list[str], default_cases: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--cases", default=",".join(default_cases),
                   help=f"comma-separated subset of: {','.join(cases)} (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per case (default: 3, or 2 when the warm-up took over 20 s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default: 1)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-header", action="store_true", help="do not print the machine header line")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    return p


def setup(args, all_cases: list[str]) -> list[str]:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available in this torch build / machine")
    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in all_cases]
    if bad:
        raise SystemExit(f"unknown case(s) {bad}; choose from {all_cases}")
    if not (args.no_header or args._child):
        emit(machine_header(args.device))
    torch.manual_seed(0)
    return cases


def run_isolated(script: str, cases: list[str]) -> None:
    """Re-run this script once per case in a fresh interpreter (per-case peak RSS), forwarding its output."""
    argv = sys.argv[1:]
    out = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--cases":
            skip = True
            continue
        if a.startswith("--cases=") or a == "--isolate":
            continue
        out.append(a)
    for case in cases:
        cmd = [sys.executable, script, "--cases", case, "--_child", "--no-isolate", *out]
        log(f"[isolate] {case}: fresh process")
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(r.stdout)
        sys.stdout.flush()
        if r.returncode:
            emit({"kind": "error", "case": case, "returncode": r.returncode})


# --- profiling ----------------------------------------------------------------------------------------------

def profile_top(fn, n: int = 15, device="cpu") -> tuple[list[dict], str]:
    """One call of fn under torch.profiler -> (top-n ops by self CPU time as dicts, the printed table)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if str(device).startswith("cuda") else [])
    with profile(activities=acts, record_shapes=True) as prof:
        fn()
        sync(device)
    avg = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in avg) or 1
    top = sorted(avg, key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    rows = [{"op": e.key, "calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6,
             "pct": 100 * e.self_cpu_time_total / total} for e in top]
    table = avg.table(sort_by="self_cpu_time_total", row_limit=n)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=n)
    return rows, table + "\n" + by_shape


def extra_ratios(ours: dict, ref: dict) -> dict:
    """Ratios (reference / ours) of the best wall time and of the CPU seconds: steadier on a busy machine."""
    return {"ratio_min": ref["min_s"] / ours["min_s"], "ratio_cpu": ref["cpu_s"] / ours["cpu_s"]}


# --- results table ------------------------------------------------------------------------------------------

def markdown_table(lines: list[str]) -> str:
    """JSON result lines -> a markdown table (the README's results table): python benchmarks/common.py *.jsonl"""
    head = ("bench", "case", "dtype", "ours s", "diffusers s", "ratio (median)", "ratio (min)", "ratio (cpu)",
            "ours % peak", "ref % peak", "ours peak RSS GiB", "ref peak RSS GiB", "ours cpu util")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, nd=2):
        return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r.get("kind") or r.get("bench") in (None, "dit_profile", "vae_profile"):
            continue
        if r.get("bench") == "matmul":
            rows.append(f"| matmul | {r['case']} | {r['dtype']} | peak {r['peak_gflops']:.1f} GFLOP/s |" + " |" * 9)
            continue
        rows.append("| " + " | ".join([
            r.get("bench", ""), r.get("case", ""), r.get("dtype", ""), f(r.get("ours_s")), f(r.get("diffusers_s")),
            f(r.get("ratio")), f(r.get("ratio_min")), f(r.get("ratio_cpu")), f(r.get("ours_pct_peak"), 1),
            f(r.get("diffusers_pct_peak", r.get("reference_pct_peak")), 1),
            f(r.get("ours_peak_rss_gib", r.get("peak_rss_gib"))),
            f(r.get("diffusers_peak_rss_gib", r.get("reference_peak_rss_gib"))), f(r.get("ours_cpu_util"))]) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    text = []
    for path in sys.argv[1:]:
        with open(path) as fh:
            text.extend(fh.readlines())
    print(markdown_table(text))
