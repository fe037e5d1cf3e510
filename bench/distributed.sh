#!/usr/bin/env bash
# Training on MPI, measured: data-parallel throughput of 2 ranks × 1 thread (mpirun)
# against 1 process × 2 threads and 1 process × 1 thread on MNIST 784-1000-1000-10, bp +
# Adam 1e-3, at batch 128 and larger; bytes sent per step and test accuracy after EPOCHS
# epochs for the plain all-reduce, EF-sign compression and 1-bit Adam; the layer
# pipeline's step time, DFA against BP, on 784-1000×4-10 over 2 ranks. Time per step from
# each run's epoch record, alternating rounds, medians of the per-round ratios.
#
#   bench/distributed.sh [STEPS] [ROUNDS] [EPOCHS]    → reports/distributed.md
#
# Needs Open MPI (apt-get install libopenmpi-dev openmpi-bin libclang-dev) and MNIST in
# FUTUREPROP_DATA (default ../shared/datasets).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
ROUNDS=${2:-5}
EPOCHS=${3:-3}
DATA=${FUTUREPROP_DATA:-$(cd .. && pwd)/shared/datasets}
cargo build --release --features mpi -q
BIN=target/release/futureprop
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Measured here: Open MPI's shared-memory transport without its single-copy (CMA) path
# all-reduces the 7.2 MB update in 1.3 ms instead of 2.3 ms.
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
run=(train --dataset mnist --data-dir "$DATA" --model mlp:784-1000-1000-10 --activation relu
  --rule bp --optimizer adam --lr 1e-3 --batch-size 128 --seed 0 --quiet)
for r in $(seq 1 "$ROUNDS"); do
  "$BIN" "${run[@]}" --epochs 1 --max-steps "$STEPS" --threads 2 --out "$TMP/p1t2-$r"
  mpirun -np 2 "$BIN" "${run[@]}" --epochs 1 --max-steps "$STEPS" --threads 1 --out "$TMP/p2t1-$r"
  "$BIN" "${run[@]}" --epochs 1 --max-steps "$STEPS" --threads 1 --out "$TMP/p1t1-$r"
  # One rank's own work: its 64 rows at 1 thread, no messages.
  "$BIN" "${run[@]}" --batch-size 64 --epochs 1 --max-steps "$STEPS" --threads 1 --out "$TMP/half-$r"
  # Larger batches: the same rows per second, fewer all-reduces.
  for b in 512 1024; do
    s=$((STEPS * 128 / b))
    "$BIN" "${run[@]}" --batch-size $b --epochs 1 --max-steps $s --threads 2 --out "$TMP/p1t2-b$b-$r"
    mpirun -np 2 "$BIN" "${run[@]}" --batch-size $b --epochs 1 --max-steps $s --threads 1 --out "$TMP/p2t1-b$b-$r"
  done
  # The layer pipeline on 784-1000×4-10: DFA and BP, whole batches and 4 microbatches.
  for rule in dfa bp; do
    deep=(train --dataset mnist --data-dir "$DATA" --model mlp:784-1000-1000-1000-1000-10
      --rule $rule --optimizer adam --lr 1e-3 --batch-size 128 --seed 0 --quiet --epochs 1
      --max-steps "$STEPS")
    for m in 1 4; do
      mpirun -np 2 "$BIN" "${deep[@]}" --threads 1 --parallel pipeline --microbatches $m --out "$TMP/pipe-$rule-m$m-$r"
    done
    "$BIN" "${deep[@]}" --threads 2 --out "$TMP/deep-$rule-$r"
  done
done
if [ "$EPOCHS" -gt 0 ]; then
  mpirun -np 2 "$BIN" "${run[@]}" --epochs "$EPOCHS" --threads 1 --out "$TMP/acc-p2"
  mpirun -np 2 "$BIN" "${run[@]}" --epochs "$EPOCHS" --threads 1 --compression sign --out "$TMP/acc-sign"
  onebit=("${run[@]}")
  onebit[12]=onebit_adam
  mpirun -np 2 "$BIN" "${onebit[@]}" --epochs "$EPOCHS" --threads 1 --out "$TMP/acc-onebit"
  "$BIN" "${run[@]}" --epochs "$EPOCHS" --threads 2 --out "$TMP/acc-p1"
fi
python3 - "$TMP" "$ROUNDS" "$STEPS" "$EPOCHS" > reports/distributed.md <<'EOF'
import json, math, os, statistics, sys
tmp, rounds, steps, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
R = range(1, rounds + 1)
med = statistics.median
def epochs_of(d):
    with open(os.path.join(tmp, d, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r.get("type") == "epoch"]
def per_step(d):
    (e,) = epochs_of(d)
    return e["epoch_seconds"] / e["step"], e
def times(k):
    return [per_step(f"{k}-{r}")[0] for r in R]
ms = lambda v: f"{1e3 * med(v):.2f}"
rounds_of = lambda v: ", ".join(f"{x:.3f}" for x in v)
t = {k: times(k) for k in ("p1t2", "p2t1", "p1t1", "half")}
ratio = [b / a for a, b in zip(t["p2t1"], t["p1t2"])]  # throughput of 2 ranks over 1 process × 2 threads
ratio1 = [b / a for a, b in zip(t["p2t1"], t["p1t1"])]
_, e = per_step("p2t1-1")
print("# Training on MPI\n")
print(f"`bench/distributed.sh {steps} {rounds} {epochs}` on this machine ({os.cpu_count()} cores, Open MPI "
      "over shared memory): time per step from each run's epoch record (training only), "
      f"{rounds} alternating rounds, ratios per round, medians.\n")
print("## Data-parallel throughput\n")
print(f"MNIST 784-1000-1000-10, bp + Adam 1e-3, batch 128 (64 rows per rank at 2 ranks), {steps} steps per run.\n")
print("| layout | ms per step (median) | throughput vs 1 process × 2 threads |")
print("|---|---|---|")
print(f"| 1 process × 2 threads | {ms(t['p1t2'])} | 1 |")
print(f"| 2 ranks × 1 thread (mpirun) | {ms(t['p2t1'])} | {med(ratio):.3f} (rounds {rounds_of(ratio)}) |")
print(f"| 1 process × 1 thread | {ms(t['p1t1'])} | {med([a / b for a, b in zip(t['p1t2'], t['p1t1'])]):.3f} |")
print(f"| 1 process × 1 thread, 64 rows (one rank's share, no messages) | {ms(t['half'])} | |")
print(f"\n2 ranks against 1 process × 1 thread: {med(ratio1):.2f}× the throughput.")
comm = med(t["p2t1"]) - med(t["half"])
print(f"\nWhere 2 ranks lose at batch 128: a rank's own 64 rows at 1 thread take {ms(t['half'])} ms, "
      f"{med(t['half']) / med(t['p1t2']):.2f}× the 2-thread step of 128 rows (smaller GEMMs, and each "
      "rank repeats the Adam update of all 1.8 M parameters), so 2 ranks cannot reach more than "
      f"{med(t['p1t2']) / med(t['half']):.2f}× even with free messages; the all-reduce of the 7.2 MB "
      f"update, its packing and the wait for the slower rank add {1e3 * comm:.2f} ms, on the same "
      "two cores that compute.\n")
print("| batch | 1 process × 2 threads, ms per step | 2 ranks × 1 thread, ms per step | throughput ratio |")
print("|---|---|---|---|")
print(f"| 128 | {ms(t['p1t2'])} | {ms(t['p2t1'])} | {med(ratio):.3f} |")
for b in (512, 1024):
    a, c = times(f"p1t2-b{b}"), times(f"p2t1-b{b}")
    print(f"| {b} | {ms(a)} | {ms(c)} | {med([x / y for x, y in zip(a, c)]):.3f} (rounds {rounds_of([x / y for x, y in zip(a, c)])}) |")
print("\nThe all-reduce costs the same per step at every batch, so the goal of 0.9× is reached once "
      "the step's compute outweighs it (batch 1024 here); at batch 128 on two shared cores it is not.")
nbytes = e["bytes_sent"] / e["step"]
print(f"\nBytes sent per step and rank (plain f32 all-reduce, counted as a ring sends them, "
      f"2(K−1)/K × the update's bytes): {nbytes:,.0f}.")
if epochs > 0:
    a2, a1, s2, o2 = epochs_of("acc-p2"), epochs_of("acc-p1"), epochs_of("acc-sign"), epochs_of("acc-onebit")
    per = lambda h: sum(x["bytes_sent"] for x in h) / h[-1]["step"]
    print(f"\n## Compression: {epochs} epochs at 2 ranks\n")
    print("| what the ranks send | bytes per step and rank (mean over the run) | test accuracy | ms per step (epoch 1) |")
    print("|---|---|---|---|")
    for label, h in [("f32 update, all-reduce", a2),
                     ("sign + error feedback of the update (`--compression sign`), all-gather", s2),
                     ("1-bit Adam (`--optimizer onebit_adam`, 200 warm-up steps at f32, then 1-bit momentum), all-gather", o2)]:
        print(f"| {label} | {per(h):,.0f} | {100 * h[-1]['test_accuracy']:.2f} % | "
              f"{1e3 * h[0]['epoch_seconds'] / h[0]['step']:.2f} |")
    print(f"\n1 process × 2 threads, same seed and global batches, Adam: {100 * a1[-1]['test_accuracy']:.2f} %. "
          f"After its warm-up 1-bit Adam sends {(per(a2) * 1) / max(1, (per(o2) * o2[-1]['step'] - 200 * per(a2)) / (o2[-1]['step'] - 200)):.1f}× fewer bytes per step than the f32 all-reduce.")
# Pipeline
pt = {(rule, m): times(f"pipe-{rule}-m{m}") for rule in ("dfa", "bp") for m in (1, 4)}
deep = {rule: times(f"deep-{rule}") for rule in ("dfa", "bp")}
print("\n## Layer pipeline: DFA against BP\n")
print(f"MNIST 784-1000×4-10, Adam 1e-3, batch 128, 2 ranks × 1 thread (`--parallel pipeline`): rank 0 "
      "holds the first two weight layers (1.78 M weights), rank 1 the other three (2.01 M). "
      f"{steps} steps per run.\n")
print("| microbatches | pipelined DFA, ms per step | pipelined BP, ms per step | DFA / BP |")
print("|---|---|---|---|")
for m in (1, 4):
    d, b = pt[("dfa", m)], pt[("bp", m)]
    r = [x / y for x, y in zip(d, b)]
    print(f"| {m} | {ms(d)} | {ms(b)} | {med(r):.3f} (rounds {rounds_of(r)}) |")
print(f"\nThe same nets in 1 process × 2 threads: DFA {ms(deep['dfa'])} ms, BP {ms(deep['bp'])} ms per step. "
      "The pipelined DFA step is one forward flow and one broadcast of the 128×10 output error, after "
      "which both ranks update at once; BP's error must come back through rank 1 before rank 0 can "
      "update. Microbatches of 32 rows lose more to smaller GEMMs and more messages than they "
      "gain from overlapping on two cores; the pipeline pays on machines where each stage has "
      "its own cores and the model does not fit one.")
# The scaling model.
tc = med(t["half"])
print("\n## Scaling model (on paper)\n")
print(f"From the measured compute of one rank's 64 rows ({1e3 * tc:.2f} ms per step) and the update's "
      f"{nbytes / 1e6:.2f} MB, weak scaling at 64 rows per rank, α = 5 µs a message:\n")
print("- data-parallel BP, ring all-reduce: step = compute + 2(K−1)/K × bytes / bandwidth + 2(K−1)α;")
print("- compressed BP (sign or 1-bit Adam after its warm-up) as built here, an all-gather of every "
      "rank's 1-bit message: step = compute + (K−1) × bytes/32 / bandwidth + (K−1)α. (A two-stage "
      "compressed all-reduce, DeepSpeed's, would cost 2(K−1)/K × bytes/32.)")
print("\nEfficiency = compute / step; speed-up = K × efficiency.\n")
print("| K | BP 25 Gb/s: eff. | speed-up | BP 100 Gb/s: eff. | speed-up | 1-bit 25 Gb/s: eff. | speed-up | 1-bit 100 Gb/s: eff. | speed-up |")
print("|---|---|---|---|---|---|---|---|---|")
for k in [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]:
    row = [str(k)]
    for bw in (25e9 / 8, 100e9 / 8):
        step = tc + 2 * (k - 1) / k * nbytes / bw + 2 * (k - 1) * 5e-6
        row += [f"{tc / step:.2f}", f"{k * tc / step:.0f}"]
    for bw in (25e9 / 8, 100e9 / 8):
        step = tc + (k - 1) * nbytes / 32 / bw + (k - 1) * 5e-6
        row += [f"{tc / step:.2f}", f"{k * tc / step:.0f}"]
    print("| " + " | ".join(row) + " |")
print("\nPlain BP's bandwidth term saturates at 2 × bytes / bandwidth (4.6 ms at 25 Gb/s, 1.1 ms at "
      "100 Gb/s): a constant efficiency until the latency 2(K−1)α reaches the compute, in the "
      "hundreds of ranks. The all-gathered 1-bit messages grow with K and overtake the plain "
      "all-reduce's bytes at K ≈ 64; below that compression wins, above it only a two-stage "
      "compressed all-reduce keeps its 32× advantage.")
# DFA pipeline model: one 1000×1000 block per rank, K blocks deep, from the measured
# flop rate of one thread (the 64-row runs' counted flops over their time).
(h,) = epochs_of("half-1")
rate = h["flops"] / h["epoch_seconds"]
def pipe(k, m, rows, bw, dfa):
    f = 2 * rows * 1000 * 1000 / rate           # a block's forward on the whole batch
    hop = rows / m * 1000 * 4 / bw + 5e-6       # one microbatch's activations to the next rank
    fwd = (m + k - 1) * (f / m + hop)
    if dfa:  # broadcast of the rows×10 error, then the block's ΔW = δᵀh
        return (2 * f) / (fwd + math.ceil(math.log2(k)) * (rows * 40 / bw + 5e-6) + f)
    return (3 * f) / (fwd + (m + k - 1) * (2 * f / m + hop))
print(f"\nThe layer pipeline scales with depth, not data. A net of K blocks of 1000×1000, one per "
      f"rank, at the measured rate of one thread ({rate / 1e9:.1f} GFLOP/s): a block's forward f = "
      "2·rows·10⁶ flops, BP's backward 2f, DFA's update f (δ = e·B is 10× narrower). Per microbatch "
      "a rank forwards rows/M × 1000 f32 to the next. DFA: step = (M + K − 1)(f/M + hop) + "
      "⌈log₂K⌉ × broadcast of the error + f; BP: (M + K − 1)(f/M + hop) + (M + K − 1)(2f/M + hop). "
      "Efficiency = a rank's work / step (speed-up = K × efficiency over one rank running all K "
      "blocks), 25 Gb/s.\n")
print("| K | DFA, M = 4, batch 128 | BP, M = 4, batch 128 | DFA, M = 4K, batch 128·K | BP, M = 4K, batch 128·K |")
print("|---|---|---|---|---|")
for k in [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]:
    bw = 25e9 / 8
    cells = [pipe(k, 4, 128, bw, True), pipe(k, 4, 128, bw, False),
             pipe(k, 4 * k, 128 * k, bw, True), pipe(k, 4 * k, 128 * k, bw, False)]
    print(f"| {k} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
print("\nWith M fixed the bubble (K − 1)/(M + K − 1) stops both pipelines at K ≈ M, DFA's a little "
      "later since only its forward half has a bubble; with M = 4K (GPipe's rule) and a batch "
      "that grows with K both keep ≈ 0.8, and DFA's step is shorter than BP's by its missing "
      "backward flow. Data-parallel BP scales with the batch, the pipeline with depth; neither "
      "stops before the other's limit on this model.")
EOF
