#!/usr/bin/env bash
# The MNIST deep autoencoder of Hinton & Salakhutdinov 2006, the benchmark of Martens 2010
# (Hessian-free) and Martens & Grosse 2015 (K-FAC): 784-1000-500-250-30-250-500-1000-784,
# logistic units, linear 30-unit code layer, binary cross-entropy on [0,1] pixels.
# Momentum SGD, Adam, K-FAC and Hessian-free each get the same wall-clock budget
# (BUDGET seconds, default 420) at batch 1000, one after another on this machine;
# every step's minibatch loss is logged. Writes reports/autoencoder/{curves.csv,
# error_vs_updates.svg, error_vs_seconds.svg, summary.md}: the updates and seconds
# each needs to reach momentum SGD's final training error.
#
#   bench/autoencoder.sh              (BUDGET=420 THREADS=2)
#
# Sparse initialisation (15 nonzero N(0,1) incoming weights per unit, Martens 2010) for
# all. Settings per optimizer were chosen by 200–250-step probes on this machine:
# momentum lr 3 (0.3, 1, 3, 10, 30 tried), Adam lr 1e-3 (1e-4, 3e-4, 1e-3, 3e-3),
# K-FAC with the paper's adaptive step/momentum/damping from λ₀ = 0.2 (= Martens &
# Grosse's 150 rescaled to our per-pixel mean loss; fixed-lr K-FAC with damping 1e-4–0.03
# either stalled on the plateau or diverged), HF damping 1e-2.
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=${BUDGET:-420}
THREADS=${THREADS:-2}
DATA=${FUTUREPROP_DATA:-../shared/datasets}
OUT=${OUT:-reports/autoencoder}
RUNS=${RUNS:-target/autoencoder-runs}
cargo build --release -q
cargo build --release --bench curves -q
CURVES=$(ls -t target/release/deps/curves-* | grep -v '\.d$' | head -1)
COMMON=(--data-dir "$DATA" --task autoencode --loss bce --normalize unit
  --model mlp:784-1000-500-250-30:linear-250-500-1000-784 --activation sigmoid
  --init sparse --batch-size 1000 --epochs 100000 --max-seconds "$BUDGET"
  --log-every 1 --threads "$THREADS" --seed 0 --quiet)
declare -A ARGS=(
  [momentum]="--optimizer momentum --lr ${MOMENTUM_LR:-3} --momentum 0.9"
  [adam]="--optimizer adam --lr ${ADAM_LR:-1e-3}"
  [kfac]="--optimizer kfac --kfac-adaptive true --lr 1 --kfac-damping ${KFAC_DAMPING:-0.2} --kfac-cov-every 5 --kfac-inv-every 20"
  [hf]="--optimizer hf --lr 1 --damping 1e-2 --max-cg 20"
)
mkdir -p "$RUNS"
pairs=()
for o in momentum adam kfac hf; do
  rm -rf "$RUNS/$o"
  # shellcheck disable=SC2086
  ./target/release/futureprop train "${COMMON[@]}" ${ARGS[$o]} --out "$RUNS/$o"
  pairs+=("$o=$RUNS/$o/metrics.jsonl")
done
"$CURVES" "$OUT" "MNIST deep autoencoder" momentum "${pairs[@]}"
