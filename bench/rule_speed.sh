#!/usr/bin/env bash
# Step time of FA and DFA relative to BP (forward + the rule's backward + SGD, batch 128)
# for 784-1000-1000-10 and 784-1000-1000-1000-1000-10 at 1 and 2 threads.
#
#   bench/rule_speed.sh          (ROUNDS=5 STEPS=150)
#
# The rules run alternately for ROUNDS rounds; each round gives a ratio of median step
# times (rule/BP) and the figure reported is the median ratio. Beside it, the rule's
# share of BP's GEMM FLOPs (counted: forward, weight gradients, and δ·W products for
# BP/FA or one output-error projection per hidden block for DFA).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
STEPS=${STEPS:-150}
cargo build --release --bench step -q
BIN=$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)
for model in mlp:784-1000-1000-10 mlp:784-1000-1000-1000-1000-10; do
  for t in 1 2; do
    res=()
    for r in $(seq "$ROUNDS"); do
      for rule in bp fa dfa; do
        res+=("$("$BIN" --threads "$t" --steps "$STEPS" --rule $rule --model $model --json)")
      done
    done
    python3 - "${res[@]}" <<'PY'
import json, statistics, sys
r = [json.loads(x) for x in sys.argv[1:]]
by = {}
for x in r:
    by.setdefault(x["rule"], []).append(x)
bp = by["bp"]
head = f"{bp[0]['model']}, {bp[0]['threads']} thread(s): BP {statistics.median(x['step_ms'] for x in bp):.2f} ms"
parts = []
for rule in ("fa", "dfa"):
    ratios = [a["step_ms"] / b["step_ms"] for a, b in zip(by[rule], bp)]
    share = by[rule][0]["gemm_flops"] / bp[0]["gemm_flops"]
    parts.append(f"{rule}/bp time {statistics.median(ratios):.3f} (FLOP share {share:.3f}, {by[rule][0]['gemm_flops']/1e9:.3f} vs {bp[0]['gemm_flops']/1e9:.3f} GFLOP)")
print(head + "; " + "; ".join(parts))
PY
  done
done
