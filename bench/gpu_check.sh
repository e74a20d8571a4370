#!/usr/bin/env bash
# The runner on one real GPU (run through the device tool, or by hand on a GPU machine):
# hardware=h100 end to end, eager vs torch.compile, measured peak memory vs the dry-run estimate.
# Prints a table at the end. Usage: bash bench/gpu_check.sh [extra overrides]
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import hydra" 2>/dev/null; then  # device machines lack a few packages
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" METHODBENCH_CACHE=${METHODBENCH_CACHE:-/tmp/mbcache} PYTHONUNBUFFERED=1
R=${RUNS:-/tmp/gpu_check_runs}
rm -rf "$R"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, lightning, transformers; print('torch', torch.__version__, 'lightning', lightning.__version__, 'transformers', transformers.__version__)"
common=(model=llama-60m hardware=h100 dataset.batch_size=64 trainer.max_steps=${STEPS:-200} trainer.val_every_n_steps=1000
        trainer.checkpoint_every_n_steps=1000 trainer.log_every_n_steps=25 logger=none "paths.runs_dir=$R" "$@")
python3 -m runner "${common[@]}" run_name=dryrun dry_run=true
python3 -m runner "${common[@]}" run_name=eager hardware.compile=false
python3 -m runner "${common[@]}" run_name=compiled hardware.compile=true
# a second size, to check the memory estimate away from the first
big=(model=llama-350m hardware=h100 dataset.batch_size=32 trainer.max_steps=40 trainer.val_every_n_steps=1000
     trainer.val_batches=2 trainer.checkpoint_every_n_steps=1000 trainer.log_every_n_steps=20 logger=none "paths.runs_dir=$R")
python3 -m runner "${big[@]}" run_name=dryrun350 dry_run=true | tail -1
python3 -m runner "${big[@]}" run_name=eager350 hardware.compile=false
python3 - "$R" <<'PY'
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
def plan(name):
    d = json.loads(next(runs.glob(f"{name}/*/dry_run.json")).read_text())["bytes_per_gpu"]
    return d["total (estimate)"] / 2**30
rows = {p.parent.parent.name: json.loads(p.read_text()) for p in runs.glob("*/*/summary.json")}
base = rows.get("eager", {}).get("tokens_per_s") or 1
print(f"\n{'run':10} {'tokens/s':>10} {'vs eager':>9} {'val/ppl':>8} {'unigram':>8} {'peak GiB':>9} {'dry-run GiB':>12} {'est/peak':>9}")
for name, dry in (("eager", "dryrun"), ("compiled", "dryrun"), ("eager350", "dryrun350")):
    s = rows.get(name)
    if s:
        est, peak = plan(dry), s.get("gpu/peak_mem_gib", float("nan"))
        print(f"{name:10} {s['tokens_per_s']:10.0f} {s['tokens_per_s'] / base:9.2f} {s['val/ppl']:8.1f} "
              f"{s['val/unigram_ppl']:8.1f} {peak:9.2f} {est:12.2f} {est / peak:9.2f}")
PY
