#!/usr/bin/env bash
# Peak activation memory per step and step time of the decoupled rules beside backprop:
# 784-1000-1000-1000-1000-10 ReLU, batch 128, Adam (which does not read the trace, so
# local, dni and ff free each block's activations once it has updated).
#
#   bench/decoupled_memory.sh      (STEPS=200 THREADS=2 DATA=../shared/datasets)
#
# Memory: `futureprop train` for 20 steps per rule, from the counting allocator: the
# heap high-water mark inside the rule's step above the live bytes at its start
# (step_peak_bytes), minus the update it returns (update_bytes, the size of the
# parameters): what the step needs besides its output, i.e. activations and temporaries.
# Time: the step bench runs the four rules interleaved step by step in one process
# (forward, the rule's update, SGD) and reports the median step time over STEPS.
# Writes reports/decoupled_memory.md.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-200}
THREADS=${THREADS:-2}
DATA=${DATA:-${FUTUREPROP_DATA:-../shared/datasets}}
MODEL=mlp:784-1000-1000-1000-1000-10
RULES="bp local dni ff"
cargo build --release -q
cargo build --release --bench step -q
BIN=$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)
OUT=runs/decoupled_memory
mkdir -p "$OUT"
for r in $RULES; do
  target/release/futureprop train --quiet --data-dir "$DATA" --model $MODEL --activation relu \
    --rule $r --optimizer adam --lr 1e-3 --batch-size 128 --max-steps 20 --epochs 1 \
    --test-limit 1000 --threads "$THREADS" --out "$OUT/$r" > /dev/null
done
"$BIN" --threads "$THREADS" --steps "$STEPS" --rule bp,local,dni,ff --model $MODEL --json > "$OUT/steps.json"
python3 - "$OUT" "$THREADS" "$STEPS" $RULES <<'PY'
import json, sys
out, threads, steps, rules = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
times = {x["rule"]: x["step_ms"] for x in json.load(open(f"{out}/steps.json"))["rules"]}
mb = lambda b: b / 2**20
rows = []
for r in rules:
    m = json.load(open(f"{out}/{r}/summary.json"))["memory"]
    rows.append((r, m["step_peak_bytes"], m["update_bytes"], m["activation_bytes_per_step"], times[r]))
bp = rows[0]
lines = ["# Peak activation memory of the decoupled rules", "",
         f"Produced by `bench/decoupled_memory.sh`: MNIST, 784-1000-1000-1000-1000-10 ReLU, batch 128, Adam; "
         f"{threads} thread(s), {cpu}. Step peak: heap high-water mark inside the rule's step above the live bytes "
         "at its start (counting allocator); minus the update it returns gives what the step needs besides its "
         "output (activations and temporaries). Trace kept: the activations still held by the returned trace. "
         f"Step time: median of {steps} interleaved steps (forward, update, SGD).", "",
         "| rule | step peak MB | update MB | peak − update MB | × BP | trace kept MB | step ms | time × BP |",
         "|---|---|---|---|---|---|---|---|"]
for r, peak, upd, kept, ms in rows:
    lines.append(f"| {r} | {mb(peak):.1f} | {mb(upd):.1f} | {mb(peak-upd):.1f} | {(peak-upd)/(bp[1]-bp[2]):.2f} | "
                 f"{mb(kept):.2f} | {ms:.1f} | {ms/bp[4]:.2f} |")
open("reports/decoupled_memory.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
