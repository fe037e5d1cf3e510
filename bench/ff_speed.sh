#!/usr/bin/env bash
# Forward-Forward speed against the fflib peer on the same net, data, batch and epochs,
# and both epoch times against the FLOP bound of an FF epoch.
#
#   bench/ff_speed.sh        (WIDTHS=2000,2000 EPOCHS=1 THREADS=2 DATA=../shared/datasets
#                             FF_VENV=~/.cache/futureprop/ff-peer)
#
# fflib 0.3.0 pins torch 2.6, so it gets a venv of its own. Both train MNIST with the label
# one-hot in the input (fflib appends it: 794 inputs; futureprop writes it over the first
# 10 pixels: 784), mean-of-squares goodness, threshold 2, Adam lr 0.01, batch 128, random
# wrong labels as negatives, prediction by trying every label.
# FLOPs of an FF epoch: per sample and hidden layer (in → out) a forward and a weight
# gradient for the positive and the negative pass, 4 × 2·in·out. The bound is the time
# those GEMMs take at the speed futureprop's GEMM reaches on each of their shapes
# (measured by the step bench in this run). Writes reports/ff_speed.md.
set -euo pipefail
cd "$(dirname "$0")/.."
WIDTHS=${WIDTHS:-2000,2000}
EPOCHS=${EPOCHS:-1}
THREADS=${THREADS:-2}
DATA=${DATA:-${FUTUREPROP_DATA:-../shared/datasets}}
VENV=${FF_VENV:-$HOME/.cache/futureprop/ff-peer}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "fflib==0.3.0"
fi
cargo build --release -q
cargo build --release --bench step -q
BIN=$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)
MODEL="mlp:784-${WIDTHS//,/-}-10"
OUT=runs/ff_speed
mkdir -p "$OUT"
(cd bench/peers && OMP_NUM_THREADS=$THREADS "$VENV/bin/python" ff_peer.py --data "$(cd ../.. && realpath "$DATA")" \
  --widths "$WIDTHS" --epochs "$EPOCHS" --threads "$THREADS") | tail -n 1 > "$OUT/peer.json"
target/release/futureprop train --quiet --data-dir "$DATA" --model "$MODEL" --activation relu --rule ff \
  --normalize unit --optimizer adam --lr 0.01 --batch-size 128 --epochs "$EPOCHS" --threads "$THREADS" \
  --out "$OUT/ours" > /dev/null
"$BIN" --threads "$THREADS" --steps 5 --rule ff --model "$MODEL" --json > "$OUT/gemm.json"
python3 - "$OUT" "$THREADS" "$WIDTHS" <<'PY'
import json, sys
out, threads, widths = sys.argv[1], sys.argv[2], [int(w) for w in sys.argv[3].split(",")]
cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
peer = json.load(open(f"{out}/peer.json"))
ours = json.load(open(f"{out}/ours/summary.json"))
gemm = {g["op"].split()[0]: g for g in json.load(open(f"{out}/gemm.json"))["gemm"]}
n_train, batch = 60000, 128
dims = list(zip([784] + widths, widths))
flops = sum(4 * 2 * i * o for i, o in dims) * n_train
# Bound: each hidden layer's forward and weight-gradient GEMM, twice (positive, negative),
# at the measured ms per batch-128 product, over the epoch's batches.
per_batch_ms = sum(2 * (gemm[f"fwd{l+1}"]["ms"] + gemm[f"dW{l+1}"]["ms"]) for l in range(len(dims)))
bound = per_batch_ms / 1e3 * n_train / batch
rate = flops / bound / 1e9
o_s, p_s = ours["seconds_per_epoch"], peer["seconds_per_epoch"]
lines = ["# Forward-Forward: futureprop vs fflib", "",
         f"Produced by `bench/ff_speed.sh`: MNIST, 784-{'-'.join(map(str, widths))} ReLU (fflib: 794 inputs, label appended), "
         f"batch 128, Adam lr 0.01, threshold 2 (mean goodness), random negatives, {peer['epochs']} epoch(s), {threads} thread(s); {cpu}. "
         "Seconds per epoch: the training loop only (median over epochs).", "",
         f"FF FLOPs per epoch (forward + weight gradient, positive and negative, hidden layers): {flops/1e12:.3f} TFLOP. "
         f"FLOP bound: {bound:.2f} s, those GEMMs at the speed futureprop's GEMM reaches on their shapes in this run "
         f"({rate:.1f} GFLOP/s on average).", "",
         "| implementation | s/epoch | test acc % | × FLOP bound | time ratio ours/peer |",
         "|---|---|---|---|---|",
         f"| futureprop `ff` | {o_s:.2f} | {100*ours['test_accuracy']:.2f} | {o_s/bound:.2f} | {o_s/p_s:.3f} |",
         f"| fflib {peer['version']} (torch {peer['torch']}) | {p_s:.2f} | {100*peer['test_accuracy']:.2f} | {p_s/bound:.2f} | 1 |"]
open("reports/ff_speed.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
