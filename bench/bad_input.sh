#!/bin/bash
# Issue 15's bad-input cases on the release binary: per case the exit code, panics on
# stderr, what was left in the output folder and the first line of stderr, as a
# markdown table. `cargo build --release && bench/bad_input.sh` (needs MNIST in
# FUTUREPROP_DATA or ../shared/datasets). The same cases are tests in tests/bad_input.rs.
R="$(cd "$(dirname "$0")/.." && pwd)"
B="$(cd "$(dirname "$0")/.." && pwd)/target/release/futureprop"
export FUTUREPROP_DATA="${FUTUREPROP_DATA:-$(cd "$(dirname "$0")/../.." && pwd)/shared/datasets}"
Q="--train-limit 500 --test-limit 100 --epochs 1 --model mlp:784-32-10 --quiet"
W=$(mktemp -d); rm -rf $W; mkdir -p $W; cd $W
c() { local name="$1"; shift; rm -rf $W/a $W/ns $W/dv; "$@" 2>$W/err >$W/out; rc=$?; left=none; for d in $W/a $W/ns $W/dv; do [ -e $d ] && left="$(ls $d | tr '\n' ' ')"; done; pan=$(grep -c panicked $W/err); printf "| %s | %s | %s | %s | %s |\n" "$name" "$rc" "$pan" "$left" "$(head -1 $W/err | cut -c1-170)"; }
c "--lr nan" $B train $Q --lr nan --out $W/a
c "--lr inf" $B train $Q --lr inf --out $W/a
c "--lr 1e309" $B train $Q --lr 1e309 --out $W/a
printf 'lr = nan\n' > nan.toml; c "toml lr=nan" $B train $Q --config nan.toml --out $W/a
printf 'lr = inf\n' > inf.toml; c "toml lr=inf" $B train $Q --config inf.toml --out $W/a
c "--weight-decay nan" $B train $Q --weight-decay nan --out $W/a
c "--momentum nan" $B train $Q --momentum nan --out $W/a
c "--clip-norm nan" $B train $Q --clip-norm nan --out $W/a
c "--max-seconds nan" $B train $Q --max-seconds nan --out $W/a
c "--lr -1" $B train $Q --lr -1 --out $W/a
c "--beta2 1" $B train $Q --beta2 1 --optimizer adam --out $W/a
c "mlp:784-99999999999-10" $B train $Q --model mlp:784-99999999999-10 --out $W/a
c "mlp:784-100000000-10" $B train $Q --model mlp:784-100000000-10 --out $W/a
c "mlp:784-5000000-10 adam" $B train $Q --model mlp:784-5000000-10 --optimizer adam --out $W/a
c "--epochs 0" $B train $Q --epochs 0 --out $W/a
c "--max-steps 0" $B train $Q --max-steps 0 --out $W/a
c "--train-limit 0" $B train $Q --train-limit 0 --out $W/a
c "--test-limit 0" $B train $Q --test-limit 0 --out $W/a
mkdir -p $W/d/mnist; cp /work/shared/datasets/mnist/train-* $W/d/mnist/; python3 -c "
import gzip,struct
open('$W/d/mnist/t10k-images-idx3-ubyte','wb').write(struct.pack('>iiii',0x803,0,28,28))
open('$W/d/mnist/t10k-labels-idx1-ubyte','wb').write(struct.pack('>ii',0x801,0))"
c "empty test file" $B train $Q --data-dir $W/d --no-download --out $W/a
$B train $Q --out $W/r --epochs 2 --max-steps 6 >/dev/null 2>&1
c "resume --max-steps below step" $B train --resume $W/r --max-steps 2 --quiet
c "resume past last epoch" $B train --resume $W/r --quiet
python3 - <<PY
import struct
p='$W/r/checkpoint.safetensors'; b=bytearray(open(p,'rb').read())
n=struct.unpack('<Q',b[:8])[0]; off=8+n+100
for i in range(64): b[off+i]^=0xFF
open('$W/flipped.safetensors','wb').write(b)
PY
c "resume flipped checkpoint" $B train --resume $W/flipped.safetensors --epochs 3 --quiet
c "diagnose flipped checkpoint" $B diagnose --checkpoint $W/flipped.safetensors
touch $W/r/.checkpoint.safetensors.tmp-999999
$B train --resume $W/r --epochs 3 --max-steps 100 --quiet >/dev/null 2>&1; printf "%-40s %s\n" "stale tmp after resume" "$(ls -a $W/r | grep tmp || echo none)"
c "diverge (lr 1e6)" $B train $Q --lr 1e6 --out $W/dv
printf 'input = 784\n[[layers]]\ntype = "linear"\nout = 32\nname = "a"\n[[layers]]\ntype = "relu"\n[[layers]]\ntype = "linear"\nout = 10\nname = "a"\n' > $W/dup.toml
c "model TOML duplicate names" $B train $Q --model $W/dup.toml --out $W/a
sed -e 's/name = "quick"/name = "tiny"/' -e 's/mlp:784-1000-1000-10/mlp:784-64-64-10/' \
  -e 's/^\[defaults\]/[defaults]\ntrain_limit = 2000\ntest_limit = 500/' "$R/bench/suites/quick.toml" > $W/tiny.toml
sed 's/^lr = 0.01/lr = nan/' $W/tiny.toml > $W/nan_suite.toml
sed 's/^lr = 0.01/lr = -0.01/' $W/tiny.toml > $W/neg_suite.toml
c "suite file lr = nan" $B bench --suite $W/nan_suite.toml --out $W/ns --quiet
c "suite file lr = -0.01" $B bench --suite $W/neg_suite.toml --out $W/ns --quiet
c "rules > /dev/full" sh -c "$B rules > /dev/full"
c "rules, reader closed first" bash -c "(sleep 0.3; exec $B rules) | true; exit \${PIPESTATUS[0]}"
c "reproduce --list, reader closed first" bash -c "(sleep 0.3; exec $B reproduce --list) | true; exit \${PIPESTATUS[0]}"
c "train ... | true" bash -c "$B train $Q --out $W/p | true; exit \${PIPESTATUS[0]}"
