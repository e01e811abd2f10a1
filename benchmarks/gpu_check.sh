#!/usr/bin/env bash
# GPU check, sized for <= 12 minutes on one H100:
#   (a) VGG-11 (config A, BN) on synthetic ImageNet-sized tensors (224x224, batch 256, bf16):
#       every greedy stage and end-to-end, images/s and peak GPU memory;
#   (b) the paper's CIFAR-10 k=2 recipe on the full CIFAR-10 JPEG copy, unpruned and with
#       128 -> 64 compression after every stage, EPOCHS epochs per stage (the paper: 50) with
#       fine-tuning scaled like the paper's 5 of 50; test accuracy and time of each.
# Everything it needs travels with the code: the JPEG copy as one pack file (55 MB, made by
# `python benchmarks/pack_images.py pack DATA PACK`), unpacked here; no install, no network.
# torch-pruning and fvcore, if not installed there, can sit in a folder named by $SITE.
#
#   bash benchmarks/gpu_check.sh PACK OUT [EPOCHS]     (EPOCHS default 8)
# Optional environment: PYTHON (python3), SITE (extra import folder), RUN_TIMEOUT (s per run, 240),
# SYNTH_ARGS (extra arguments for (a), e.g. a small --size for a dry run on a CPU).
set -uo pipefail
PACK=${1:?usage: gpu_check.sh PACK OUT [EPOCHS]}
OUT=${2:?usage: gpu_check.sh PACK OUT [EPOCHS]}
EPOCHS=${3:-8}
PY=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
export PRUNEGREEDY_CACHE=${PRUNEGREEDY_CACHE:-$OUT/cache}
DATA=${TMPDIR:-/tmp}/cifar10-jpeg
cd "$ROOT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, torch_pruning, fvcore; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

start=$SECONDS
$PY benchmarks/pack_images.py unpack "$PACK" "$DATA" || exit 1
echo "unpacked in $((SECONDS - start)) s"

echo "== (a) VGG-11, synthetic 224x224 tensors"
timeout 150 $PY benchmarks/synthetic_speed.py --plan vgg11 --batch 256 --steps 10 ${SYNTH_ARGS:-} --csv "$OUT/vgg11-synthetic.csv"

echo "== (b) paper CIFAR-10 k=2 recipe, $EPOCHS epochs per stage"
FT=$($PY -c "print(round($EPOCHS * 5 / 50, 3))")  # the paper's fine-tuning: 5 epochs per 50
for spec in "unpruned cifar10-k2" "pruned-128to64 cifar10-k2-compress"; do
  set -- $spec
  timeout "${RUN_TIMEOUT:-240}" $PY -m prunegreedy run --config "$2" --data-dir "$DATA" --epochs "$EPOCHS" \
    --set compress.finetune_epochs="$FT" --out "$OUT/k2-$1" --quiet
  echo "k2-$1 exit $?"
done
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
for run in sorted(Path(sys.argv[1]).glob("k2-*")):
    m = json.loads((run / "run.json").read_text())
    print(f"{run.name}: status {m.get('status')}, stages {m.get('stages_done')}, final test acc {m.get('final_acc')}%, "
          f"ensemble {m.get('ensemble_acc')}%, widths {m.get('widths')}, params {m.get('params')}, "
          f"{m.get('seconds', m.get('seconds_done'))} s on {m.get('device')} ({m.get('amp')})")
EOF
echo "gpu_check done in $((SECONDS - start)) s"
