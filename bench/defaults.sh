#!/usr/bin/env bash
# Every rule with its defaults only: `futureprop train --rule X --epochs 3 --dataset D`,
# nothing else (the default model mlp:784-1000-1000-10, the default optimizer and its
# learning rate, seed 0), on MNIST and Fashion-MNIST; the single-layer classics on
# linear:784-10 (the one flag they need). Writes reports/defaults.md.
#
#   bench/defaults.sh          (DATASETS="mnist fashion-mnist" EPOCHS=3 THREADS=2
#                               DATA=../shared/datasets RULES="all"; REPORT_ONLY=1
#                               rewrites the report from the runs so far)
# Finished runs are kept in runs/defaults/ and skipped when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASETS=${DATASETS:-mnist fashion-mnist}
EPOCHS=${EPOCHS:-3}
THREADS=${THREADS:-2}
DATA=${DATA:-../shared/datasets}
# BIN: a copy of the binary, so that rebuilding during the runs does not change it.
if [ -z "${BIN:-}" ]; then cargo build --release -q; BIN=target/release/futureprop; fi
RULES=${RULES:-$($BIN rules | awk '{print $1}' | tr '\n' ' ')}
for d in $DATASETS; do
  [ -n "${REPORT_ONLY:-}" ] && break
  for r in $RULES; do
    out=runs/defaults/$d-$r
    [ -f "$out/summary.json" ] && continue
    extra=()
    case $r in perceptron|lms|hebbian) extra=(--model linear:784-10) ;; uoro) extra=(--model rnn:28x28-128-10) ;; esac
    echo "$d $r" >&2
    mkdir -p runs/defaults
    $BIN train --rule "$r" --epochs "$EPOCHS" --dataset "$d" --data-dir "$DATA" \
      --threads "$THREADS" --quiet --out "$out" "${extra[@]}" > /dev/null 2> "$out.err" || true
  done
done
python3 - "$DATASETS" "$RULES" "$EPOCHS" <<'PY'
import json, os, sys
datasets, rules, epochs = sys.argv[1].split(), sys.argv[2].split(), sys.argv[3]
rows = []
for r in rules:
    cells = []
    resolved = ""
    for d in datasets:
        p = f"runs/defaults/{d}-{r}/summary.json"
        if os.path.exists(p):
            s = json.load(open(p))
            cells.append(f"{100 * s['test_accuracy']:.2f}")
            c = s["config"]
            own = ", ".join(f"{k}={v}" for k, v in c["rule"].items() if k != "name")
            resolved = f"{c['model']}, {c['normalize']} inputs, {c['activation']}" + (f"; {own}" if own else "")
        elif os.path.exists(f"runs/defaults/{d}-{r}.err") and os.path.exists(f"runs/defaults/{d}-{r}/metrics.jsonl"):
            err = open(f"runs/defaults/{d}-{r}.err").read().strip().splitlines()
            cells.append("failed: " + (err[-1][:80] if err else "?"))
        else:
            cells.append("not run yet")
    rows.append(f"| {r} | " + " | ".join(cells) + f" | {resolved} |")
cfg = None
for d in datasets:
    p = f"runs/defaults/{d}-bp/summary.json"
    if os.path.exists(p):
        cfg = json.load(open(p))["config"]
        break
with open("reports/defaults.md", "w") as f:
    f.write("# Every rule with its defaults only\n\n")
    f.write(f"`futureprop train --rule X --epochs {epochs} --dataset D` and nothing else "
            "(`bench/defaults.sh`): the default model `mlp:784-1000-1000-10`, ")
    if cfg:
        o = cfg["optimizer"]
        name = o["name"] if isinstance(o, dict) else o
        f.write(f"optimizer `{name}` at lr {cfg['lr']}, batch {cfg['batch_size']}, seed {cfg['seed']}; ")
    f.write("the single-layer classics on `linear:784-10`, UORO on `rnn:28x28-128-10` (the one "
            "flag they need). Final test accuracy (%); the last column is what the run resolved "
            "(the rule's recommended inputs and activation, its settings).\n\n")
    f.write("| rule | " + " | ".join(datasets) + " | resolved |\n|---|" + "---|" * len(datasets) + "---|\n")
    f.write("\n".join(rows) + "\n")
    f.write("""
Goal: at least 95 % on MNIST in 3 epochs for every rule but the single-layer classics
(`perceptron`, `lms`, `hebbian`; `hebbian` is unsupervised, its accuracy is no target).
Below it at the time of writing: `drtp`
(Frenkel et al. 2021 report DRTP several points below BP and DFA on MNIST) and `uoro`
(Tallec & Ollivier 2017: UORO's rank-one estimate learns far slower than truncated
BPTT). `chl` reaches it with its feedback weakened to γ = 0.1 (Xie & Seung 2003); at
γ = 1 (Movellan's CHL) it scored 91.7 % on MNIST (one epoch: 91.9 % at 1, 94.4 % at 0.3,
95.3 % at 0.1, 94.3 % at 0.03). `epc`
at Adam 1e-3 starts well and then destabilises on Fashion-MNIST (train loss 0.51, 0.90,
5.6 over the 3 epochs): its errors absorb most of the output loss and the local updates
at those far-moved states are large (`reports/epc_depth.md`: at lr 1e-4 it trains the
deep MLP, at 1e-3 it does not). The paper's own MNIST/Fashion-MNIST sweep
(`sweep.py` of cgoemaere/error_based_PC) trains at Adam lr 1e-4 with error steps
0.1–0.3 and 64–256 iterations; its CIFAR results use error steps of 0.001 for 5
iterations, where the errors stay small and the update is close to BP's. The rate is the
optimizer's default, not the rule's, so ePC keeps the shared Adam 1e-3 and this note.
""")
print(open("reports/defaults.md").read())
PY
