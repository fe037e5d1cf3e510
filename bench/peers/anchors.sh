#!/usr/bin/env bash
# Peer anchors for `futureprop reproduce`: rules no paper gives an MNIST number for at a
# setting we can match are anchored to a peer library's own implementation at identical
# settings. This script measures those numbers; reproduce/registry.toml carries them
# (rows with anchor = "peer") and reports/peer_anchors.md records the runs.
#
#   bench/peers/anchors.sh      (EPOCHS=20 SEEDS="0 1 2" THREADS=2 DATA=../shared/datasets
#                                PEER_VENV=~/.cache/futureprop/peers)
#
# BioTorch 0.0.16 (uSF, brSF, frSF; Sanfiz & Akrout 2021), torch 2.15.0: MNIST,
# 784-500-500-10 tanh, Glorot uniform, Adam lr 1e-3, batch 128, EPOCHS epochs, pixels
# standardised with the training set's mean and sd; test error after the last epoch.
set -euo pipefail
cd "$(dirname "$0")/../.."
EPOCHS=${EPOCHS:-20}
SEEDS=${SEEDS:-0 1 2}
THREADS=${THREADS:-2}
DATA=${DATA:-../shared/datasets}
VENV=${PEER_VENV:-$HOME/.cache/futureprop/peers}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.15.0 numpy "biotorch==0.0.16"
fi
lines=()
for rule in usf brsf frsf; do
  for seed in $SEEDS; do
    lines+=("$(OMP_NUM_THREADS=$THREADS "$VENV/bin/python" bench/peers/torch_peers.py --rule $rule --data "$DATA" \
      --model 784-500-500-10 --activation tanh --epochs "$EPOCHS" --threads "$THREADS" --seed "$seed" | tail -n 1)")
  done
done
python3 - "$EPOCHS" "${lines[@]}" > reports/peer_anchors.md <<'PY'
import json, statistics, sys
epochs = sys.argv[1]
runs = [json.loads(l) for l in sys.argv[2:]]
print("# Peer anchors\n")
print(f"`bench/peers/anchors.sh`: BioTorch's own implementations on MNIST, 784-500-500-10 tanh, Glorot uniform, "
      f"Adam lr 1e-3, batch 128, {epochs} epochs; test error % after the last epoch. The means and sample sds are "
      "the `paper_test_error` and `paper_spread` of the peer rows in reproduce/registry.toml.\n")
print("| rule | peer | seeds | test error % per seed | mean ± sd |\n|---|---|---|---|---|")
for rule in dict.fromkeys(r["rule"] for r in runs):
    e = [100 * (1 - r["test_accuracy"]) for r in runs if r["rule"] == rule]
    peer = next(f'{r["peer"]} (torch {r["torch"]})' for r in runs if r["rule"] == rule)
    sd = statistics.stdev(e) if len(e) > 1 else 0.0
    print(f"| {rule} | {peer} | {len(e)} | {', '.join(f'{v:.2f}' for v in e)} | {statistics.mean(e):.2f} ± {sd:.2f} |")
PY
cat reports/peer_anchors.md
