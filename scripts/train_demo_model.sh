#!/usr/bin/env bash
# The complete recipe of the bundled demo model `medsyn-demo-phantom` (phantom-trained, CPU-friendly sizes).
# Every step is a medsyn command; the numbers in docs/demo-model.md were measured with it
# on a 2-core CPU. With a GPU add --device cuda to the train commands (and raise --steps / --batch-size).
set -euo pipefail
WORK=${1:-demo_train}
REPO=$(cd "$(dirname "$0")/.." && pwd)
TEXT=$REPO/Resources/Models/medsyn-demo-phantom/text_encoder
mkdir -p "$WORK"

# 1. Text encoder: WordPiece + 4-layer BERT (hidden 128) pretrained on 4000 phantom reports (MLM + paired sections).
[ -f "$TEXT/model.safetensors" ] || medsyn pretrain-text --n-reports 4000 --steps 1500 --seed 0 --out "$TEXT"

# 2. Data: 320 procedural 128³ chest phantoms with ground-truth masks and reports.
medsyn phantom --n 320 --seed 1000 --size 128 --out "$WORK/phantoms"

# 3. Low-res stage (32³ × 4 channels, text cross-attention) and SR stage (32³ → 128³, in-plane crops).
OMP_NUM_THREADS=1 medsyn train --stage lowres --data "$WORK/phantoms/manifest.jsonl" --out "$WORK/run_low" \
  --model-config "$REPO/scripts/demo_lowres_config.json" --text-encoder "$TEXT" --steps "${LOWRES_STEPS:-1800}" \
  --batch-size 4 --lr 6e-4 --checkpoint-every 100 --seed 0 --device cpu --ema-decay 0.995 --ema-every 1 --ema-start 600 &
OMP_NUM_THREADS=1 medsyn train --stage sr --data "$WORK/phantoms/manifest.jsonl" --out "$WORK/run_sr" \
  --model-config "$REPO/scripts/demo_sr_config.json" --steps "${SR_STEPS:-900}" --batch-size 4 --lr 1e-3 --crop 24x24 \
  --checkpoint-every 50 --seed 0 --device cpu --ema-decay 0.98 --ema-every 1 --ema-start 200 &
wait

# 3b. SR fine-tune: 400 more steps on slabs of whole axial planes (GroupNorm sees whole-volume statistics) with the CT
#     loss weighted 10× inside the airway, so the SR stage carves the lumen where the airway channel is.
OMP_NUM_THREADS=2 medsyn train --stage sr --data "$WORK/phantoms/manifest.jsonl" --out "$WORK/run_sr" \
  --model-config "$REPO/scripts/demo_sr_config.json" --steps 1300 --batch-size 4 --lr 5e-4 --crop 8x128x128 \
  --structure-ct-weights 10,1 --checkpoint-every 50 --seed 0 --device cpu --ema-decay 0.98 --ema-every 1 \
  --ema-start 200 --resume

# 4. Model folder with a card (EMA weights, sha256, default steps).
medsyn export-model --lowres "$WORK/run_low" --sr "$WORK/run_sr" --text-encoder "$TEXT" \
  --out "$WORK/medsyn-demo-phantom" --name medsyn-demo-phantom --license Apache-2.0 \
  --description "Demonstration model trained by MedSynSlicer on procedural chest phantoms. NOT a model of real patients." \
  --intended-use "Trying MedSynSlicer end to end without the gated official weights; tests; teaching. Not for clinical or research conclusions about real anatomy." \
  --steps 50 --sr-steps 10 --guidance 6.0
