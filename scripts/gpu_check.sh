#!/usr/bin/env bash
# One prepared check of the GPU path, well under 8 minutes on one H200-class GPU:
#   1. the default run with trainer=gpu for rnn_scratch and lstm, gradients-through-time probe
#      on (it runs at epoch 0: cuDNN's RNN backward refuses eval mode, issue 23), eval.dynamic
#      and ngram_mix on (scored on the training device after trainer.test);
#   2. bf16: trainer.precision=bf16-mixed, both models;
#   3. a packed sweep: hydra/launcher=parallel trainer=gpu, 4 jobs on the one GPU;
#   4. DDP on one device: trainer=ddp trainer.accelerator=gpu trainer.devices=1.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default $OUT, else outputs/gpu_check
#   SMOKE=1 bash scripts/gpu_check.sh /tmp/x   # on a CPU: the same steps, tiny, to check the script
#
# Results: OUT_DIR/gpu_check.tsv (one line per step: rc, status, val/test ppl, tokens/s, wall),
# each run's summary.json and console log, machine.txt. Each step has its own time limit, so a
# slow or failing step costs its line, not the rest. Exit status: the number of failed steps.
set -uo pipefail
OUT_DIR=$(realpath -m "${1:-${OUT:-outputs/gpu_check}}")
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
export PROJECT_ROOT=$PWD PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python}
TSV=$OUT_DIR/gpu_check.tsv
printf 'step\trc\tstatus val_ppl test_ppl tokens_per_s wall_s\n' > "$TSV"
FAILED=0

if [[ -n "${SMOKE:-}" ]]; then  # a CPU check of this script: tiny corpus slice and model
  ACC=cpu; TINY=(data.max_tokens=20000 model.core.num_hiddens=32 torch_threads=1)
else
  ACC=gpu; TINY=(data.max_tokens=80000)
fi
SHORT=(trainer.max_epochs=2 callbacks.gradients.every_n_epochs=1 "${TINY[@]}")
{ date -Is; nvidia-smi -L 2>/dev/null; lscpu | grep -E "Model name|CPU family|^Model:|^CPU\(s\)"
  $PY -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__,
  'cuda', torch.version.cuda, 'lightning', pl.__version__)"; } > "$OUT_DIR/machine.txt" 2>&1
cat "$OUT_DIR/machine.txt"

summary() {  # status val_ppl test_ppl tokens/s wall_s of a run dir's summary.json
  $PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(s.get('status'),
  s.get('best_val_ppl'), s.get('test_ppl'), s.get('tokens_per_s'), s.get('wall_time_s'),
  'grad_reach=%s' % s.get('grad_reach'))" "$1/summary.json" 2>/dev/null || echo "no summary"
}

step() {  # step NAME LIMIT_S ARGS...: one run of scripts/train.py into OUT_DIR/NAME
  local name=$1 limit=$2; shift 2
  timeout "$limit" $PY scripts/train.py "$@" hydra.run.dir="$OUT_DIR/$name" \
    > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  (( rc != 0 )) && FAILED=$((FAILED + 1)) && tail -n 5 "$OUT_DIR/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(summary "$OUT_DIR/$name")" | tee -a "$TSV"
}

# 1. the default run on the GPU, probe on, post-training scoring on the GPU
for model in rnn_scratch lstm; do
  step "default_$model" 120 trainer=$ACC model=$model "${SHORT[@]}" eval.dynamic=true \
    +ngram_mix.order=5
done
# 2. bf16
for model in rnn_scratch lstm; do
  step "bf16_$model" 90 trainer=$ACC model=$model trainer.precision=bf16-mixed "${SHORT[@]}"
done
# 3. a packed sweep on the one GPU (hydra/launcher=parallel: job i on GPU i mod n)
dir=$OUT_DIR/packed_sweep
timeout 150 $PY scripts/train.py -m trainer=$ACC model=rnn_scratch,lstm seed=0,1 "${SHORT[@]}" \
  test=false hydra/launcher=parallel hydra.launcher.n_jobs=4 hydra.sweep.dir="$dir" \
  > "$dir.log" 2>&1
rc=$?; (( rc != 0 )) && FAILED=$((FAILED + 1)) && tail -n 5 "$dir.log"
finished=$(grep -l '"status": "finished"' "$dir"/*/summary.json 2>/dev/null | wc -l)
printf 'packed_sweep\t%s\t%s/4 jobs finished\n' "$rc" "$finished" | tee -a "$TSV"
# 4. DDP on one device
step ddp_1 120 trainer=ddp trainer.accelerator=$ACC trainer.devices=1 model=lstm "${SHORT[@]}"

cat "$TSV"
exit "$FAILED"
