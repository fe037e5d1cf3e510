#!/usr/bin/env bash
# Predictive coding against PCX at PCX's MNIST setting (784-128-128-128-10, T 5, batch
# 128, Adam 1e-3 on the weights, SGD on the nodes), one epoch each, alternating for
# ROUNDS rounds per activation; medians and ratio (ours / PCX). The machine is noisy:
# only the ratio of medians from one run is meaningful.
#
#   bench/pc_vs_pcx.sh   (ROUNDS=3 ACTS="gelu relu tanh" THREADS=2 DATA=../shared/datasets
#                         PCX_PY=/work/pcxvenv/bin/python)   → reports/pc_vs_pcx.md
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
ACTS=${ACTS:-"gelu relu tanh"}
THREADS=${THREADS:-2}
DATA=${DATA:-${FUTUREPROP_DATA:-../shared/datasets}}
PCX_PY=${PCX_PY:-/work/pcxvenv/bin/python}
cargo build --release -q
R=runs/pc_vs_pcx
rm -rf "$R"; mkdir -p "$R" reports
for act in $ACTS; do
  for r in $(seq "$ROUNDS"); do
    target/release/futureprop train --quiet --data-dir "$DATA" --model mlp:784-128-128-128-10 \
      --activation "$act" --loss sse --rule pc --pc-steps 5 --pc-gamma 0.05 --optimizer adam --lr 1e-3 \
      --batch-size 128 --epochs 1 --threads "$THREADS" --out "$R/ours-$act-$r" > /dev/null
    "$PCX_PY" bench/peers/pcx_peer.py --data "$DATA" --threads "$THREADS" --lr-h 0.05 \
      --activation "$act" 2>/dev/null | tail -n 1 > "$R/pcx-$act-$r.json"
  done
done
python3 - "$R" "$ROUNDS" "$ACTS" "$THREADS" <<'PY'
import json, statistics as st, sys
r, rounds, acts, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4]
cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
rows = []
for a in acts:
    ours = [json.load(open(f"{r}/ours-{a}-{k}/summary.json")) for k in range(1, rounds + 1)]
    peer = [json.load(open(f"{r}/pcx-{a}-{k}.json")) for k in range(1, rounds + 1)]
    o, p = st.median(x["seconds_per_epoch"] for x in ours), st.median(x["seconds_per_epoch"] for x in peer)
    rows.append(f"| {a} | {o:.3f} | {p:.3f} | {o / p:.2f} | {100 * ours[0]['test_accuracy']:.2f} | {100 * peer[0]['test_accuracy']:.2f} |")
out = [
    "# Predictive coding against PCX at PCX's setting", "",
    f"Produced by `bench/pc_vs_pcx.sh` on {cpu}, {threads} thread(s), median of {rounds} alternating rounds. "
    "784-128-128-128-10, T 5, node step 0.05, Adam 1e-3, batch 128, one MNIST epoch; seconds count the training loop "
    f"(PCX after its JIT compilation). Peer: {peer[0]['peer']}.", "",
    "| activation | ours s/epoch | PCX s/epoch | ours / PCX | ours test % | PCX test % |", "|---|---|---|---|---|---|", *rows, "",
]
open("reports/pc_vs_pcx.md", "w").write("\n".join(out))
print("\n".join(out))
PY
