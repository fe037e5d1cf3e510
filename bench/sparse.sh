#!/usr/bin/env bash
# Sparse training on MNIST 784-1000-1000-10 (Adam 1e-3, batch 128): dense against static
# masks, SET, RigL and gradual magnitude pruning at 80/90/95 % sparsity (ERK densities,
# ΔT = 100, α = 0.3, masks fixed after 75 % of the steps) under bp, and RigL under dfa.
# Test accuracy after EPOCHS epochs over SEEDS seeds (0..SEEDS-1) and the training FLOPs
# per step the summary counts (the RigL paper's accounting) against dense.
#
#   bench/sparse.sh [EPOCHS] [SEEDS] [THREADS]    → reports/sparse.md
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-5}
SEEDS=${2:-3}
THREADS=${3:-2}
DATA=${FUTUREPROP_DATA:-$(cd .. && pwd)/shared/datasets}
cargo build --release -q
OUT=${SPARSE_RUNS:-$(mktemp -d)}
mkdir -p "$OUT"
# A copy: rebuilding while the benchmark runs leaves its runs on one binary.
BIN="$OUT/futureprop"
cp target/release/futureprop "$BIN"
base=(train --dataset mnist --data-dir "$DATA" --model mlp:784-1000-1000-10 --optimizer adam
  --lr 1e-3 --batch-size 128 --epochs "$EPOCHS" --threads "$THREADS" --quiet)
run() { # NAME ARGS...: skipped when its summary exists (a cut run goes on from there)
  local name=$1; shift
  [ -f "$OUT/$name/summary.json" ] || "$BIN" "${base[@]}" "$@" --out "$OUT/$name" > /dev/null
}
for s in $(seq 0 $((SEEDS - 1))); do
  for rule in bp dfa; do
    run "$rule-dense-$s" --seed "$s" --rule $rule
    methods="static set rigl prune"
    [ $rule = dfa ] && methods="rigl"
    for m in $methods; do
      for sp in 0.8 0.9 0.95; do
        run "$rule-$m-$sp-$s" --seed "$s" --rule $rule --sparse $m --sparsity $sp
      done
    done
  done
done
python3 - "$OUT" "$EPOCHS" "$SEEDS" > reports/sparse.md <<'PY'
import json, os, statistics, sys
out, epochs, seeds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def summ(d):
    with open(os.path.join(out, d, "summary.json")) as f:
        return json.load(f)
def cell(prefix):
    v = [100 * summ(f"{prefix}-{s}")["test_accuracy"] for s in range(seeds)]
    return f"{statistics.mean(v):.2f}" + (f" ± {statistics.stdev(v):.2f}" if len(v) > 1 else "")
def flops(prefix):
    sp = summ(f"{prefix}-0")["sparse"]
    return sp["flops_fraction"], sp["training_flops_per_step"]
print("# Sparse training\n")
print(f"`bench/sparse.sh {epochs} {seeds}`: MNIST 784-1000-1000-10, Adam 1e-3, batch 128, "
      f"{epochs} epochs, test accuracy (%, mean ± sd over {seeds} seeds). ERK layer densities, "
      "ΔT = 100 steps, drop fraction 0.3 on the cosine schedule, masks fixed after 75 % of the steps; "
      "pruning goes from dense to the target over the same 75 %.\n")
for rule, methods in (("bp", ("static", "set", "rigl", "prune")), ("dfa", ("rigl",))):
    print(f"## {rule}\n")
    print(f"Dense: {cell(f'{rule}-dense')} %.\n")
    print("| method | 80 % | 90 % | 95 % |")
    print("|---|---|---|---|")
    for m in methods:
        print(f"| {m} | " + " | ".join(cell(f"{rule}-{m}-{sp}") for sp in ("0.8", "0.9", "0.95")) + " |")
    print()
print("## Training FLOPs per step (sparse model, RigL paper's count) / dense\n")
print("| method | 80 % | 90 % | 95 % |")
print("|---|---|---|---|")
for m in ("static", "set", "rigl", "prune"):
    cells = []
    for sp in ("0.8", "0.9", "0.95"):
        frac, f = flops(f"bp-{m}-{sp}")
        cells.append(f"{frac:.3f} ({f / 1e9:.2f} GFLOP)")
    print(f"| {m} | " + " | ".join(cells) + " |")
dense = summ("bp-rigl-0.9-0")["sparse"]["dense_training_flops_per_step"]
print(f"\nDense: {dense / 1e9:.2f} GFLOP per step (3 × the forward products' FLOPs × 128 rows). "
      "Pruning's figure is the mean over the run, as its density falls from 1.")
PY
{
  echo
  echo "## A sparse kernel?"
  echo
  echo "\`cargo bench --bench sparse_kernel -- --threads 1\` (the forward product y = x·Wᵀ of a 1000-unit"
  echo "layer, batch 128, median of 100 alternating runs; CSR W, an axpy of the batch per nonzero):"
  echo
  cargo bench -q --bench sparse_kernel -- --threads 1 2>/dev/null | sed 's/^/- /'
  echo
  echo "Training keeps dense products of masked weights (the FLOPs above are counted, not"
  echo "timed): this kernel is a measurement, not a code path, as it wins only at the lowest"
  echo "densities and only for the forward product."
} >> reports/sparse.md
echo "reports/sparse.md written (runs in $OUT)"
