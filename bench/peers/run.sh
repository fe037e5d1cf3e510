#!/usr/bin/env bash
# Side-by-side with the peers: each peer's own implementation on the same dataset,
# architecture, batch size, epochs and thread count as the matching futureprop arm.
# Writes reports/peers.md (accuracy and seconds per epoch, ratio ours/peer).
#
#   bench/peers/run.sh        (EPOCHS=3 THREADS=2 DATA=../shared/datasets PEER_VENV=~/.cache/futureprop/peers)
#
# Peers, pinned: torch 2.15.0 (backprop), biotorch 0.0.16 (FA, DFA, uSF).
# PCX 0.6.3 (predictive coding, JAX) and fflib 0.3.0 (Forward-Forward; needs torch 2.6 /
# torchvision 0.21, so its own venv) join the table when futureprop's `pc` and `ff`
# rules exist; until then they are listed as pending.
set -euo pipefail
cd "$(dirname "$0")/../.."
EPOCHS=${EPOCHS:-3}
THREADS=${THREADS:-2}
DATA=${DATA:-../shared/datasets}
VENV=${PEER_VENV:-$HOME/.cache/futureprop/peers}
MODEL=${MODEL:-784-500-500-10}
ACT=${ACT:-tanh}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.15.0 numpy "biotorch==0.0.16"
fi
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
python3 - "$EPOCHS" "$THREADS" "$MODEL" "$ACT" "${rows[@]}" <<'PY'
import json, sys, platform
epochs, threads, model, act = sys.argv[1:5]
r = sys.argv[5:]
cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
lines = ["# futureprop vs peers", "",
         f"Produced by `bench/peers/run.sh`: MNIST, {model} {act}, Glorot uniform, Adam lr 1e-3, batch 128, "
         f"{epochs} epoch(s), {threads} thread(s), seed 0; {cpu}. Seconds per epoch count the training loop only.", "",
         "| rule | peer | peer test acc % | ours test acc % | peer s/epoch | ours s/epoch | time ratio ours/peer |",
         "|---|---|---|---|---|---|---|"]
for peer_s, ours_s in zip(r[0::2], r[1::2]):
    p, o = json.loads(peer_s), json.loads(ours_s)
    name = f"{p['peer']} {p.get('torch', '')}".strip()
    lines.append(f"| {p['rule']} | {name} | {100*p['test_accuracy']:.2f} | {100*o['test_accuracy']:.2f} | "
                 f"{p['seconds_per_epoch']:.2f} | {o['seconds_per_epoch']:.2f} | {o['seconds_per_epoch']/p['seconds_per_epoch']:.3f} |")
lines += ["| pc | PCX 0.6.3 | pending | no futureprop `pc` rule yet | | | |",
          "| ff | fflib 0.3.0 | pending | no futureprop `ff` rule yet | | | |"]
open("reports/peers.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
