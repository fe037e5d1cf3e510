#!/usr/bin/env bash
# Gradient checkpointing (--checkpoint-segments): activation memory of a backprop step
# (the counting allocator's step peak minus the update's bytes) and training time per
# step, off against auto and one segment per layer, on a 32-layer MLP (width 1024) and
# on ResNet-20 (1×28×28), batch 128, MNIST. Runs alternate and repeat; medians.
#
# With PYTHON (an interpreter with torch; default $TORCH_PYTHON) the MLP also runs in
# PyTorch CPU, plain and under torch.utils.checkpoint (bench/checkpointing_pytorch.py).
#
#   bench/checkpointing.sh [PYTHON]   (STEPS=20 ROUNDS=3 DATA=../shared/datasets) → reports/checkpointing.md
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-20}
ROUNDS=${ROUNDS:-3}
DATA=${DATA:-../shared/datasets}
PY=${1:-${TORCH_PYTHON:-}}
cargo build --release -q
BIN=target/release/futureprop
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
MLP="mlp:784$(printf -- '-1024%.0s' $(seq 1 32))-10"
for r in $(seq "$ROUNDS"); do
  for m in "$MLP" "resnet20:1x28x28"; do
    for s in off auto 1000; do
      tag=$(echo "$m" | cut -c1-8)-$s-$r
      "$BIN" train --data-dir "$DATA" --model "$m" --checkpoint-segments "$s" --epochs 1 \
        --max-steps "$STEPS" --train-limit $((STEPS * 128)) --test-limit 100 \
        --out "$W/$tag" --quiet > /dev/null
      python3 - "$W/$tag/summary.json" "$m" "$s" >> "$W/rows.jsonl" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
m = s["memory"]
print(json.dumps({"model": sys.argv[2], "segments": sys.argv[3],
                  "activation_bytes": m["step_peak_bytes"] - m["update_bytes"],
                  "seconds_per_step": s["seconds_per_epoch"] / s["steps"],
                  "test_accuracy": s["test_accuracy"]}))
PY
    done
  done
  if [ -n "$PY" ]; then
    "$PY" bench/checkpointing_pytorch.py --steps "$STEPS" --threads 2 >> "$W/peer.jsonl"
  fi
done
touch "$W/peer.jsonl"
python3 - "$W/rows.jsonl" "$STEPS" "$ROUNDS" "$W/peer.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out = ["# Gradient checkpointing", "",
       f"`bench/checkpointing.sh`: backprop + Adam, batch 128, MNIST, {sys.argv[2]} steps per run, "
       f"median of {sys.argv[3]} alternating rounds. Activation memory: the counting allocator's "
       "heap high-water mark during the rule step minus the update's bytes. `1000`: one segment "
       "per layer (clamped to the layer count). The runs of one model train identically "
       "(same test accuracy): the update is bit-identical.", "",
       "| model | segments | activation MB | × off | s/step | × off | test accuracy |",
       "|---|---|---|---|---|---|---|"]
for model in dict.fromkeys(r["model"] for r in rows):
    base = None
    for seg in ["off", "auto", "1000"]:
        rs = [r for r in rows if r["model"] == model and r["segments"] == seg]
        mem = statistics.median(r["activation_bytes"] for r in rs)
        t = statistics.median(r["seconds_per_step"] for r in rs)
        base = base or (mem, t)
        name = "mlp: 32 × 1024" if model.startswith("mlp") else model
        out.append(f"| {name} | {seg} | {mem / 1e6:.1f} | {base[0] / mem:.2f}× lower | {t:.3f} | "
                   f"{t / base[1]:.2f} | {rs[0]['test_accuracy']:.4f} |")
peer = [json.loads(l) for l in open(sys.argv[4]) if l.strip()]
if peer:
    mem = {m: [round(r["activation_bytes"] / 1e6, 1) for r in peer if r["mode"] == m]
           for m in ["plain", "checkpoint"]}
    out += ["", f"PyTorch {peer[0]['torch']} CPU, the same MLP (`bench/checkpointing_pytorch.py`, "
            "2 threads), median step time. Its memory is not compared: PyTorch CPU keeps no "
            "allocator statistics, and the resident-set high-water mark above the resident set "
            f"after a first step varies from run to run (plain {mem['plain']} MB, "
            f"checkpointed {mem['checkpoint']} MB in these rounds).", "",
            "| peer | mode | s/step | × plain |", "|---|---|---|---|"]
    base = None
    for mode in ["plain", "checkpoint"]:
        rs = [r for r in peer if r["mode"] == mode]
        t = statistics.median(r["seconds_per_step"] for r in rs)
        base = base or t
        seg = f" ({rs[0]['segments']} segments)" if rs[0]["segments"] else ""
        out.append(f"| pytorch | {mode}{seg} | {t:.3f} | {t / base:.2f} |")
open("reports/checkpointing.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
