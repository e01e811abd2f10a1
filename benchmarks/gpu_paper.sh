#!/usr/bin/env bash
# The paper's CIFAR-10 compression experiment at full schedule in one command (issue 16):
#   k2-unpruned   configs/cifar10-k2.yaml           50 epochs per stage, the paper's k=2 net (90.4 % reported)
#   k2-pruned     configs/cifar10-k2-compress.yaml  the same, 128 -> 64 after every stage, 5 fine-tune epochs
# then `prunegreedy report` of both into OUT/report. The two runs share the GPU side by side (one
# k=2 stage at batch 128 leaves most of an H100 idle), each under a timeout that keeps the whole
# command inside 9 minutes; a run stopped by it resumes later with `prunegreedy run --resume`.
# Everything it needs travels with the code: the JPEG copy as one pack file (55 MB, made by
# `python benchmarks/pack_images.py pack DATA PACK`), unpacked here; no install, no network.
#
#   bash benchmarks/gpu_paper.sh PACK OUT [EPOCHS]          (EPOCHS: per stage, default 50)
# Optional environment: PYTHON (python3), SITE (extra import folder), RUN_TIMEOUT (s per run, 500),
# EXTRA (more `run` arguments, e.g. for a dry run on a CPU: --device cpu --set model.widths=8,8,16,16).
set -uo pipefail
PACK=${1:?usage: gpu_paper.sh PACK OUT [EPOCHS]}
OUT=${2:?usage: gpu_paper.sh PACK OUT [EPOCHS]}
EPOCHS=${3:-50}
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PRUNEGREEDY_CACHE=${PRUNEGREEDY_CACHE:-$OUT/cache}
DATA=${TMPDIR:-/tmp}/cifar10-jpeg-paper
cd "$ROOT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, torch_pruning, fvcore; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

start=$SECONDS
$PY benchmarks/pack_images.py unpack "$PACK" "$DATA" || exit 1
echo "unpacked in $((SECONDS - start)) s"
# Decode once into the uint8 cache before the two runs start, so they do not both decode.
$PY -c "from prunegreedy.config import DataConfig; from prunegreedy.data.registry import load_dataset; \
load_dataset(DataConfig(name='cifar10', data_dir='$DATA'))" || exit 1
echo "decoded in $((SECONDS - start)) s"

FT=$($PY -c "print(round($EPOCHS * 5 / 50, 3))")  # the paper's fine-tuning: 5 epochs per 50
pids=()
for spec in "unpruned cifar10-k2" "pruned cifar10-k2-compress"; do
  set -- $spec
  # Large evaluation batches: the test split is evaluated after every phase of every stage.
  timeout "${RUN_TIMEOUT:-500}" $PY -m prunegreedy run --config "$2" --data-dir "$DATA" --epochs "$EPOCHS" \
    --set compress.finetune_epochs="$FT" --set train.eval_batch_size=2500 --out "$OUT/k2-$1" --quiet \
    ${EXTRA:-} > "$OUT/k2-$1.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
echo "both runs ended in $((SECONDS - start)) s (exit status $status)"
tail -n 3 "$OUT"/k2-*.log
$PY -m prunegreedy report "$OUT/k2-unpruned" "$OUT/k2-pruned" --out "$OUT/report" || status=1
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
for run in sorted(Path(sys.argv[1]).glob("k2-*/")):
    m = json.loads((run / "run.json").read_text())
    print(f"{run.name}: status {m.get('status')}, stages {m.get('stages_done')}, final test acc {m.get('final_acc')}%, "
          f"ensemble {m.get('ensemble_acc')}%, widths {m.get('widths')}, params {m.get('params')}, "
          f"{m.get('seconds', m.get('seconds_done'))} s on {m.get('device')} ({m.get('amp')})")
EOF
echo "gpu_paper done in $((SECONDS - start)) s"
exit $status
