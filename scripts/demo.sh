#!/usr/bin/env bash
# README command 1: the main job on the embedded default, on the CPU (about 17-25 minutes on 2 cores the first time).
# synthetic DGM4-format benchmark + pristine pre-training corpus -> preprocess (face cache, stop-word masks,
# tokenizer) -> METER-style pre-training (pretrain.py, reused when its settings and data are unchanged) ->
# weakly supervised fine-tuning of CIEC from the exported METER checkpoint (train.py) -> test (test.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
DATA=${DATA:-data/synthetic}
# ROAD=long: the long road (about 80 minutes the first time, beyond issue 9's 30 minutes): 40 + 12 epochs of
# pre-training (configs/demo_pretrain_long.yaml, then configs/demo_pretrain_rud.yaml) and configs/demo_long.yaml.
case "${ROAD:-short}" in
    short) CONFIG=${CONFIG:-configs/demo.yaml}; PRETRAIN_CONFIGS=${PRETRAIN_CONFIGS:-configs/demo_pretrain.yaml} ;;
    long) CONFIG=${CONFIG:-configs/demo_long.yaml}
          PRETRAIN_CONFIGS=${PRETRAIN_CONFIGS:-"configs/demo_pretrain_long.yaml configs/demo_pretrain_rud.yaml"} ;;
    *) echo "error: ROAD must be short or long, got '$ROAD'" >&2; exit 2 ;;
esac
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

# Pre-training on the 4000 pristine pairs (no manipulation label read); exports <train.output_dir>/meter_pretrain.ckpt
# (output/demo_pretrain), each stage reused when its settings and data are unchanged.
for pretrain_config in $PRETRAIN_CONFIGS; do
    python pretrain.py --config "$pretrain_config" --restart-if-stale
done
python train.py --config "$CONFIG" --restart-if-stale "$@"
python test.py --config "$CONFIG" --visualize 8   # Figure 3-style pictures in <train.output_dir>/eval_test/vis
echo "demo finished in $(( $(date +%s) - start )) s"
