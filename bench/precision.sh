#!/usr/bin/env bash
# Mixed precision (--precision) on MNIST, mlp:784-1000-1000-10, backprop + Adam (lr 1e-3,
# batch 128):
#  - accuracy: f32, bf16 and f16 (dynamic loss scaling) for 3 seeds, EPOCHS epochs each:
#    test accuracy, activation bytes per step, f16's skipped steps and final loss scale;
#  - step time: futureprop f32 and bf16 (`cargo bench --bench step`) against PyTorch CPU
#    f32 and under torch.autocast("cpu", dtype=torch.bfloat16) (bench/step_pytorch.py),
#    at 1 and 2 threads, ROUNDS alternating rounds of STEPS steps; medians.
#
#   bench/precision.sh [PYTHON]   (EPOCHS=5 STEPS=200 ROUNDS=5 DATA=../shared/datasets)
#   → reports/precision.md
#
# PYTHON: an interpreter with torch (default $TORCH_PYTHON); without it the PyTorch
# columns are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${EPOCHS:-5}
STEPS=${STEPS:-200}
ROUNDS=${ROUNDS:-5}
DATA=${DATA:-../shared/datasets}
PY=${1:-${TORCH_PYTHON:-}}
cargo build --release -q
cargo build --release --bench step -q
BIN=target/release/futureprop
STEP=$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
MODEL=mlp:784-1000-1000-10
for seed in 1 2 3; do
  for p in f32 bf16 f16; do
    "$BIN" train --data-dir "$DATA" --dataset mnist --model "$MODEL" --optimizer adam \
      --lr 1e-3 --batch-size 128 --epochs "$EPOCHS" --seed "$seed" --precision "$p" \
      --out "$W/$p-$seed" --quiet > /dev/null
    python3 - "$W/$p-$seed/summary.json" "$p" "$seed" >> "$W/runs.jsonl" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(json.dumps({"precision": sys.argv[2], "seed": int(sys.argv[3]),
                  "test_accuracy": s["test_accuracy"],
                  "activation_bytes": s["memory"]["activation_bytes_per_step"],
                  "seconds_per_epoch": s["seconds_per_epoch"],
                  "steps": s["steps"], "loss_scaler": s.get("loss_scaler")}))
PY
  done
done
for t in 1 2; do
  for r in $(seq "$ROUNDS"); do
    for p in f32 bf16; do
      "$STEP" --threads "$t" --steps "$STEPS" --optimizer adam --precision "$p" \
        --gemm-dtype "$p" --json | python3 -c "import json,sys; d=json.load(sys.stdin); d['who']='futureprop'; d['precision']='$p'; print(json.dumps(d))" >> "$W/steps.jsonl"
      if [ -n "$PY" ]; then
        ac=$([ "$p" = bf16 ] && echo bf16 || echo none)
        OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t "$PY" bench/step_pytorch.py --threads "$t" \
          --steps "$STEPS" --optimizer adam --autocast "$ac" 2> /dev/null \
          | python3 -c "import json,sys; d=json.load(sys.stdin); d['who']='pytorch'; d['precision']='$p'; print(json.dumps(d))" >> "$W/steps.jsonl"
      fi
    done
  done
done
python3 - "$W/runs.jsonl" "$W/steps.jsonl" "$EPOCHS" "$STEPS" "$ROUNDS" > reports/precision.md <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
steps = [json.loads(l) for l in open(sys.argv[2])]
epochs, nsteps, rounds = sys.argv[3], sys.argv[4], sys.argv[5]
med = statistics.median
print("# Mixed precision\n")
print(f"`bench/precision.sh`: MNIST, mlp:784-1000-1000-10, backprop + Adam (lr 1e-3), batch 128, "
      f"{epochs} epochs, seeds 1–3. bf16 and f16 store activations and feed the products in "
      "16 bits; parameters, gradients and Adam's moments stay f32.\n")
print("| precision | test accuracy (seeds 1, 2, 3) | mean | − f32 (pp) | activation bytes/step | × f32 | s/epoch | f16 skipped steps | final loss scale |")
print("|---|---|---|---|---|---|---|---|---|")
base = {}
for p in ["f32", "bf16", "f16"]:
    rs = sorted((r for r in runs if r["precision"] == p), key=lambda r: r["seed"])
    accs = [r["test_accuracy"] for r in rs]
    mean = sum(accs) / len(accs)
    act = med(r["activation_bytes"] for r in rs)
    base.setdefault("acc", mean)
    base.setdefault("act", act)
    sk = ", ".join(str(r["loss_scaler"]["skipped"]) for r in rs) if p == "f16" else "–"
    sc = ", ".join(f"{r['loss_scaler']['scale']:.0f}" for r in rs) if p == "f16" else "–"
    print(f"| {p} | {', '.join(f'{a:.4f}' for a in accs)} | {mean:.4f} | {100 * (mean - base['acc']):+.2f} | "
          f"{act / 1e6:.2f} MB | {act / base['act']:.2f} | {med(r['seconds_per_epoch'] for r in rs):.2f} | {sk} | {sc} |")
print()
print(f"Step time (forward, backward, Adam update; batch 128), median over {rounds} alternating rounds "
      f"of {nsteps} steps each. PyTorch bf16 = torch.autocast(\"cpu\", dtype=torch.bfloat16) "
      "around the forward pass and loss.\n")
print("| threads | futureprop f32 ms | futureprop bf16 ms | bf16 / f32 | PyTorch f32 ms | PyTorch bf16 ms | PyTorch bf16 / f32 | ours bf16 / PyTorch bf16 |")
print("|---|---|---|---|---|---|---|---|")
for t in [1, 2]:
    def ms(who, p):
        v = [s["step_ms"] for s in steps if s["who"] == who and s["precision"] == p and s["threads"] == t]
        return med(v) if v else None
    of, ob, pf, pb = ms("futureprop", "f32"), ms("futureprop", "bf16"), ms("pytorch", "f32"), ms("pytorch", "bf16")
    fmt = lambda x: "–" if x is None else f"{x:.2f}"
    ratio = lambda a, b: "–" if a is None or b is None else f"{a / b:.2f}"
    print(f"| {t} | {fmt(of)} | {fmt(ob)} | {ratio(ob, of)} | {fmt(pf)} | {fmt(pb)} | {ratio(pb, pf)} | {ratio(ob, pb)} |")
torch = next((s["torch"] for s in steps if s["who"] == "pytorch"), None)
if torch:
    print(f"\nPyTorch {torch} (CPU).")
print("\nbf16 products run on AMX tiles where the CPU and OS grant them (else AVX512_BF16, else "
      "widened to f32): see `src/tensor/bf16_gemm.rs`.")
PY
cat reports/precision.md
