#!/usr/bin/env bash
# Speed of EqProp and PC against their peers and against the GEMM bound of an epoch.
#
#   bench/energy_speed.sh     (THREADS=2 DATA=../shared/datasets TORCH_PY=python PCX_PY=python)
#
# One epoch each, same settings and threads: our EqProp (784-500-10, T₁ 20, T₂ 4, batch
# 20) vs the Laborieux et al. loop (bench/peers/eqprop_peer.py, first 300 batches,
# extrapolated); our PC (784-128-128-128-10, T 5, batch 128) vs PCX
# (bench/peers/pcx_peer.py). The GEMM bound of an epoch is the time its matrix products
# take at the speed futureprop's GEMM reaches on each of their shapes in this run (step
# bench): EqProp per batch W₁x once (the clamped input's drive), per relaxation step
# (T₁ + 1 + T₂ + 1 of them) the forward and feedback products of the top layer, and the
# contrastive update (one product for W₁, two for W₂); PC per batch a forward pass, T
# forward passes of layers 2–4, T error products through layers 2–4 and the weight
# gradients (the standard algorithm), and separately the products futureprop runs (it
# skips exact zeros). Writes reports/energy_speed.md.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
DATA=${DATA:-${FUTUREPROP_DATA:-../shared/datasets}}
TORCH_PY=${TORCH_PY:-python3}
PCX_PY=${PCX_PY:-python3}
cargo build --release -q
cargo build --release --bench step -q
BIN=$(ls -t target/release/deps/step-* | grep -v '\.d$' | head -1)
R=runs/energy_speed
mkdir -p "$R" reports
target/release/futureprop train --quiet --data-dir "$DATA" --normalize unit --loss mse --model mlp:784-500-10 \
  --rule eqprop --eqprop-free-steps 20 --eqprop-nudge-steps 4 --eqprop-beta 1 --eqprop-step 0.5 \
  --optimizer sgd --lr 0.05 --param-group 'fc1.*:lr_scale=2' --batch-size 20 --epochs 1 \
  --threads "$THREADS" --out "$R/eqprop" > /dev/null
OMP_NUM_THREADS=$THREADS "$TORCH_PY" bench/peers/eqprop_peer.py --data "$DATA" --arch 784-500-10 \
  --T1 20 --T2 4 --beta 1 --batch-size 20 --lrs 0.1 0.05 --threads "$THREADS" --max-batches 300 | tail -n 1 > "$R/eqprop-peer.json"
target/release/futureprop train --quiet --data-dir "$DATA" --model mlp:784-128-128-128-10 --activation relu \
  --rule pc --pc-steps 5 --pc-gamma 0.05 --optimizer adam --lr 1e-3 --batch-size 128 --epochs 1 \
  --threads "$THREADS" --out "$R/pc" > /dev/null
"$PCX_PY" bench/peers/pcx_peer.py --data "$DATA" --threads "$THREADS" --lr-h 0.05 | tail -n 1 > "$R/pc-peer.json"
"$BIN" --threads "$THREADS" --steps 5 --model mlp:784-500-10 --batch 20 --json > "$R/gemm-eqprop.json"
"$BIN" --threads "$THREADS" --steps 5 --model mlp:784-128-128-128-10 --batch 128 --json > "$R/gemm-pc.json"
python3 - "$R" "$THREADS" <<'PY'
import json, sys
r, threads = sys.argv[1], sys.argv[2]
cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
def gemm(name):
    return {g["op"].split()[0]: g for g in json.load(open(f"{r}/{name}"))["gemm"]}
ms = lambda g, k: g[k]["ms"] / 1e3
fl = lambda g, k: 2.0 * g[k]["m"] * g[k]["n"] * g[k]["k"]
ge, gp = gemm("gemm-eqprop.json"), gemm("gemm-pc.json")
# EqProp, per batch of 20: 3000 batches.
it = (20 + 1) + (4 + 1)
eq_ops = [("fwd1", 1), ("fwd2", it), ("dh1", it), ("dW1", 1), ("dW2", 2)]
eq_b = 3000 * sum(ms(ge, k) * c for k, c in eq_ops)
eq_f = 3000 * sum(fl(ge, k) * c for k, c in eq_ops)
# PC, T = 5, per batch of 128: 468 batches (the last partial one counted whole). The
# standard algorithm: a forward pass, T steps each of predictions (layers 2-4) and error
# products (through layers 2-4), the weight gradients.
T = 5
pc_ops = [("fwd1", 1), ("fwd2", 1 + T), ("fwd3", 1 + T), ("fwd4", 1 + T),
          ("dh1", T), ("dh2", T), ("dh3", T),
          ("dW1", 1), ("dW2", 1), ("dW3", 1), ("dW4", 1)]
def pc_skipping(H, T):
    # The products futureprop's relaxation runs: those whose operand is not all zero
    # (errors turn non-zero one block per step from the top), predictions of moved
    # blocks only (src/rule/predictive_coding.rs).
    from collections import Counter
    c = Counter({f"fwd{k}": 1 for k in range(1, H + 2)})
    live = [False] * H
    for t in range(T):
        gs = live + [True]
        dx = []
        for k in range(H):
            if gs[k + 1]:
                c[f"dh{k + 1}"] += 1
            dx.append(gs[k + 1] or gs[k])
        for k in range(H):
            live[k] = live[k] or dx[k]
        for k in range(1, H + 1):
            if dx[k - 1]:
                c[f"fwd{k + 1}"] += 1
                if k < H:
                    live[k] = True
    for k in range(1, H + 2):
        c[f"dW{k}"] += 1
    return [(k, c[k]) for k, _ in pc_ops]
pc_ours = pc_skipping(3, T)
nb = 60000 / 128
pc_b = nb * sum(ms(gp, k) * c for k, c in pc_ops)
pc_f = nb * sum(fl(gp, k) * c for k, c in pc_ops)
pc_ob = nb * sum(ms(gp, k) * c for k, c in pc_ours)
pc_of = nb * sum(fl(gp, k) * c for k, c in pc_ours)
eq = json.load(open(f"{r}/eqprop/summary.json")); eqp = json.load(open(f"{r}/eqprop-peer.json"))
pc = json.load(open(f"{r}/pc/summary.json")); pcp = json.load(open(f"{r}/pc-peer.json"))
L = ["# EqProp and PC: speed against peers and the GEMM bound", "",
     f"Produced by `bench/energy_speed.sh` on {cpu}, {threads} thread(s). One epoch each; seconds count the training loop only "
     "(PCX after its JIT compilation; the EqProp peer's epoch extrapolated from its first 300 batches).", "",
     "| rule | GEMM GFLOP/epoch | GEMM bound s | ours s/epoch | ours × bound | peer | peer s/epoch | peer × bound | peer / ours |",
     "|---|---|---|---|---|---|---|---|---|"]
for name, f, b, o, p in [("EqProp 784-500-10, T₁ 20, T₂ 4, batch 20", eq_f, eq_b, eq, eqp),
                         ("PC 784-128-128-128-10, T 5, batch 128", pc_f, pc_b, pc, pcp)]:
    os_, ps = o["seconds_per_epoch"], p["seconds_per_epoch"]
    L.append(f"| {name} | {f/1e9:.1f} | {b:.2f} | {os_:.2f} | {os_/b:.2f} | {p['peer']} | {ps:.2f} | {ps/b:.2f} | {ps/os_:.2f}× |")
L += ["", f"PC with futureprop's exact skipping of all-zero products: {pc_of/1e9:.1f} GFLOP/epoch, GEMM bound "
      f"{pc_ob:.2f} s; ours × that bound {pc['seconds_per_epoch']/pc_ob:.2f}. Products per batch, standard vs ours: "
      + ", ".join(f"{k} {c}/{c2}" for (k, c), (_, c2) in zip(pc_ops, pc_ours)) + "."]
L += ["", "Test accuracy after the epoch: EqProp ours %.2f %%, peer %.2f %%; PC ours %.2f %%, PCX %.2f %%." % (
    100 * eq["test_accuracy"], 100 * eqp["test_accuracy"], 100 * pc["test_accuracy"], 100 * pcp["test_accuracy"]), "",
      "GEMM speed on the shapes (ms per product): EqProp " + ", ".join(f"{k} {ge[k]['ms']:.3f}" for k, _ in eq_ops)
      + "; PC " + ", ".join(f"{k} {gp[k]['ms']:.3f}" for k, _ in pc_ops) + "."]
open("reports/energy_speed.md", "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
