#!/usr/bin/env bash
# ePC beside state-based PC on a deep MLP (784-128×8-10, GELU), where PC's error signal
# decays with depth (Goemaere et al. 2025): both with the same inference budget (T steps,
# step γ per sample), backprop on the same net as the reference. The paper's training
# settings (pc_error_optimization's sweep): Adam at 1e-4 on the weights, batch 64, γ 0.1,
# T 64; MNIST, seed 0. Writes runs/epc_depth/<lr>/<rule>-T<T>/ and reports/epc_depth.md.
#
#   bench/epc_depth.sh        (EPOCHS=1 THREADS=2 LRS="1e-4 1e-3" BUDGETS="64:0.1 20:0.1"
#                              DATA=../shared/datasets; about 20 minutes on 2 cores;
#                              REPORT_ONLY=1 rewrites the report)
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-1}
THREADS=${THREADS:-2}
DATA=${DATA:-${FUTUREPROP_DATA:-../shared/datasets}}
BUDGETS=${BUDGETS:-64:0.1 20:0.1}
LRS=${LRS:-1e-4 1e-3}
R=runs/epc_depth
MODEL=mlp:784-128-128-128-128-128-128-128-128-10
mkdir -p "$R" reports
if [ -z "${BIN:-}" ]; then cargo build --release -q; BIN=target/release/futureprop; fi
run() {
  local name=$1; shift
  [ -f "$R/$name/summary.json" ] && return 0
  "$BIN" train --quiet --threads "$THREADS" --data-dir "$DATA" --model "$MODEL" \
    --activation gelu --batch-size 64 --epochs "$EPOCHS" --out "$R/$name" "$@" > /dev/null
}
if [ -z "${REPORT_ONLY:-}" ]; then
  for lr in $LRS; do
    run "$lr/bp" --rule bp --lr "$lr"
    for b in $BUDGETS; do
      t=${b%%:*}; g=${b##*:}
      run "$lr/pc-T$t" --rule pc --rule-opt "steps=$t,gamma=$g" --lr "$lr"
      run "$lr/epc-T$t" --rule epc --rule-opt "steps=$t,gamma=$g" --lr "$lr"
    done
  done
fi
python3 - "$R" "$MODEL" "$EPOCHS" <<'PY'
import json, os, sys
root, model, epochs = sys.argv[1:]
rows = []
for lr in sorted(os.listdir(root)):
    for name in sorted(os.listdir(f"{root}/{lr}")):
        p = f"{root}/{lr}/{name}/summary.json"
        if not os.path.exists(p):
            continue
        s = json.load(open(p))
        c = s["config"]["rule"]
        budget = f"T={c['steps']}, γ={c['gamma']}" if "steps" in c else "—"
        rows.append((lr, c["name"], budget, 100 * s["test_accuracy"], s["seconds_per_epoch"]))
bp_s = {r[0]: r[4] for r in rows if r[1] == "bp"}
with open("reports/epc_depth.md", "w") as f:
    f.write("# ePC and PC on a deep MLP\n\n")
    f.write(f"`bench/epc_depth.sh`: `{model}` (8 hidden layers of 128, GELU), MNIST, "
            f"{epochs} epoch(s), Adam, batch 64, seed 0; the same inference budget for "
            "both energy-based rules. Test accuracy (%) and seconds per epoch "
            "(ratio to backprop's at the same rate).\n\n")
    f.write("| Adam lr | rule | inference | test accuracy | s/epoch | × BP |\n|---|---|---|---|---|---|\n")
    for lr, name, budget, acc, sec in rows:
        ratio = f"{sec / bp_s[lr]:.1f}" if lr in bp_s else "—"
        f.write(f"| {lr} | {name} | {budget} | {acc:.2f} | {sec:.1f} | {ratio} |\n")
print(open("reports/epc_depth.md").read())
PY
