#!/usr/bin/env bash
# ePC beside state-based PC on a deep MLP (784-128×8-10), where PC's error signal decays
# with depth (Goemaere et al. 2025): both with the same inference budget (T steps, step
# γ), backprop on the same net as the reference; Adam at its default rate, MNIST, seed 0.
# Writes runs/epc_depth/<rule>-T<T>/ and reports/epc_depth.md.
#
#   bench/epc_depth.sh        (EPOCHS=1 THREADS=2 DATA=../shared/datasets BUDGETS="20:0.1 5:0.1";
#                              about 6 minutes on 2 cores; REPORT_ONLY=1 rewrites the report)
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-1}
THREADS=${THREADS:-2}
DATA=${DATA:-${FUTUREPROP_DATA:-../shared/datasets}}
BUDGETS=${BUDGETS:-20:0.1 5:0.1}
R=runs/epc_depth
MODEL=mlp:784-128-128-128-128-128-128-128-128-10
mkdir -p "$R" reports
if [ -z "${BIN:-}" ]; then cargo build --release -q; BIN=target/release/futureprop; fi
run() {
  local name=$1; shift
  [ -f "$R/$name/summary.json" ] && return 0
  "$BIN" train --quiet --threads "$THREADS" --data-dir "$DATA" --model "$MODEL" \
    --epochs "$EPOCHS" --out "$R/$name" "$@" > /dev/null
}
if [ -z "${REPORT_ONLY:-}" ]; then
  run bp --rule bp
  for b in $BUDGETS; do
    t=${b%%:*}; g=${b##*:}
    run "pc-T$t" --rule pc --rule-opt "steps=$t,gamma=$g"
    run "epc-T$t" --rule epc --rule-opt "steps=$t,gamma=$g"
  done
fi
python3 - "$R" "$MODEL" "$EPOCHS" <<'PY'
import json, os, sys
root, model, epochs = sys.argv[1:]
rows = []
for name in sorted(os.listdir(root)):
    p = f"{root}/{name}/summary.json"
    if not os.path.exists(p):
        continue
    s = json.load(open(p))
    c = s["config"]["rule"]
    budget = f"T={c['steps']}, γ={c['gamma']}" if "steps" in c else "—"
    rows.append((c["name"], budget, 100 * s["test_accuracy"], s["seconds_per_epoch"]))
bp = [r for r in rows if r[0] == "bp"]
bp_s = bp[0][3] if bp else None
with open("reports/epc_depth.md", "w") as f:
    f.write("# ePC and PC on a deep MLP\n\n")
    f.write(f"`bench/epc_depth.sh`: `{model}` (8 hidden layers of 128, ReLU), MNIST, "
            f"{epochs} epoch(s), Adam 1e-3, batch 128, seed 0; the same inference budget for "
            "both energy-based rules. Test accuracy (%) and seconds per epoch "
            "(ratio to backprop's in the same run).\n\n")
    f.write("| rule | inference | test accuracy | s/epoch | × BP |\n|---|---|---|---|---|\n")
    for name, budget, acc, sec in rows:
        ratio = f"{sec / bp_s:.1f}" if bp_s else "—"
        f.write(f"| {name} | {budget} | {acc:.2f} | {sec:.1f} | {ratio} |\n")
print(open("reports/epc_depth.md").read())
PY
