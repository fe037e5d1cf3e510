#!/usr/bin/env bash
# Side-by-side with the peers: each peer's own implementation on the same dataset,
# architecture, batch size, epochs and thread count as the matching futureprop arm.
# Writes reports/peers.md (accuracy and seconds per epoch, ratio ours/peer).
#
#   bench/peers/run.sh        (EPOCHS=3 THREADS=2 DATA=../shared/datasets PEER_VENV=~/.cache/futureprop/peers
#                              PCX_VENV=~/.cache/futureprop/pcx FF_VENV=~/.cache/futureprop/ff-peer)
#
# Peers, pinned: torch 2.15.0 (backprop, and the EqProp loop of Laborieux et al.
# re-implemented in bench/peers/eqprop_peer.py), biotorch 0.0.16 (FA, DFA, uSF), pcx 0.6.3
# (predictive coding, JAX; own venv), fflib 0.3.0 (Forward-Forward; pins torch 2.6, own
# venv). BP/FA/DFA/uSF: 784-500-500-10 tanh, Adam 1e-3, batch 128, EPOCHS epochs. The
# other rows use each peer's setting, written in the row: PC on PCX's 784-128-128-128-10
# (T 5, one epoch), EqProp on Scellier & Bengio's 784-500-10 (T₁ 20, T₂ 4, batch 20; the
# peer's epoch extrapolated from its first 300 batches), FF on fflib's 794-2000-2000
# example (one epoch).
set -euo pipefail
cd "$(dirname "$0")/../.."
EPOCHS=${EPOCHS:-3}
THREADS=${THREADS:-2}
DATA=${DATA:-../shared/datasets}
VENV=${PEER_VENV:-$HOME/.cache/futureprop/peers}
MODEL=${MODEL:-784-500-500-10}
ACT=${ACT:-tanh}
PCX_VENV=${PCX_VENV:-$HOME/.cache/futureprop/pcx}
FF_VENV=${FF_VENV:-$HOME/.cache/futureprop/ff-peer}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.15.0 numpy "biotorch==0.0.16"
fi
if [ ! -x "$PCX_VENV/bin/python" ]; then
  python3 -m venv "$PCX_VENV"
  "$PCX_VENV/bin/pip" install -q "pcx==0.6.3" "jax[cpu]==0.4.38"
fi
if [ ! -x "$FF_VENV/bin/python" ]; then
  python3 -m venv "$FF_VENV"
  "$FF_VENV/bin/pip" install -q "fflib==0.3.0"
fi
DATA_ABS=$(realpath "$DATA")
cargo build --release -q
mkdir -p reports runs/peers
rows=()
for rule in bp fa dfa usf; do
  peer=$(OMP_NUM_THREADS=$THREADS "$VENV/bin/python" bench/peers/torch_peers.py --rule $rule --data "$DATA" \
    --model "$MODEL" --activation "$ACT" --epochs "$EPOCHS" --threads "$THREADS" | tail -n 1)
  target/release/futureprop train --quiet --data-dir "$DATA" --model "mlp:$MODEL" --activation "$ACT" \
    --init xavier-uniform --rule $rule --optimizer adam --lr 1e-3 --batch-size 128 --epochs "$EPOCHS" \
    --threads "$THREADS" --out "runs/peers/$rule" > /dev/null
  rows+=("$peer" "$(cat runs/peers/$rule/summary.json)")
done
# Predictive coding: PCX's MLP, T = 5, one epoch.
peer=$("$PCX_VENV/bin/python" bench/peers/pcx_peer.py --data "$DATA" --threads "$THREADS" --lr-h 0.05 | tail -n 1)
target/release/futureprop train --quiet --data-dir "$DATA" --model mlp:784-128-128-128-10 --activation relu \
  --rule pc --pc-steps 5 --pc-gamma 0.05 --optimizer adam --lr 1e-3 --batch-size 128 --epochs 1 \
  --threads "$THREADS" --out runs/peers/pc > /dev/null
rows+=("$peer" "$(cat runs/peers/pc/summary.json)" "pc" "784-128-128-128-10 ReLU, T 5, Adam 1e-3, batch 128, 1 epoch")
# Equilibrium propagation: Scellier & Bengio's setting.
peer=$(OMP_NUM_THREADS=$THREADS "$VENV/bin/python" bench/peers/eqprop_peer.py --data "$DATA" --arch 784-500-10 \
  --T1 20 --T2 4 --beta 1 --batch-size 20 --lrs 0.1 0.05 --threads "$THREADS" --max-batches 300 | tail -n 1)
target/release/futureprop train --quiet --data-dir "$DATA" --normalize unit --loss mse --model mlp:784-500-10 \
  --rule eqprop --eqprop-free-steps 20 --eqprop-nudge-steps 4 --eqprop-beta 1 --eqprop-step 0.5 \
  --optimizer sgd --lr 0.05 --param-group 'fc1.*:lr_scale=2' --batch-size 20 --epochs 1 \
  --threads "$THREADS" --out runs/peers/eqprop > /dev/null
rows+=("$peer" "$(cat runs/peers/eqprop/summary.json)" "eqprop" "784-500-10 hard sigmoid, T₁ 20, T₂ 4, β 1, batch 20, 1 epoch (peer: 300 batches, extrapolated)")
# Forward-Forward: fflib's 794-2000-2000 example.
peer=$(cd bench/peers && OMP_NUM_THREADS=$THREADS "$FF_VENV/bin/python" ff_peer.py --data "$DATA_ABS" \
  --widths 2000,2000 --epochs 1 --threads "$THREADS" | tail -n 1)
target/release/futureprop train --quiet --data-dir "$DATA" --normalize unit --model mlp:784-2000-2000-10 \
  --activation relu --rule ff --optimizer adam --lr 0.01 --batch-size 128 --epochs 1 \
  --threads "$THREADS" --out runs/peers/ff > /dev/null
rows+=("$peer" "$(cat runs/peers/ff/summary.json)" "ff" "784-2000-2000 ReLU (peer: 794 inputs), Adam 0.01, batch 128, 1 epoch")
python3 - "$EPOCHS" "$THREADS" "$MODEL" "$ACT" "${rows[@]}" <<'PY'
import json, sys, platform
epochs, threads, model, act = sys.argv[1:5]
r = sys.argv[5:]
cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
lines = ["# futureprop vs peers", "",
         f"Produced by `bench/peers/run.sh` on {cpu}, {threads} thread(s), seed 0. BP/FA/DFA/uSF: MNIST, {model} {act}, "
         f"Glorot uniform, Adam lr 1e-3, batch 128, {epochs} epoch(s); the other rows use the setting in the row. "
         "Seconds per epoch count the training loop only (PCX: after its JIT compilation). The EqProp and PCX peers "
         "report test accuracy after their (partial) epoch; fflib and futureprop's FF predict by trying every label.", "",
         "| rule | peer | peer test acc % | ours test acc % | peer s/epoch | ours s/epoch | time ratio ours/peer |",
         "|---|---|---|---|---|---|---|"]
torch_rows = 8  # bp, fa, dfa, usf: peer and ours each
for peer_s, ours_s in zip(r[0:torch_rows:2], r[1:torch_rows:2]):
    p, o = json.loads(peer_s), json.loads(ours_s)
    name = f"{p['peer']} {p.get('torch', '')}".strip()
    lines.append(f"| {p['rule']} | {name} | {100*p['test_accuracy']:.2f} | {100*o['test_accuracy']:.2f} | "
                 f"{p['seconds_per_epoch']:.2f} | {o['seconds_per_epoch']:.2f} | {o['seconds_per_epoch']/p['seconds_per_epoch']:.3f} |")
rest = r[torch_rows:]
for peer_s, ours_s, rule, setting in zip(rest[0::4], rest[1::4], rest[2::4], rest[3::4]):
    p, o = json.loads(peer_s), json.loads(ours_s)
    name = f"{p['peer']}" + (f" {p['version']} (torch {p['torch']})" if "version" in p else (f" (torch {p['torch']})" if "torch" in p else ""))
    lines.append(f"| {rule} ({setting}) | {name} | {100*p['test_accuracy']:.2f} | {100*o['test_accuracy']:.2f} | "
                 f"{p['seconds_per_epoch']:.2f} | {o['seconds_per_epoch']:.2f} | {o['seconds_per_epoch']/p['seconds_per_epoch']:.3f} |")
open("reports/peers.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
