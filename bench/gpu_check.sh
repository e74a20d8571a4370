#!/usr/bin/env bash
# One script for a lent GPU machine (run through the device tool, or by hand on a GPU machine).
#   1. kernels: Cut Cross-Entropy parity tests on CUDA (fp32/fp16/bf16), then bench/cross_entropy.py at the
#      issue's shapes (naive, torch.compile(naive), reference, triton; bf16);
#   2. runner: hardware=h100 end to end, eager vs torch.compile, measured peak memory vs the dry-run estimate.
# Each part is guarded (a failure is reported and the script goes on); the whole run stays inside BUDGET_S
# seconds (default 230): a runner step that would not fit is skipped and says so. The kernel table comes
# last. Usage: [PARTS="kernels runner"] [BUDGET_S=230] [STEPS=200] bash bench/gpu_check.sh [runner overrides]
set -uo pipefail
cd "$(dirname "$0")/.."
PARTS=${PARTS:-kernels runner}
BUDGET=${BUDGET_S:-230}
left() { echo $((BUDGET - SECONDS)); }
LOGS=${OUT:-/tmp}/gpu_check
mkdir -p "$LOGS"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"

# ---------------------------------------------------------------------------------------------- 1. kernels
if [[ " $PARTS " == *" kernels "* ]]; then
  echo "== kernels: parity tests on CUDA"
  xdist=(); python3 -c "import xdist" 2>/dev/null && xdist=(-n 4)
  timeout 80 python3 -m pytest -q -p no:cacheprovider "${xdist[@]}" tests/kernels -k cuda 2>&1 | tee "$LOGS/kernel_tests.log" | tail -30
  echo "kernel tests: exit ${PIPESTATUS[0]} (124 = timed out)" >>"$LOGS/kernel_tests.log"
  echo "== kernels: benchmark (bf16)"
  timeout 120 python3 bench/cross_entropy.py --budget 60 --out "$LOGS/ce_table.txt" 2>&1 | tee "$LOGS/ce_bench.log" | grep -v "^ *$" | tail -40
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "benchmark: exit $rc (124 = timed out; the table has the cases that finished)" | tee -a "$LOGS/ce_bench.log"
fi

# ----------------------------------------------------------------------------------------------- 2. runner
if [[ " $PARTS " == *" runner "* ]]; then
  if [ -d .whl ] && ! python3 -c "import hydra" 2>/dev/null; then  # device machines lack a few packages
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:$PYTHONPATH
  fi
  export METHODBENCH_CACHE=${METHODBENCH_CACHE:-/tmp/mbcache}
  R=${RUNS:-/tmp/gpu_check_runs}
  rm -rf "$R"
  python3 -c "import lightning, transformers; print('lightning', lightning.__version__, 'transformers', transformers.__version__)"
  step() {  # step <min seconds left> <runner args...>: run it if it fits in what is left of the budget
    local need=$1; shift
    if [ "$(left)" -lt "$need" ]; then echo "skipped (time budget): runner $*"; return; fi
    timeout "$(left)" python3 -m runner "$@" || echo "runner step failed or timed out: $*"
  }
  common=(model=llama-60m hardware=h100 dataset.batch_size=64 trainer.max_steps=${STEPS:-200} trainer.val_every_n_steps=1000
          trainer.checkpoint_every_n_steps=1000 trainer.log_every_n_steps=25 logger=none "paths.runs_dir=$R" "$@")
  step 20 "${common[@]}" run_name=dryrun dry_run=true
  step 40 "${common[@]}" run_name=eager hardware.compile=false
  step 60 "${common[@]}" run_name=compiled hardware.compile=true
  # a second size, to check the memory estimate away from the first
  big=(model=llama-350m hardware=h100 dataset.batch_size=32 trainer.max_steps=40 trainer.val_every_n_steps=1000
       trainer.val_batches=2 trainer.checkpoint_every_n_steps=1000 trainer.log_every_n_steps=20 logger=none "paths.runs_dir=$R")
  step 20 "${big[@]}" run_name=dryrun350 dry_run=true | tail -1
  step 40 "${big[@]}" run_name=eager350 hardware.compile=false
  python3 - "$R" <<'PY' || echo "runner table failed"
import json, sys
from pathlib import Path
runs = Path(sys.argv[1])
def plan(name):
    p = next(runs.glob(f"{name}/*/dry_run.json"), None)
    return json.loads(p.read_text())["bytes_per_gpu"]["total (estimate)"] / 2**30 if p else float("nan")
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
fi

# --------------------------------------------------------------------------------------- kernel table, last
if [[ " $PARTS " == *" kernels "* ]]; then
  echo
  grep -E "passed|failed|error|exit" "$LOGS/kernel_tests.log" | tail -3
  cat "$LOGS/ce_table.txt" 2>/dev/null || echo "no kernel benchmark table (see $LOGS/ce_bench.log)"
fi
echo "gpu_check: ${SECONDS}s"
