#!/usr/bin/env bash
# Energy-based rules on MNIST (issue acceptance runs), then their speed against peers.
#
#   bench/energy.sh        (THREADS=2, DATA=../shared/datasets, EQ_EPOCHS=25, PC_EPOCHS=15)
#
# - EqProp, Scellier & Bengio's setting: 784-500-10, hard sigmoid, T₁ 20, T₂ 4, β 1,
#   ε 0.5, batch 20, SGD with per-layer rates 0.1 / 0.05, squared error, pixels in [0,1].
# - PC on PCX's MLP 784-128-128-128-10 (ReLU here), T = 5, γ 0.05, Adam 1e-3 with a cosine schedule, batch 128,
#   beside BP on the same net and budget.
# - Speed: one epoch of our EqProp vs the Laborieux et al. loop (bench/peers/eqprop_peer.py,
#   first PEER_BATCHES batches, extrapolated), same settings and threads; one epoch of
#   our PC vs PCX (bench/peers/pcx_peer.py) when its venv exists (PCX_PY).
# Output: runs/energy/*, reports/energy.md.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
DATA=${DATA:-../shared/datasets}
EQ_EPOCHS=${EQ_EPOCHS:-25}
PC_EPOCHS=${PC_EPOCHS:-15}
PEER_BATCHES=${PEER_BATCHES:-300}
TORCH_PY=${TORCH_PY:-/work/torchvenv/bin/python}
PCX_PY=${PCX_PY:-/work/pcxvenv/bin/python}
cargo build --release -q
BIN=target/release/futureprop
R=runs/energy
mkdir -p "$R" reports
EQ=(--data-dir "$DATA" --normalize unit --loss mse --model mlp:784-500-10 --rule eqprop
  --eqprop-free-steps 20 --eqprop-nudge-steps 4 --eqprop-beta 1 --eqprop-step 0.5
  --optimizer sgd --lr 0.05 --param-group 'fc1.*:lr_scale=2' --batch-size 20
  --threads "$THREADS" --seed 0 --quiet)
$BIN train "${EQ[@]}" --epochs "$EQ_EPOCHS" --out "$R/eqprop" > /dev/null
PC=(--data-dir "$DATA" --model mlp:784-128-128-128-10 --activation relu --optimizer adam
  --lr 1e-3 --schedule cosine --batch-size 128 --threads "$THREADS" --seed 0 --quiet)
$BIN train "${PC[@]}" --rule pc --pc-steps 5 --pc-gamma 0.05 --epochs "$PC_EPOCHS" --out "$R/pc" > /dev/null
$BIN train "${PC[@]}" --rule bp --epochs "$PC_EPOCHS" --out "$R/pc-bp" > /dev/null
# Speed: one epoch each.
$BIN train "${EQ[@]}" --epochs 1 --out "$R/eqprop-1" > /dev/null
OMP_NUM_THREADS=$THREADS "$TORCH_PY" bench/peers/eqprop_peer.py --data "$DATA" --arch 784-500-10 \
  --T1 20 --T2 4 --beta 1 --batch-size 20 --lrs 0.1 0.05 --threads "$THREADS" \
  --max-batches "$PEER_BATCHES" | tail -n 1 > "$R/eqprop-peer.json"
$BIN train "${PC[@]}" --rule pc --pc-steps 5 --pc-gamma 0.05 --epochs 1 --out "$R/pc-1" > /dev/null
if [ -x "$PCX_PY" ] && [ -f bench/peers/pcx_peer.py ]; then
  "$PCX_PY" bench/peers/pcx_peer.py --data "$DATA" --threads "$THREADS" --lr-h 0.05 | tail -n 1 > "$R/pc-peer.json"
else
  echo '{}' > "$R/pc-peer.json"
fi
python3 - "$R" <<'PY'
import json, sys
r = sys.argv[1]
s = lambda n: json.load(open(f"{r}/{n}/summary.json"))
eq, pc, bp = s("eqprop"), s("pc"), s("pc-bp")
eq1, pc1 = s("eqprop-1"), s("pc-1")
peer = json.load(open(f"{r}/eqprop-peer.json"))
pcx = json.load(open(f"{r}/pc-peer.json"))
L = ["# Energy-based rules on MNIST", "",
     "Produced by `bench/energy.sh` on this machine (2 threads).", "",
     "| run | epochs | test error % | best test error % | s/epoch |", "|---|---|---|---|---|"]
for name, x in [("EqProp 784-500-10 (T₁ 20, T₂ 4, β 1, ε 0.5, batch 20)", eq),
                ("PC 784-128-128-128-10 (T 5, γ 0.05, Adam, cosine)", pc), ("BP, same net and budget", bp)]:
    L.append(f"| {name} | {x['epochs']} | {100*(1-x['test_accuracy']):.2f} | {100*(1-x['best_test_accuracy']):.2f} | {x['seconds_per_epoch']:.2f} |")
L += ["", "## Speed against peers (one epoch, same settings and threads)", "",
      "| rule | ours s/epoch | peer | peer s/epoch | peer / ours |", "|---|---|---|---|---|"]
L.append(f"| EqProp | {eq1['seconds_per_epoch']:.2f} | {peer.get('peer')} (torch {peer.get('torch')}, first {peer.get('batches')} batches extrapolated) | {peer['seconds_per_epoch']:.1f} | {peer['seconds_per_epoch']/eq1['seconds_per_epoch']:.1f}× |")
if pcx:
    L.append(f"| PC | {pc1['seconds_per_epoch']:.2f} | {pcx.get('peer')} | {pcx['seconds_per_epoch']:.2f} | {pcx['seconds_per_epoch']/pc1['seconds_per_epoch']:.1f}× |")
for name, x in [("EqProp", eq1), ("PC", pc1)]:
    L.append("")
    L.append(f"{name}: {x['flops_per_step']/1e9:.3f} GFLOP per step counted by the kernels.")
open("reports/energy.md", "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
