#!/usr/bin/env bash
# The GPU figures docs/distributed.md still lacks, in one run of under 10 minutes on a GPU machine:
#   1. the chapter8 ablation grid (8 jobs, 2 epochs each instead of 10) packed 1, 4 and 8 jobs per
#      GPU (hydra/launcher=parallel, job i on GPU i mod n): wall time of each sweep;
#   2. tokens/s of the default model (rnn_scratch) and lstm through Lightning vs a plain loop
#      (benchmarks/bench.py --device cuda, batch 32 and 256);
#   3. DDP scaling: trainer=ddp on 1, 2, 4, ... GPUs of the machine, global batch 256, 2 epochs.
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default $OUT, else outputs/gpu_check
#   SMOKE=1 bash scripts/gpu_check.sh /tmp/x   # on a CPU: the same steps, tiny, to check the script
#
# Results: OUT_DIR/gpu_check.tsv (one line per figure), bench_gpu.json, each run's summary.json
# and log, machine.txt. Each step has its own time limit, so a slow step costs a figure, not the rest.
set -uo pipefail
OUT_DIR=${1:-${OUT:-outputs/gpu_check}}
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
export PROJECT_ROOT=$PWD PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python}
TSV=$OUT_DIR/gpu_check.tsv
printf 'figure\tsetting\tvalue\n' > "$TSV"

if [[ -n "${SMOKE:-}" ]]; then  # a CPU check of this script: tiny corpus slice and model
  TRAINER=(trainer=cpu) DDP=(trainer=ddp trainer.accelerator=cpu) NGPU=1 PER=(1) DEV=cpu
  TINY=(data.max_tokens=20000 model.core.num_hiddens=32 torch_threads=1)
  BENCH=(--quick --device cpu --threads 1)
else
  TRAINER=(trainer=gpu) DDP=(trainer=ddp trainer.accelerator=gpu) DEV=cuda PER=(1 4 8)
  NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
  TINY=()
  BENCH=(--device cuda --threads 1 --batch-sizes 32 256 --reps 3)
fi
{ date -Is; nvidia-smi -L 2>/dev/null; lscpu | grep -E "Model name|^CPU\(s\)"
  $PY -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__,
  'cuda', torch.version.cuda, 'lightning', pl.__version__)"; } > "$OUT_DIR/machine.txt" 2>&1
cat "$OUT_DIR/machine.txt"

# 1. the ablation grid, packed onto the GPUs
for per in "${PER[@]}"; do
  jobs=$((per * NGPU)); dir=$OUT_DIR/grid_${per}_per_gpu
  t0=$(date +%s.%N)
  timeout 200 $PY scripts/train.py -m ablation=chapter8 "${TRAINER[@]}" "${TINY[@]}" \
    trainer.max_epochs=2 test=false callbacks.sample_text.every_n_epochs=0 \
    hydra/launcher=parallel hydra.launcher.n_jobs=$jobs hydra.sweep.dir="$dir" \
    > "$dir.log" 2>&1
  rc=$?; wall=$(echo "$(date +%s.%N) - $t0" | bc)
  done_jobs=$(grep -l '"status": "finished"' "$dir"/*/summary.json 2>/dev/null | wc -l)
  printf 'grid_wall_s\t%s jobs/GPU (n_jobs=%s, rc=%s, %s/8 finished)\t%.1f\n' \
    "$per" "$jobs" "$rc" "$done_jobs" "$wall" | tee -a "$TSV"
done

# 2. Lightning vs a plain loop, the default model and lstm
timeout 150 $PY benchmarks/bench.py --only train --models rnn_scratch lstm "${BENCH[@]}" \
  --out "$OUT_DIR/bench_gpu.json" > "$OUT_DIR/bench.log" 2>&1
printf 'bench\tbenchmarks/bench.py (rc=%s)\t%s\n' "$?" "$OUT_DIR/bench_gpu.json" | tee -a "$TSV"
tail -n 15 "$OUT_DIR/bench.log"

# 3. DDP scaling over the machine's GPUs, global batch 256
d=1
MAXD=$([[ -n "${SMOKE:-}" ]] && echo 2 || echo "$NGPU")  # the smoke run: 1 and 2 CPU ranks
while (( d <= MAXD )); do
  dir=$OUT_DIR/ddp_$d
  timeout 120 $PY scripts/train.py "${DDP[@]}" trainer.devices=$d "${TINY[@]}" \
    data.batch_size=256 trainer.max_epochs=2 test=false callbacks.sample_text.every_n_epochs=0 \
    hydra.run.dir="$dir" > "$dir.log" 2>&1
  rc=$?
  tps=$($PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(s.get('tokens_per_s'),
  s.get('final_val_ppl'), s.get('wall_time_s'))" "$dir/summary.json" 2>/dev/null)
  printf 'ddp_tokens_per_s val_ppl wall_s\t%s %s (rc=%s)\t%s\n' "$d" "$DEV" "$rc" "$tps" \
    | tee -a "$TSV"
  d=$((d * 2))
done
cat "$TSV"
