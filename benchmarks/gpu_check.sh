#!/usr/bin/env bash
# One GPU, under 8 minutes: the official tiny-checkpoint parity on the device (fp32 and bf16), then the real-size
# speed table against diffusers (DiT 10/60/240 s, VAE, e2e10, e2e240). JSON lines on stdout, one file per stage.
#
#   benchmarks/gpu_check.sh                      # --device cuda
#   benchmarks/gpu_check.sh --device cpu --quick # parity + a small precision run: the CPU smoke test
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda QUICK=0 OUT=${OUT:-gpu_check_out}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
run() { local name=$1; shift; echo "== $name" >&2; timeout "${LIMIT:-300}" "$@" | tee "$OUT/$name.jsonl"; }

run parity "$PY" benchmarks/device_parity.py --device "$DEVICE"
if [ "$QUICK" = 1 ]; then
  run precision "$PY" benchmarks/bench_precision.py --hidden 256 --layers 2 --seconds 6 --steps 2
  exit 0
fi
for dtype in fp32 bf16; do
  run "dit_$dtype" "$PY" benchmarks/bench_dit.py --device "$DEVICE" --dtype "$dtype" --cases dit10,dit60,dit240 \
      --variants full,diffusers --repeats 3
  run "vae_$dtype" "$PY" benchmarks/bench_vae.py --device "$DEVICE" --dtype "$dtype" --cases dec10,enc10,dec240_chunked \
      --with-diffusers --repeats 3
  run "e2e_$dtype" "$PY" benchmarks/bench_e2e.py --device "$DEVICE" --dtype "$dtype" --cases e2e10,e2e240 --repeats 2
done
