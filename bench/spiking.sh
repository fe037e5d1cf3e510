#!/usr/bin/env bash
# A spiking net against snnTorch: 784-1000-10 LIF (β 0.95, threshold 1, reset by
# subtraction, arctan surrogate), a leaky readout decoded by its mean membrane
# potential, T = 25 steps of rate-coded MNIST, Adam 5e-4, batch 128, 1 epoch (snnTorch's
# tutorial setting), at 2 threads: test accuracy and training seconds per step.
# MAX_STEPS (default 0: the whole epoch) cuts both runs to that many steps.
#
#   bench/spiking.sh PYTHON [THREADS]    → reports/spiking.md
# PYTHON: a Python with torch and snntorch (e.g. a venv outside the repository:
# python3 -m venv ~/torchvenv && ~/torchvenv/bin/pip install torch snntorch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: bench/spiking.sh PYTHON [THREADS]}
THREADS=${2:-2}
MAX_STEPS=${MAX_STEPS:-0}
DATA=${FUTUREPROP_DATA:-$(cd .. && pwd)/shared/datasets}
cargo build --release -q
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
limit=()
[ "$MAX_STEPS" != 0 ] && limit=(--max-steps "$MAX_STEPS")
target/release/futureprop train --dataset mnist --data-dir "$DATA" \
  --model "snn:784-1000-10,steps=25,encoding=rate,beta=0.95" --optimizer adam --lr 5e-4 \
  --batch-size 128 --epochs 1 --threads "$THREADS" --quiet "${limit[@]}" --out "$TMP/ours" > /dev/null
"$PY" bench/peers/snntorch_peer.py "$DATA" --threads "$THREADS" --max-steps "$MAX_STEPS" > "$TMP/peer.json"
python3 - "$TMP" "$THREADS" "$MAX_STEPS" > reports/spiking.md <<'PY'
import json, sys
tmp, threads, max_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
ours = json.load(open(f"{tmp}/ours/summary.json"))
peer = json.load(open(f"{tmp}/peer.json"))
ours_step = ours["seconds_per_epoch"] / ours["steps"]
print("# Spiking networks\n")
print(f"`bench/spiking.sh PYTHON {threads}`: MNIST, 784-1000-10 LIF (β 0.95, threshold 1, reset by subtraction, "
      "arctan surrogate), leaky readout decoded by its mean membrane potential, T = 25 steps of rate coding, "
      f"Adam 5e-4, batch 128, {'1 epoch' if not max_steps else f'{max_steps} steps'}, {threads} threads.\n")
print("| | test accuracy | seconds per step |")
print("|---|---|---|")
print(f"| futureprop (surrogate-gradient BPTT) | {100 * ours['test_accuracy']:.2f} % | {ours_step:.3f} |")
print(f"| snnTorch {peer['snntorch']} (torch {peer['torch']}, CPU) | {100 * peer['test_accuracy']:.2f} % | {peer['seconds_per_step']:.3f} |")
print(f"\nfutureprop's step takes {ours_step / peer['seconds_per_step']:.2f}× snnTorch's "
      f"({peer['seconds_per_step'] / ours_step:.2f}× its speed).")
PY
cat reports/spiking.md
