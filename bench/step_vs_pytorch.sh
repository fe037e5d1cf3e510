#!/usr/bin/env bash
# One training step of mlp:784-1000-1000-10 (batch 128, forward + backprop + SGD):
# futureprop vs PyTorch CPU, at 1 and 2 threads, in the same run.
#
#   bench/step_vs_pytorch.sh [PYTHON]
#
# PYTHON is an interpreter with torch installed (default: $TORCH_PYTHON, else python3);
# a venv outside the repository works: python3 -m venv ~/torchvenv && ~/torchvenv/bin/pip install torch
#
# The machine's speed drifts, so the two programs run alternately for ROUNDS rounds
# (default 5) of STEPS timed steps each (default 200, after warm-up); each round gives a
# ratio of median step times, and the reported figure is the median of those ratios.
# GEMM throughput per shape of the step is printed for both (last round).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-${TORCH_PYTHON:-python3}}
STEPS=${STEPS:-200}
ROUNDS=${ROUNDS:-5}
cargo build --release --bench step -q
BIN=$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)
for t in 1 2; do
  rounds=()
  for r in $(seq "$ROUNDS"); do
    ours=$("$BIN" --threads "$t" --steps "$STEPS" --json)
    theirs=$(OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t "$PY" bench/step_pytorch.py --threads "$t" --steps "$STEPS")
    rounds+=("$ours" "$theirs")
  done
  "$PY" - "${rounds[@]}" <<'PYEOF'
import json, statistics, sys
r = [json.loads(x) for x in sys.argv[1:]]
ours, torch = r[0::2], r[1::2]
ratios = [o["step_ms"] / p["step_ms"] for o, p in zip(ours, torch)]
t = ours[0]["threads"]
print(f"threads={t}: ratio ours/PyTorch = {statistics.median(ratios):.3f} (median of {len(ratios)} rounds: {', '.join(f'{x:.3f}' for x in ratios)})")
fo = ", ".join("%.2f" % o["step_ms"] for o in ours)
fp = ", ".join("%.2f" % p["step_ms"] for p in torch)
print(f"   step ms per round: futureprop {fo}; PyTorch {torch[0]['torch']} {fp}")
for a, b in zip(ours[-1]["gemm"], torch[-1]["gemm"]):
    print(f"   {a['op']:<12} {a['m']:>4}x{a['n']:<4}x{a['k']:<4}  ours {a['gflops']:6.1f} GFLOP/s  torch {b['gflops']:6.1f} GFLOP/s")
PYEOF
done
