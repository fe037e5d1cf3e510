#!/usr/bin/env bash
# Step-time overhead of each optimizer relative to SGD: one BP step of
# mlp:784-1000-1000-10 at batch 128 (forward, backprop, optimizer), all optimizers
# interleaved step by step in one process, median of STEPS steps, 1 and 2 threads.
# Second-order methods do more than one pass per step by design (L-BFGS line search,
# Hessian-free CG), so their ratio is the cost of one of their steps.
#
#   bench/optimizer_speed.sh      (STEPS=100)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-100}
OPTS=${OPTS:-sgd,momentum,nesterov,adam,adamw,rmsprop,adagrad,nadam,lars,lamb,lion,sam,asam,sophia,natgrad,kfac,lbfgs,hf}
cargo build --release --bench step -q
BIN=$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)
for t in 1 2; do
  "$BIN" --threads "$t" --steps "$STEPS" --rule bp --optimizer "$OPTS" --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
base = next(x for x in r["rules"] if x["optimizer"] == "sgd")["step_ms"]
print("%d thread(s), SGD step %.2f ms:" % (r["threads"], base))
for x in r["rules"]:
    print("  %-9s %8.2f ms  %6.2fx SGD" % (x["optimizer"], x["step_ms"], x["step_ms"] / base))
'
done
