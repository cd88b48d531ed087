#!/usr/bin/env bash
# One command from a fresh machine to a model that reads: install, generate synthetic word images,
# train a small CRNN on the CPU, evaluate it on held-out fonts and on real word photographs (when
# the real crops are beside the repository, ../shared/data/real, or REAL=<folder>), and read a few
# images with demo.py.
#
#   bash quickstart.sh                       # about 12 minutes on a 2-core CPU, 9 of them training
#   TRAIN_MINUTES=3 NUM_TRAIN=5000 bash quickstart.sh   # a quick look (lower accuracy)
#   NUM_ITER=6000 bash quickstart.sh         # a fixed number of iterations instead of a time budget
#   AMP=off bash quickstart.sh               # fp32 even where the CPU computes bf16
#
# Everything it writes goes under $OUT (default quickstart_out/) and saved_models/quickstart/.
set -euo pipefail
cd "$(dirname "$0")"

OUT=${OUT:-quickstart_out}
NUM_TRAIN=${NUM_TRAIN:-100000}
WORKERS=${WORKERS:-2}
REAL=${REAL:-../shared/data/real}
AMP=${AMP:-auto}  # auto: bf16 where the CPU computes it natively (AVX512-BF16/AMX) or on a GPU, else off
PY=.venv/bin/python
start=$(date +%s)

echo "== 1/6 install (scripts/setup.sh)"
bash scripts/setup.sh

if [ "$AMP" = auto ]; then
  AMP=$($PY -c "import torch, runtime; print('bf16' if (torch.cuda.is_available() and torch.cuda.is_bf16_supported()) or runtime.cpu_flags() & set(runtime.BF16_CPU_FLAGS) else 'off')")
fi
# TRAIN_MINUTES of training on any machine: train.py --time_budget times a short warm-up here and
# chooses --num_iter from it (bf16 trains about 1.5x more iterations than fp32 where the CPU has it).
# NUM_ITER, when set, fixes the iterations instead.
TRAIN_MINUTES=${TRAIN_MINUTES:-9}
if [ -n "${NUM_ITER:-}" ]; then
  LENGTH=(--num_iter "$NUM_ITER"); LENGTH_TEXT="$NUM_ITER iterations"
else
  LENGTH=(--time_budget "$TRAIN_MINUTES"); LENGTH_TEXT="about $TRAIN_MINUTES minutes (--time_budget)"
fi

echo "== 2/6 synthetic data: $NUM_TRAIN training images, validation, held-out-font evaluation"
if [ ! -f "$OUT/data/evaluation/synth_heldout_fonts/data.mdb" ]; then
  rm -rf "$OUT/data"
  $PY create_synth_dataset.py --output_dir "$OUT/data" --layout tree --num_train "$NUM_TRAIN" \
      --num_valid 500 --num_eval 1000 --seed 0 --workers "$WORKERS"
fi
$PY scripts/make_contact_sheet.py --lmdb "$OUT/data/training/synth" --output "$OUT/training_samples.png"

echo "== 3/6 train a CRNN (None-VGG-BiLSTM-CTC, narrow) for $LENGTH_TEXT, --amp $AMP, augmented"
rm -rf saved_models/quickstart
train_start=$(date +%s)
$PY train.py --train_data "$OUT/data/training" --valid_data "$OUT/data/validation" \
    --select_data / --batch_ratio 1 --exp_name quickstart \
    --Transformation None --FeatureExtraction VGG --SequenceModeling BiLSTM --Prediction CTC \
    --output_channel 128 --hidden_size 128 \
    --adam --lr 0.002 --schedule onecycle "${LENGTH[@]}" --valInterval 250 \
    --batch_size 64 --workers 1 --log_interval 50 --amp "$AMP" --augment rand --augment_m 3
plan=$(sed -n 's/^time_budget_plan: //p' saved_models/quickstart/opt.txt | tail -1)
echo "trained in $(( $(date +%s) - train_start )) s${plan:+; train.py chose: $plan}"

echo "== 4/6 evaluate on fonts never seen in training"
$PY test.py --eval_data "$OUT/data/evaluation" --saved_model saved_models/quickstart/best_accuracy.pth --workers 1

echo "== 5/6 real word photographs (case-insensitive alphanumeric; never trained on)"
real_found=0
for set in svt_647 ic03_860 iiit5k_train_2000; do
  if [ -f "$REAL/$set/gt.txt" ]; then
    real_found=1
    acc=$($PY test.py --eval_data "$REAL/$set" --saved_model saved_models/quickstart/best_accuracy.pth \
          --case_insensitive --batch_size 64 --workers 0 | sed -n 's/^accuracy: \([0-9.]*\).*/\1/p' | tail -1)
    echo "real images: $set word accuracy $acc %"
  fi
done
if [ "$real_found" = 0 ]; then
  echo "no real word crops under $REAL (svt_647/, ic03_860/, iiit5k_train_2000/ with gt.txt): skipped the" \
       "real-image evaluation; set REAL=<folder> to run it"
fi

echo "== 6/6 read a handful of held-out images with demo.py"
$PY scripts/export_images.py --lmdb "$OUT/data/evaluation/synth_heldout_fonts" --output "$OUT/demo_images" --count 8
$PY demo.py --image_folder "$OUT/demo_images" --saved_model saved_models/quickstart/best_accuracy.pth --workers 0
echo "labels of those images: $OUT/demo_images/gt.txt"
echo "quickstart finished in $(( $(date +%s) - start )) s"
