#!/usr/bin/env bash
# Speed against an earlier revision, in one run: the BP step of mlp:784-1000-1000-10
# (batch 128, Adam; `cargo bench --bench step`) and one training epoch of pc, eqprop and
# ff on 6000 MNIST samples (each rule's defaults, batch 128), this tree against REV
# (built in a temporary worktree), alternating for ROUNDS rounds; medians and ratios.
#
#   bench/speed_regression.sh REV   (ROUNDS=3 STEPS=200 THREADS="1 2" DATA=../shared/datasets)
#   → reports/speed_regression.md
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: bench/speed_regression.sh REV}
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-200}
THREADS=${THREADS:-"1 2"}
DATA=${DATA:-../shared/datasets}
DATA=$(realpath "$DATA")
W=$(mktemp -d)
trap 'git worktree remove --force "$W/old" > /dev/null 2>&1 || true; rm -rf "$W"' EXIT
git worktree add --detach -q "$W/old" "$REV"
OLD_SHA=$(git -C "$W/old" rev-parse --short HEAD)
NEW_SHA=$(git rev-parse --short HEAD)
for tree in "$W/old" .; do
  (cd "$tree" && cargo build --release -q && cargo build --release --bench step -q)
done
step_bin() { ls -t "$1"/target/release/deps/step-* | grep -v '\.d$' | head -1; }
OLD_STEP=$(step_bin "$W/old")
NEW_STEP=$(step_bin .)
for r in $(seq "$ROUNDS"); do
  for t in $THREADS; do
    for who in old new; do
      if [ $who = old ]; then bin=$OLD_STEP; else bin=$NEW_STEP; fi
      ms=$("$bin" --threads "$t" --steps "$STEPS" --optimizer adam --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["step_ms"])')
      echo "{\"what\": \"bp step\", \"threads\": $t, \"who\": \"$who\", \"seconds\": $(python3 -c "print($ms / 1000)")}" >> "$W/rows.jsonl"
    done
  done
  for rule in pc eqprop ff; do
    for who in old new; do
      if [ $who = old ]; then bin=$W/old/target/release/futureprop; else bin=target/release/futureprop; fi
      "$bin" train --quiet --data-dir "$DATA" --dataset mnist --model mlp:784-256-256-10 --rule "$rule" \
        --epochs 1 --train-limit 6000 --test-limit 500 --batch-size 128 --threads 2 --out "$W/run" > /dev/null
      s=$(python3 -c "import json; print(json.load(open('$W/run/summary.json'))['seconds_per_epoch'])")
      echo "{\"what\": \"$rule epoch\", \"threads\": 2, \"who\": \"$who\", \"seconds\": $s}" >> "$W/rows.jsonl"
    done
  done
done
python3 - "$W/rows.jsonl" "$OLD_SHA" "$NEW_SHA" "$ROUNDS" > reports/speed_regression.md <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
old, new, rounds = sys.argv[2], sys.argv[3], sys.argv[4]
print("# Speed against an earlier revision\n")
print(f"`bench/speed_regression.sh {old}`: this tree ({new}) against {old}, alternating, median of "
      f"{rounds} rounds. BP step: mlp:784-1000-1000-10, batch 128, Adam (`cargo bench --bench step`). "
      "Epochs: 6000 MNIST samples, mlp:784-256-256-10, each rule's defaults, batch 128, 2 threads.\n")
print(f"| measure | threads | {old} s | {new} s | new / old |")
print("|---|---|---|---|---|")
for what in dict.fromkeys(r["what"] for r in rows):
    for t in sorted({r["threads"] for r in rows if r["what"] == what}):
        m = {w: statistics.median(r["seconds"] for r in rows if r["what"] == what and r["threads"] == t and r["who"] == w) for w in ["old", "new"]}
        print(f"| {what} | {t} | {m['old']:.4f} | {m['new']:.4f} | {m['new'] / m['old']:.3f} |")
PY
cat reports/speed_regression.md
