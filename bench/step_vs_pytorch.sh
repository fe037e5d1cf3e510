#!/usr/bin/env bash
# One training step of mlp:784-1000-1000-10 (batch 128, forward + backprop + SGD):
# futureprop vs PyTorch CPU, at 1 and 2 threads, in the same run. Prints the ratio
# ours/PyTorch of the median step times, and each GEMM's throughput for both.
#
#   bench/step_vs_pytorch.sh [PYTHON]
#
# PYTHON is an interpreter with torch installed (default: $TORCH_PYTHON, else python3).
# A venv outside the repository works: python3 -m venv ~/torchvenv && ~/torchvenv/bin/pip install torch
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${TORCH_PYTHON:-python3}}
STEPS=${STEPS:-300}
cargo build --release --bench step -q 2>/dev/null || cargo build --release --benches -q
BIN=$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)
for t in 1 2; do
  ours=$("$BIN" --threads "$t" --steps "$STEPS" --json)
  theirs=$(OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t "$PY" bench/step_pytorch.py --threads "$t" --steps "$STEPS")
  "$PY" - "$ours" "$theirs" <<'PYEOF'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"threads={o['threads']}: futureprop {o['step_ms']:.3f} ms, PyTorch {p['torch']} {p['step_ms']:.3f} ms, ratio ours/PyTorch = {o['step_ms']/p['step_ms']:.3f}")
for a, b in zip(o["gemm"], p["gemm"]):
    print(f"   {a['op']:<12} {a['m']:>4}x{a['n']:<4}x{a['k']:<4}  ours {a['gflops']:6.1f} GFLOP/s  torch {b['gflops']:6.1f} GFLOP/s")
PYEOF
done
