#!/usr/bin/env bash
# Peer anchors for `futureprop reproduce`: rules no paper gives an MNIST number for at a
# setting we can match are anchored to a peer's own implementation at identical settings.
# This script measures those numbers; reproduce/registry.toml carries them (rows with
# anchor = "peer"), reports/peer_anchors.jsonl keeps every run and reports/peer_anchors.md
# is rendered from it.
#
#   bench/peers/anchors.sh [biotorch] [drtp] [pcx] [dni] [chl]      (default: all peers)
#       EPOCHS=20 SEEDS="0 1 2" THREADS=2 DATA=../shared/datasets BIOTORCH_RULES="usf brsf frsf dfa bp dsn"
#       PEER_VENV=~/.cache/futureprop/peers DRTP_SRC=~/.cache/futureprop/drtp
#       PCX_VENV=~/.cache/futureprop/pcx DNI_SRC=~/.cache/futureprop/dni-pytorch
#
# biotorch: BioTorch 0.0.16 (uSF, brSF, frSF, DFA; Sanfiz & Akrout 2021) and PyTorch's
#   autograd backprop, torch 2.15.0: MNIST, 784-500-500-10 tanh, Glorot uniform, Adam lr
#   1e-3, batch 128, pixels standardised with the training set's mean and sd. The DFA run
#   anchors `bfa` and the backprop run anchors `kp` (see their rows).
# drtp: the authors' code (ChFrenkel/DirectRandomTargetProjection at b84e3fe; Frenkel,
#   Lefebvre & Bol 2021) through bench/peers/drtp_peer.py (their loop; a tensor data loader): MNIST, 784-500-500-10 tanh, sigmoid outputs with
#   binary cross-entropy, PyTorch's default Linear init, Adam lr 5e-4, batch 100, pixels
#   in [0, 1]; its seeds are its own (torch.manual_seed(42), then one trial after another).
# pcx: PCX 0.6.3 (Pinchetti et al. 2025; JAX, CPU) through bench/peers/pcx_peer.py, the
#   loop of PCX's own examples: MNIST, 784-128-128-128-10 GELU, squared-error energies,
#   value nodes initialised by a forward pass, T = 5 SGD steps of 0.05 on the hidden nodes
#   (output clamped to the one-hot target), then one Adam 1e-3 step on the weights, batch
#   128, PyTorch-style uniform init, pixels standardised. Anchors `pc` and `epc`.
# dni: the dni-pytorch library (koz4k/dni-pytorch at b14a07c) through
#   bench/peers/dni_peer.py: MNIST, 784-256-256-10 ReLU, PyTorch's default Linear init, a
#   linear zero-initialised synthesizer after each hidden layer (label-conditioned for
#   cdni), Adam lr 1e-3 on everything, batch 128, pixels standardised. Anchors `dni`, `cdni`.
# chl: augustwester/chl's CHLNet (numpy) through bench/peers/chl_peer.py at its main.py's
#   setting: MNIST 784-128-10, γ 0.1, lr 0.01, batch 8, 5 epochs, 50 Gauss-Seidel sweeps per
#   phase, N(0, 0.1²) weights and biases, pixels in [0, 1]; its logistic units replaced by
#   the hard sigmoid (futureprop's chl state nonlinearity). Anchors `chl`.
# dsn (in biotorch): PyTorch autograd of CE + 0.3 Σ head CE, heads on each hidden layer.
# Test error after the last epoch.
set -euo pipefail
cd "$(dirname "$0")/../.."
EPOCHS=${EPOCHS:-20}
SEEDS=${SEEDS:-0 1 2}
THREADS=${THREADS:-2}
DATA=$(realpath "${DATA:-../shared/datasets}")
VENV=${PEER_VENV:-$HOME/.cache/futureprop/peers}
DRTP_SRC=${DRTP_SRC:-$HOME/.cache/futureprop/drtp}
DRTP_COMMIT=b84e3fe
PCX_VENV=${PCX_VENV:-$HOME/.cache/futureprop/pcx}
DNI_SRC=${DNI_SRC:-$HOME/.cache/futureprop/dni-pytorch}
DNI_COMMIT=b14a07cab049a72c104b57dcdb56730ab8dbafb1
CHL_SRC=${CHL_SRC:-$HOME/.cache/futureprop/chl}
CHL_VENV=${CHL_VENV:-$HOME/.cache/futureprop/chl-venv}
CHL_COMMIT=a20eb0359289258b72204d40e1ebb7097c36db64
PEERS=${*:-biotorch drtp pcx dni chl}
JSONL=reports/peer_anchors.jsonl
# The PyTorch venv (BioTorch and the DRTP authors' code), made on first use.
torch_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch==2.15.0 torchvision numpy tqdm "biotorch==0.0.16"
  fi
}
touch "$JSONL"
# Replaces a rule's earlier runs in the JSONL with the lines on stdin.
keep() {
  local rule=$1 tmp
  tmp=$(mktemp)
  grep -v "\"rule\": \"$rule\"" "$JSONL" > "$tmp" || true
  cat >> "$tmp"
  mv "$tmp" "$JSONL"
}
for peer in $PEERS; do
  case $peer in
  biotorch)
    torch_venv
    for rule in ${BIOTORCH_RULES:-usf brsf frsf dfa bp dsn}; do
      for seed in $SEEDS; do
        OMP_NUM_THREADS=$THREADS "$VENV/bin/python" bench/peers/torch_peers.py --rule $rule --data "$DATA" \
          --model 784-500-500-10 --activation tanh --epochs "$EPOCHS" --threads "$THREADS" --seed "$seed" |
          tail -n 1 | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'rule': r['rule'], 'peer': ('BioTorch 0.0.16, torch ' if r['peer'] == 'biotorch' else 'PyTorch autograd, torch ') + r['torch'], 'seed': $seed, 'epochs': $EPOCHS, 'test_error': round(100 * (1 - r['test_accuracy']), 2)}))"
      done | keep $rule
    done
    ;;
  drtp)
    torch_venv
    if [ ! -f "$DRTP_SRC/main.py" ]; then
      git clone -q https://github.com/ChFrenkel/DirectRandomTargetProjection "$DRTP_SRC"
      git -C "$DRTP_SRC" checkout -q "$DRTP_COMMIT"
    fi
    n=$(wc -w <<< "$SEEDS")
    DRTP_SRC=$DRTP_SRC OMP_NUM_THREADS=$THREADS "$VENV/bin/python" bench/peers/drtp_peer.py --data "$DATA" --cpu \
      --dataset MNIST --train-mode DRTP --optimizer Adam --lr 5e-4 --loss BCE --output-act sigmoid \
      --hidden-act tanh --topology FC_500_FC_500_FC_10 --batch-size 100 --epochs "$EPOCHS" --trials "$n" 2>/dev/null |
      python3 -c "
import json, re, sys
acc = [float(m.group(1)) for m in re.finditer(r'Testing set\] Loss: \S+, Accuracy:\s+([0-9.]+)%', sys.stdin.read())]
per = len(acc) // $n
for t in range($n):
    print(json.dumps({'rule': 'drtp', 'peer': 'DRTP authors code $DRTP_COMMIT', 'seed': t, 'epochs': $EPOCHS, 'test_error': round(100 - acc[(t + 1) * per - 1], 2)}))
" | keep drtp
    ;;
  pcx)
    if [ ! -x "$PCX_VENV/bin/python" ]; then
      python3 -m venv "$PCX_VENV"
      "$PCX_VENV/bin/pip" install -q pcx==0.6.3
    fi
    for seed in $SEEDS; do
      "$PCX_VENV/bin/python" bench/peers/pcx_peer.py --data "$DATA" --T 5 --lr-h 0.05 --lr-w 1e-3 \
        --batch-size 128 --activation gelu --epochs "$EPOCHS" --seed "$seed" --threads "$THREADS" 2>/dev/null |
        tail -n 1 | python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'rule': 'pc', 'peer': r['peer'], 'seed': $seed, 'epochs': $EPOCHS, 'test_error': round(100 * (1 - r['test_accuracy']), 2)}))"
    done | keep pc
    ;;
  dni)
    torch_venv
    if [ ! -f "$DNI_SRC/dni.py" ]; then
      git clone -q https://github.com/koz4k/dni-pytorch "$DNI_SRC"
      git -C "$DNI_SRC" checkout -q "$DNI_COMMIT"
    fi
    for rule in dni cdni; do
      flag=$([ $rule = cdni ] && echo --cdni || true)
      for seed in $SEEDS; do
        OMP_NUM_THREADS=$THREADS "$VENV/bin/python" bench/peers/dni_peer.py --src "$DNI_SRC" --data "$DATA" $flag \
          --model 784-256-256-10 --activation relu --epochs "$EPOCHS" --batch-size 128 --lr 1e-3 \
          --threads "$THREADS" --seed "$seed" | tail -n 1 |
          python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'rule': r['rule'], 'peer': 'dni-pytorch ${DNI_COMMIT:0:7}, torch ' + r['torch'], 'seed': $seed, 'epochs': $EPOCHS, 'test_error': round(100 * (1 - r['test_accuracy']), 2)}))"
      done | keep $rule
    done
    ;;
  chl)
    if [ ! -x "$CHL_VENV/bin/python" ]; then
      python3 -m venv "$CHL_VENV"
      "$CHL_VENV/bin/pip" install -q numpy==1.26.4
    fi
    if [ ! -f "$CHL_SRC/chlnet.py" ]; then
      git clone -q https://github.com/augustwester/chl "$CHL_SRC"
      git -C "$CHL_SRC" checkout -q "$CHL_COMMIT"
    fi
    # The repository's own setting (its main.py): 5 epochs, whatever EPOCHS says.
    for seed in $SEEDS; do
      (cd bench/peers && OMP_NUM_THREADS=1 "$CHL_VENV/bin/python" chl_peer.py --src "$CHL_SRC" --data "$DATA" \
        --epochs 5 --seed "$seed") | tail -n 1 |
        python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'rule': 'chl', 'peer': 'augustwester/chl ${CHL_COMMIT:0:7} (hard sigmoid), numpy ' + r['numpy'], 'seed': $seed, 'epochs': 5, 'test_error': round(100 * (1 - r['test_accuracy']), 2)}))"
    done | keep chl
    ;;
  *) echo "unknown peer $peer (biotorch, drtp, pcx, dni, chl)" >&2; exit 2 ;;
  esac
done
python3 - "$JSONL" > reports/peer_anchors.md <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("# Peer anchors\n")
print("`bench/peers/anchors.sh` (settings in its header): each peer's own implementation on MNIST; test error % "
      "after the last epoch. The means and sample sds are the `paper_test_error` and `paper_spread` of the peer rows "
      "in reproduce/registry.toml. Every run is in reports/peer_anchors.jsonl.\n")
print("| rule | peer | epochs | seeds | test error % per seed | mean ± sd |\n|---|---|---|---|---|---|")
for rule in dict.fromkeys(r["rule"] for r in runs):
    rs = [r for r in runs if r["rule"] == rule]
    e = [r["test_error"] for r in rs]
    sd = statistics.stdev(e) if len(e) > 1 else 0.0
    print(f"| {rule} | {rs[0]['peer']} | {rs[0]['epochs']} | {len(e)} | {', '.join(f'{v:.2f}' for v in e)} | {statistics.mean(e):.2f} ± {sd:.2f} |")
PY
cat reports/peer_anchors.md
