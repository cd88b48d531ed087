#!/usr/bin/env bash
# Fine-tune EasyOCR's english_g2 on real IIIT5K training crops, on CPU, and compare SVT / IC03
# (case-insensitive alphanumeric) before and after. The whole experiment:
#
#   bash scripts/finetune_english_g2.sh              # WORK=<temp dir>, NUM_ITER=400, LR=5e-5, AUGMENT=rand
#   WORK=/tmp/ft NUM_ITER=200 bash scripts/finetune_english_g2.sh
#   AUGMENT=none bash scripts/finetune_english_g2.sh # without train.py's --augment rand (augment.py)
#
# Data: iiit5k_train_2000's first 1,800 crops train, the last 200 validate (case-sensitive; accuracy
# plateaus at 83% from iteration 200, so the final weights, last.pth, are evaluated). A quarter of every batch is synthetic words (create_synth_dataset.py)
# so the model keeps seeing the kind of text it was trained on. Labels keep their case (english_g2 is
# case-sensitive); the CNN is frozen (which also makes a CPU step ~10x cheaper) and the BiLSTM and
# classifier learn with Adam at a small learning rate. SVT and IC03 are only ever evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
REAL=${REAL:-../shared/data/real}
WORK=${WORK:-$(mktemp -d -t ft_english_g2.XXXX)}
NUM_ITER=${NUM_ITER:-400}
LR=${LR:-5e-5}
VAL_INTERVAL=${VAL_INTERVAL:-100}
SYNTH=${SYNTH:-4000}
WORKERS=${WORKERS:-1}
AUGMENT=${AUGMENT:-rand}
REAL=$(cd "$REAL" && pwd)
echo "work folder: $WORK"

# 1. data: gt.txt folders (read directly, no LMDB needed) and a synthetic LMDB
for split in train valid; do
  dir=$WORK/$split/iiit5k_$split
  mkdir -p "$dir"
  ln -sfn "$REAL/iiit5k_train_2000/images" "$dir/images"
done
head -n 1800 "$REAL/iiit5k_train_2000/gt.txt" > "$WORK/train/iiit5k_train/gt.txt"
tail -n +1801 "$REAL/iiit5k_train_2000/gt.txt" > "$WORK/valid/iiit5k_valid/gt.txt"
if [ ! -f "$WORK/train/synth/data.mdb" ]; then
  printf '%s' "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" > "$WORK/alnum.txt"
  "$PY" create_synth_dataset.py --output_dir "$WORK/train/synth" --num_samples "$SYNTH" --seed 5 \
    --workers "$WORKERS" --character "$WORK/alnum.txt" --imgH 64 2>&1 | tail -n 1
fi

evaluate() {  # model set → accuracy
  "$PY" test.py --eval_data "$REAL/$2" --saved_model "$1" --case_insensitive --batch_size 64 --workers 0 \
    --device cpu 2>&1 | sed -n 's/^accuracy: \([0-9.]*\).*/\1/p'
}

# 2. before
before_svt=$(evaluate english_g2 svt_647)
before_ic03=$(evaluate english_g2 ic03_860)

# 3. fine-tune
start=$(date +%s)
"$PY" train.py --saved_model english_g2 --FT --exp_name "$WORK/exp" \
  --train_data "$WORK/train" --valid_data "$WORK/valid" --select_data iiit5k-synth --batch_ratio 0.75-0.25 \
  --freeze FeatureExtraction --batch_size 32 --num_iter "$NUM_ITER" --valInterval "$VAL_INTERVAL" --adam --lr "$LR" \
  --workers "$WORKERS" --device cpu --log_interval 50 --manualSeed 1111 --augment "$AUGMENT"
minutes=$(( ($(date +%s) - start + 30) / 60 ))

# 4. after
after_svt=$(evaluate "$WORK/exp/last.pth" svt_647)
after_ic03=$(evaluate "$WORK/exp/last.pth" ic03_860)

printf '\n| english_g2 | SVT 647 | IC03 860 |\n|---|---|---|\n'
printf '| before | %s | %s |\n' "$before_svt" "$before_ic03"
printf '| after %s iterations, --augment %s (%s min fine-tuning, last.pth) | %s | %s |\n' \
  "$NUM_ITER" "$AUGMENT" "$minutes" "$after_svt" "$after_ic03"
