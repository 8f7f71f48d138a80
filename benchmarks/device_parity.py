"""The official tiny-checkpoint parity on any device: fp32 against the official fixture (1e-4), and the bf16
modes (pure-bf16, mixed) by latent cosine. Run by gpu_check.sh; exits non-zero on a failure.

    python benchmarks/device_parity.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from acestep_core.pipeline import load_pipeline
from acestep_core.safetensors_io import read_safetensors

TURBO = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "official_tiny_turbo"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    # Exact fp32 on GPUs: no TF32 in matmuls or convolutions (the fixture is plain fp32).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    strings = json.loads((TURBO / "reference" / "strings.json").read_text())
    ref = read_safetensors(TURBO / "reference" / "turbo_text2music.safetensors")
    request = dict(prompt=strings["caption"], lyrics=strings["lyrics"], audio_duration=6, bpm=120, timesignature="4",
                   keyscale="C major", vocal_language="en", latents=ref["initial_noise"].to(args.device),
                   output_type="latent")
    target, ok = ref["target_latents"], True
    runs = {"fp32": dict(dtype=torch.float32), "pure-bf16": dict(dtype=torch.bfloat16, precision="pure-bf16"),
            "mixed": dict(dtype=torch.bfloat16, precision="mixed")}
    for name, kwargs in runs.items():
        pipe = load_pipeline(TURBO / "checkpoints", args.device, **kwargs)
        noise = request["latents"].to(pipe.dtype)
        got = pipe(**{**request, "latents": noise}).latents.float().cpu()
        err = (got - target).abs().max().item()
        cos = torch.nn.functional.cosine_similarity(got.flatten().double(), target.flatten().double(), dim=0).item()
        passed = err <= 1e-4 if name == "fp32" else cos >= 0.999
        ok &= passed
        print(json.dumps({"kind": "device_parity", "device": args.device, "mode": name, "max_abs": err,
                          "cosine": cos, "pass": passed}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
