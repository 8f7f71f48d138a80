"""Long songs on the TINY demo model (issue 10): time and peak RSS of 1, 5 and 10 minute text2music requests.

    python benchmarks/bench_long.py                       # 60, 300, 600 s, one fresh process per length
    python benchmarks/bench_long.py --cases long60,long300 --vae-chunk 0    # 0 = decode in one pass

The demo model (acestep_core.demo.write_demo_checkpoint) has the real audio geometry (48 kHz stereo, 25 Hz
latents, 64 channels) and tiny widths, so what grows with the length is the activation memory: latents,
attention over the patches, the VAE decode and the output waveform. Each length runs in a fresh interpreter
so its peak RSS is its own; "growth_gib" = peak RSS - RSS after loading. The VAE decodes in windows by default
(the pipeline's vae_chunk_size=256), as a user gets it. Memory should grow linearly with the length; the
last line fits peak growth against seconds and reports the quadratic share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SECONDS = {"long60": 60, "long300": 300, "long600": 600}
CASES = list(SECONDS)

CHILD = r"""
import json, sys, time
import torch
sys.path.insert(0, sys.argv[4])
import common
from acestep_core.pipeline import load_pipeline
path, seconds, chunk = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
pipe = load_pipeline(path)
lyrics = "\n".join(["[verse]", "walking down the neon street tonight", "[chorus]", "we are dancing in the city lights"])
pipe("warm up", lyrics=lyrics, audio_duration=10, seed=0)  # first-call overheads out of the way
base = common.rss_gib()
common.reset_peak_rss()
t0 = time.perf_counter()
out = pipe("upbeat synth pop", lyrics=lyrics, audio_duration=seconds, seed=0,
           vae_chunk_size=None if chunk == 0 else chunk)
wall = time.perf_counter() - t0
peak = common.peak_rss_gib()
print(json.dumps({"wall_s": wall, "stages_s": {k: round(v, 3) for k, v in out.timings.items()},
                  "rss_after_load_gib": base, "peak_rss_gib": peak, "growth_gib": peak - base,
                  "audio_samples": out.audios.shape[-1], "latent_frames": out.latents.shape[1]}))
"""


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], CASES, CASES)
    p.add_argument("--vae-chunk", type=int, default=512, help="VAE decode window in latent frames (0: one pass)")
    args = p.parse_args()
    cases = common.setup(args, CASES)
    if args.dtype != "fp32":
        raise SystemExit("bench_long runs the demo model in fp32 only")
    from acestep_core.demo import write_demo_checkpoint

    rows = []
    with tempfile.TemporaryDirectory(prefix="acestep_demo_") as tmp:
        path = write_demo_checkpoint(os.path.join(tmp, "demo"))
        for case in cases:
            common.log(f"{case}: fresh process ...")
            r = subprocess.run([sys.executable, "-c", CHILD, path, str(SECONDS[case]), str(args.vae_chunk),
                                os.path.dirname(os.path.abspath(__file__))],
                               stdout=subprocess.PIPE, text=True, cwd=common.ROOT)
            if r.returncode:
                common.emit({"bench": "long", "case": case, "error": f"exit status {r.returncode}"})
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            rec = {"bench": "long", "case": case, "model": "demo (tiny)", "dtype": "fp32", "seconds": SECONDS[case],
                   "vae_chunk": args.vae_chunk or None, "ours_s": res.pop("wall_s"), **res,
                   "growth_mib_per_min": 1024 * res["growth_gib"] / (SECONDS[case] / 60),
                   "repeats": 1, "warmup": "10 s request", "loadavg_1m": os.getloadavg()[0]}
            rows.append(rec)
            common.emit(rec)
    if len(rows) >= 3:
        # growth = a + b s + c s^2 through the points: c s^2 / growth at the longest length is the quadratic share.
        import numpy as np

        s = np.array([r["seconds"] for r in rows], dtype=float)
        g = np.array([r["growth_gib"] for r in rows], dtype=float)
        a, b, c = np.linalg.lstsq(np.stack([np.ones_like(s), s, s * s], 1), g, rcond=None)[0]
        common.emit({"bench": "long", "case": "fit", "growth_gib_fit": {"a": a, "b_per_s": b, "c_per_s2": c},
                     "quadratic_share_at_max": float(c * s[-1] ** 2 / g[-1]) if g[-1] else None})


if __name__ == "__main__":
    main()
