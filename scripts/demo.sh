#!/usr/bin/env bash
# README command 1: the main job on the embedded default, on the CPU (about 17-25 minutes on 2 cores the first time).
# synthetic DGM4-format benchmark + pristine pre-training corpus -> preprocess (face cache, stop-word masks,
# tokenizer) -> METER-style pre-training (pretrain.py, reused when its settings and data are unchanged) ->
# weakly supervised fine-tuning of CIEC from the exported METER checkpoint (train.py) -> test (test.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
DATA=${DATA:-data/synthetic}
CONFIG=${CONFIG:-configs/demo.yaml}
PRETRAIN_CONFIG=${PRETRAIN_CONFIG:-configs/demo_pretrain.yaml}
SPLITS="metadata/train.json metadata/val.json metadata/test.json metadata/pretrain.json"
start=$(date +%s)

# The demo's difficulty (docs/synthetic_benchmark.md "Demo setting"): large faces, a plain trace, no trace-like
# background noise, so that encoders trained from scratch on a CPU leave the MIL plateau within minutes.
python preprocess/make_synthetic.py --out "$DATA" --overwrite --train 4000 --val 400 --test 1000 --pretrain 4000 --seed 0 \
    --trace-strength 4 --distractor-trace 0 --face-area 0.04 0.25
# Candidate boxes: the detector-like `mtcnn_boxes` the benchmark ships (MTCNN itself: drop --from-metadata).
python preprocess/detect_faces.py --data-root "$DATA" --metadata $SPLITS --out "$DATA/faces.json" --from-metadata
python preprocess/stopword_masks.py --data-root "$DATA" --metadata $SPLITS --out "$DATA/stopwords.json"
python preprocess/train_tokenizer.py --data-root "$DATA" --metadata metadata/train.json --out "$DATA/tokenizer"
python preprocess/check_alignment.py --data-root "$DATA" --metadata $SPLITS --tokenizer "$DATA/tokenizer"

# Pre-training on the 4000 pristine pairs (no manipulation label read); exports output/demo_pretrain/meter_pretrain.ckpt.
python pretrain.py --config "$PRETRAIN_CONFIG" --restart-if-stale
python train.py --config "$CONFIG" --restart-if-stale "$@"
python test.py --config "$CONFIG" --visualize 8   # Figure 3-style pictures in output/demo/eval_test/vis
echo "demo finished in $(( $(date +%s) - start )) s"
