#!/usr/bin/env bash
# Data-parallel throughput: 2 ranks × 1 thread (mpirun) against 1 process × 2 threads and
# 1 process × 1 thread, on MNIST 784-1000-1000-10, bp + Adam 1e-3, batch 128: time per
# step from each run's epoch record, alternating rounds, median of the per-round ratios;
# bytes sent per step; test accuracy after EPOCHS epochs at 2 ranks and at 1 process.
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
done
if [ "$EPOCHS" -gt 0 ]; then
  mpirun -np 2 "$BIN" "${run[@]}" --epochs "$EPOCHS" --threads 1 --out "$TMP/acc-p2"
  mpirun -np 2 "$BIN" "${run[@]}" --epochs "$EPOCHS" --threads 1 --compression sign --out "$TMP/acc-sign"
  "$BIN" "${run[@]}" --epochs "$EPOCHS" --threads 2 --out "$TMP/acc-p1"
fi
python3 - "$TMP" "$ROUNDS" "$STEPS" "$EPOCHS" > reports/distributed.md <<'EOF'
import json, os, statistics, sys
tmp, rounds, steps, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def epochs_of(d):
    with open(os.path.join(tmp, d, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r.get("type") == "epoch"]
def per_step(d):
    (e,) = epochs_of(d)
    return e["epoch_seconds"] / e["step"], e
t = {k: [per_step(f"{k}-{r}")[0] for r in range(1, rounds + 1)] for k in ("p1t2", "p2t1", "p1t1", "half")}
ratio = [b / a for a, b in zip(t["p2t1"], t["p1t2"])]  # throughput of 2 ranks over 1 process × 2 threads
ratio1 = [b / a for a, b in zip(t["p2t1"], t["p1t1"])]
_, e = per_step("p2t1-1")
ms = lambda v: f"{1e3 * statistics.median(v):.2f}"
print("# Data-parallel training on MPI\n")
print(f"`bench/distributed.sh {steps} {rounds} {epochs}` on this machine ({os.cpu_count()} cores): MNIST "
      "784-1000-1000-10, bp + Adam 1e-3, batch 128 (64 rows per rank at 2 ranks), "
      f"{steps} steps per run, {rounds} alternating rounds; time per step from each run's epoch "
      "record (training only), ratios per round, medians.\n")
print("| layout | ms per step (median) | throughput vs 1 process × 2 threads |")
print("|---|---|---|")
print(f"| 1 process × 2 threads | {ms(t['p1t2'])} | 1 |")
print(f"| 2 ranks × 1 thread (mpirun) | {ms(t['p2t1'])} | {statistics.median(ratio):.3f} "
      f"(rounds {', '.join(f'{x:.3f}' for x in ratio)}) |")
print(f"| 1 process × 1 thread | {ms(t['p1t1'])} | {statistics.median([a / b for a, b in zip(t['p1t2'], t['p1t1'])]):.3f} |")
print(f"| 1 process × 1 thread, 64 rows (one rank's share, no messages) | {ms(t['half'])} | |")
print(f"\n2 ranks against 1 process × 1 thread: {statistics.median(ratio1):.2f}× the throughput.")
comm = statistics.median(t["p2t1"]) - statistics.median(t["half"])
print(f"\nWhere 2 ranks lose: a rank's own 64 rows at 1 thread take {ms(t['half'])} ms, already "
      f"{statistics.median(t['half']) / statistics.median(t['p1t2']):.2f}× the 2-thread step of 128 rows "
      "(smaller GEMMs, and the Adam update over all 1.8 M parameters repeated on each rank); "
      f"the all-reduce and its packing add {1e3 * comm:.2f} ms on the same two cores.")
print(f"\nBytes sent per step and rank (plain f32 all-reduce, counted as a ring sends them, "
      f"2(K−1)/K × the update's bytes): {e['bytes_sent'] / e['step']:,.0f}.")
# The scaling model: weak scaling at 64 rows per rank; a step is one rank's compute plus a
# ring all-reduce, 2(K−1)/K × bytes / bandwidth + 2(K−1) × latency (α = 5 µs a message).
tc, nbytes, alpha = statistics.median(t["half"]), e["bytes_sent"] / e["step"], 5e-6
print("\n## Scaling model (on paper)\n")
print(f"Weak scaling at 64 rows per rank, from the measured compute of one rank ({1e3 * tc:.2f} ms "
      f"per step) and the update's {nbytes / 1e6:.2f} MB: step(K) = compute + 2(K−1)/K × bytes / "
      "bandwidth + 2(K−1) × 5 µs. Efficiency = compute / step; speed-up = K × efficiency over one "
      "rank. The 1-bit column is what 32× fewer bytes (`--compression sign`) gives where encoding "
      "and decoding cost nothing next to the step.\n")
print("| K | 25 Gb/s: step ms | efficiency | speed-up | 100 Gb/s: step ms | efficiency | speed-up | 1-bit, 25 Gb/s: efficiency |")
print("|---|---|---|---|---|---|---|---|")
for k in [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]:
    row = [str(k)]
    for bw, b in [(25e9 / 8, nbytes), (100e9 / 8, nbytes)]:
        step = tc + 2 * (k - 1) / k * b / bw + 2 * (k - 1) * alpha
        row += [f"{1e3 * step:.2f}", f"{tc / step:.2f}", f"{k * tc / step:.0f}"]
    step = tc + 2 * (k - 1) / k * nbytes / 32 / (25e9 / 8) + 2 * (k - 1) * alpha
    row.append(f"{tc / step:.2f}")
    print("| " + " | ".join(row) + " |")
print("\nThe bandwidth term saturates at 2 × bytes / bandwidth (4.6 ms at 25 Gb/s, 1.1 ms at 100 "
      "Gb/s), so plain data-parallel BP holds a constant efficiency until the latency term "
      "2(K−1)α grows to the compute (K in the hundreds); the 1-bit form keeps near-full "
      "efficiency until latency dominates.")
if epochs > 0:
    a2, a1, s2 = epochs_of("acc-p2"), epochs_of("acc-p1"), epochs_of("acc-sign")
    per = lambda h: h[0]["bytes_sent"] / h[0]["step"]
    print(f"\n## {epochs} epochs at 2 ranks\n")
    print("| what the ranks send | bytes per step and rank | test accuracy | ms per step (epoch 1) |")
    print("|---|---|---|---|")
    print(f"| f32 update, all-reduce | {per(a2):,.0f} | {100 * a2[-1]['test_accuracy']:.2f} % | "
          f"{1e3 * a2[0]['epoch_seconds'] / a2[0]['step']:.2f} |")
    print(f"| sign + error feedback (`--compression sign`), all-gather | {per(s2):,.0f} | "
          f"{100 * s2[-1]['test_accuracy']:.2f} % | {1e3 * s2[0]['epoch_seconds'] / s2[0]['step']:.2f} |")
    print(f"\n1 process × 2 threads, same seed and global batches: {100 * a1[-1]['test_accuracy']:.2f} %. "
          "1-bit Adam (frozen variance, compressed momentum) is not built yet.")
EOF
cat reports/distributed.md
