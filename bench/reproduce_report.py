"""Writes reports/reproduce.md from a `futureprop reproduce --check` run directory: the
run's results.md, then the registry rows the run has not finished and the rules no row
checks yet, so a run that spans sessions (`--resume`) is reported as far as it got.

  python3 bench/reproduce_report.py [RUN_DIR=reports/reproduce-run]
"""
import json
import os
import subprocess
import sys
import tomllib

root = os.path.join(os.path.dirname(__file__), "..")
run = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "reports", "reproduce-run")
results = json.load(open(os.path.join(run, "results.json")))
registry = tomllib.load(open(os.path.join(root, "reproduce", "registry.toml"), "rb"))["result"]
done = {r["row"] for r in results["rows"]}
pending = [e for e in registry if e["name"] not in done]
listing = subprocess.run([os.path.join(root, "target", "release", "futureprop"), "reproduce", "--list"],
                         capture_output=True, text=True).stdout
missing = [l.split(":", 1)[1].strip() for l in listing.splitlines() if l.startswith("rules without a row yet")]

out = ["# Reproduction against published numbers\n",
       f"`futureprop reproduce --check` over {len(done)} of {len(registry)} registry rows "
       f"(`{os.path.relpath(run, root)}`; per-seed records in `<row>/seed-<s>.json`). Rerun: "
       "`target/release/futureprop reproduce --check --all --out reports/reproduce-run --threads 2`, "
       "continue an interrupted run with `--resume reports/reproduce-run`, then "
       "`python3 bench/reproduce_report.py`. Time is the training time of the seeds as they ran "
       "(other jobs shared the 2 cores), CPU time is the process's user + system time.\n",
       open(os.path.join(run, "results.md")).read().strip() + "\n"]
if pending:
    est = sum(e["minutes_per_seed"] * len(e["seeds"]) for e in pending)
    out.append(f"## Not run yet ({len(pending)} rows, estimated {est / 60:.1f} h on 2 cores)\n")
    out += [f"- {e['name']} ({', '.join(e['checks'])}): {len(e['seeds'])} seed(s) × ~{e['minutes_per_seed']:g} min"
            for e in pending]
    out.append("")
if missing:
    out.append(f"Rules without a row yet: {missing[0]}.\n")
open(os.path.join(root, "reports", "reproduce.md"), "w").write("\n".join(out))
print("\n".join(out))
