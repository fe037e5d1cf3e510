#!/usr/bin/env bash
# Convolution speed against PyTorch CPU: Conv2d(1, 32, 5) forward + backward on a
# 64×1×28×28 batch at 1 and 2 threads, one after the other in the same run; median of 50.
# Then one epoch of the LeNet (BP) against the same net in PyTorch (bench/peers/lenet_peer.py).
#
#   bench/conv_speed.sh PYTHON      (a Python with torch)
# Writes reports/conv_speed.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
DATA=${DATA:-${FUTUREPROP_DATA:-../shared/datasets}}
DATA_ABS=$(realpath "$DATA")
cargo build --release -q
cargo build --release --bench conv -q
BIN=$(ls -t target/release/deps/conv-* | grep -v '\.d$' | head -1)
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
{
  echo "# Convolution forward + backward: futureprop vs PyTorch"
  echo
  echo "Produced by \`bench/conv_speed.sh\` on $cpu: Conv2d(1, 32, 5), batch 64×1×28×28, forward plus input and parameter gradients, median of 50."
  echo
  echo "| threads | futureprop ms | PyTorch ms | ratio ours/PyTorch |"
  echo "|---|---|---|---|"
  for t in 1 2; do
    ours=$("$BIN" --threads $t --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["ms"])')
    theirs=$(OMP_NUM_THREADS=$t "$PY" bench/conv_pytorch.py --threads $t | python3 -c 'import json,sys; print(json.load(sys.stdin)["ms"])')
    python3 -c "print('| $t | %.2f | %.2f | %.2f |' % ($ours, $theirs, $ours / $theirs))"
  done
  echo
  echo "One epoch of the LeNet (biotorch-lenet; BP, Adam 1e-3, batch 128, MNIST), training loop only:"
  echo
  echo "| threads | futureprop s/epoch | PyTorch s/epoch | ratio ours/PyTorch |"
  echo "|---|---|---|---|"
  for t in 1 2; do
    target/release/futureprop train --quiet --data-dir "$DATA" --model biotorch-lenet --rule bp \
      --optimizer adam --lr 1e-3 --batch-size 128 --epochs 1 --threads $t --out runs/lenet-speed > /dev/null
    ours=$(python3 -c 'import json; print(json.load(open("runs/lenet-speed/summary.json"))["seconds_per_epoch"])')
    theirs=$(cd bench/peers && OMP_NUM_THREADS=$t "$PY" lenet_peer.py --data "$DATA_ABS" --threads $t | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds_per_epoch"])')
    python3 -c "print('| $t | %.2f | %.2f | %.2f |' % ($ours, $theirs, $ours / $theirs))"
  done
} | tee reports/conv_speed.md
