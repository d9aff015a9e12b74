#!/usr/bin/env bash
# The checks to run when a machine with an accelerator is lent (issue 19); they also run on a CPU.
#
#   bash benchmarks/gpu_check.sh [OUT]            # all checks, tables under OUT (default runs/gpu_check)
#   bash benchmarks/gpu_check.sh --dry-run [OUT]  # what would run; each command's arguments are parsed
#
# Records, each as Markdown/CSV tables under OUT, and the device in OUT/device.txt:
#   1. the backbone forward (EfficientNet-Lite1, 240 px) in images/s;
#   2. a fine-tuning step (--finetune top and all, hand-written and jax.grad backward);
#   3. predict photos/s end to end, with the fraction of time the device is busy;
#   4. predict as 1 process and as 2 processes of one job (the same CSV bytes);
#   5. Model 1's training step.
# Sized to take under 5 minutes on a GPU; each step is bounded by `timeout`. PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT=${1:-runs/gpu_check}
mkdir -p "$OUT"

steps=(
  "120 benchmarks.backbone_forward --variant efficientnet_lite1 --batch 64 --repeats 3 --out $OUT/backbone"
  "120 benchmarks.finetune_step --finetune top all --repeats 3 --out $OUT/finetune"
  "120 benchmarks.predict_stream --sizes 256 2048 --out $OUT/predict"
  "120 benchmarks.predict_processes --photos 2048 --processes 1 2 --out $OUT/processes"
  "60 benchmarks.model1_train --sizes 108 224 --steps 5 --out $OUT/model1"
)

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  "$PY" -c "import jax; print('jax', jax.__version__, jax.default_backend(), jax.devices())"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  nproc
} | tee "$OUT/device.txt"

if [[ $DRY == 1 ]]; then
  modules=()
  for step in "${steps[@]}"; do
    read -r limit module args <<<"$step"
    echo "would run (≤ ${limit} s): $PY -m $module $args"
    modules+=("$module")
  done
  # every module imports and its arguments parse (one interpreter for all of them)
  "$PY" - "${modules[@]}" <<'EOF'
import contextlib, io, runpy, sys
for module in sys.argv[1:]:
    sys.argv = [module, "--help"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
EOF
  exit 0
fi

status=0
for step in "${steps[@]}"; do
  read -r limit module args <<<"$step"
  echo "== $module $args"
  start=$(date +%s)
  # shellcheck disable=SC2086  # args is a list of words
  if ! timeout "$limit" "$PY" -m "$module" $args >"$OUT/$(echo "$module" | cut -d. -f2).log" 2>&1; then
    echo "   FAILED or over ${limit} s: see $OUT/$(echo "$module" | cut -d. -f2).log"
    status=1
  fi
  echo "   $(( $(date +%s) - start )) s"
done
exit $status
