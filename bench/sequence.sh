#!/usr/bin/env bash
# Recurrent nets (issue acceptance runs): sequential MNIST (the 28 rows of an image as 28
# time steps) with an LSTM trained by BPTT and by UORO, and the adding problem (T = 50)
# with both. Writes runs/sequence/<run>/ and reports/sequence.md.
#
#   bench/sequence.sh        (THREADS=2 EPOCHS=5 DATA=../shared/datasets; about 25 min)
#   REPORT_ONLY=1 bench/sequence.sh    (rebuild the report from runs/sequence)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
EPOCHS=${EPOCHS:-5}
DATA=${DATA:-${FUTUREPROP_DATA:-../shared/datasets}}
R=runs/sequence
mkdir -p "$R" reports
run() {
  local name=$1; shift
  target/release/futureprop train --quiet --threads "$THREADS" --data-dir "$DATA" --out "$R/$name" "$@" > /dev/null
}
if [ -z "${REPORT_ONLY:-}" ]; then
  cargo build --release -q
  SM=(--dataset mnist --model lstm:28x28-64-10 --optimizer adam --lr 1e-3 --epochs "$EPOCHS")
  run smnist-bptt "${SM[@]}" --rule bp
  run smnist-uoro "${SM[@]}" --rule uoro
  AD=(--dataset adding:50 --loss mse --model lstm:50x2-64-1 --optimizer adam --lr 1e-3 --epochs 20)
  run adding-bptt "${AD[@]}" --rule bp
  run adding-uoro "${AD[@]}" --rule uoro
fi
python3 - "$R" <<'PY'
import json, os, sys
r = sys.argv[1]
cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
L = ["# Recurrent nets: BPTT and UORO", "",
     f"Produced by `bench/sequence.sh` ({cpu}). LSTM with 64 units (forget-gate bias 1), Adam 1e-3, "
     "batch 128; UORO (Tallec & Ollivier 2017) replaces the LSTM's BPTT gradient by its rank-one online "
     "estimate, the readout learns by backprop. s/epoch as measured in that run (other jobs shared the machine during the UORO runs: indicative only).", "",
     "## Sequential MNIST (28 steps of 28 pixels), lstm:28x28-64-10", "",
     "| rule | epochs | test accuracy % | best % | test error % | s/epoch |", "|---|---|---|---|---|---|"]
for label, name in [("BPTT", "smnist-bptt"), ("UORO", "smnist-uoro")]:
    p = f"{r}/{name}/summary.json"
    if not os.path.exists(p):
        L.append(f"| {label} | not run | | | | |"); continue
    s = json.load(open(p))
    L.append(f"| {label} | {s['epochs']} | {100*s['test_accuracy']:.2f} | {100*s['best_test_accuracy']:.2f} | "
             f"{100*(1-s['test_accuracy']):.2f} | {s['seconds_per_epoch']:.1f} |")
L += ["", "## Adding problem, T = 50 (10 000 training sequences), lstm:50x2-64-1, squared error", "",
      "Predicting the mean (1) scores 1/6 ≈ 0.167.", "",
      "| rule | epochs | test squared error | s/epoch |", "|---|---|---|---|"]
for label, name in [("BPTT", "adding-bptt"), ("UORO", "adding-uoro")]:
    p = f"{r}/{name}/summary.json"
    if not os.path.exists(p):
        L.append(f"| {label} | not run | | |"); continue
    s = json.load(open(p))
    L.append(f"| {label} | {s['epochs']} | {s['test_loss']:.4f} | {s['seconds_per_epoch']:.1f} |")
open("reports/sequence.md", "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
