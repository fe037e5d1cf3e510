#!/usr/bin/env bash
# Step time of FA and DFA relative to BP (forward + the rule's backward + SGD, batch 128)
# for 784-1000-1000-10 and 784-1000-1000-1000-1000-10 at 1 and 2 threads.
#
#   bench/rule_speed.sh          (STEPS=300)
#
# The three rules run in one process, interleaved step by step (so the machine's speed
# drift hits them alike); the figure is the ratio of median step times rule/BP. Beside
# it, the rule's share of BP's GEMM FLOPs (counted: forward, weight gradients, and δ·W
# products for BP/FA or one output-error projection per hidden block for DFA).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-300}
cargo build --release --bench step -q
BIN=$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)
REPORT='
import json, sys
r = json.load(sys.stdin)
by = {x["rule"]: x for x in r["rules"]}
bp = by["bp"]
parts = []
for k in ("fa", "dfa"):
    t = by[k]["step_ms"] / bp["step_ms"]
    share = by[k]["gemm_flops"] / bp["gemm_flops"]
    parts.append("%s/bp time %.3f (FLOP share %.3f: %.3f vs %.3f GFLOP)" % (k, t, share, by[k]["gemm_flops"] / 1e9, bp["gemm_flops"] / 1e9))
print("%s, %d thread(s): BP %.2f ms; %s" % (r["model"], r["threads"], bp["step_ms"], "; ".join(parts)))
'
for model in mlp:784-1000-1000-10 mlp:784-1000-1000-1000-1000-10; do
  for t in 1 2; do
    "$BIN" --threads "$t" --steps "$STEPS" --rule bp,fa,dfa --model $model --json | python3 -c "$REPORT"
  done
done
