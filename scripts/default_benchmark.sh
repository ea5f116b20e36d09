#!/usr/bin/env bash
# Issue 9 item 5: the demo's pre-trained backbone on the DEFAULT (harder) synthetic benchmark: small faces (0.8-20%
# of the image, 57% of manipulated boxes below 5%), the default trace strength 1.5 and trace-like noise on 40% of the
# background shapes (docs/synthetic_benchmark.md). Same sizes and schedule as the demo (configs/demo.yaml), the
# demo's tokenizer (so the pre-trained vocabulary applies), fine-tuned weakly from PRETRAINED (default: the demo's
# export; `PRETRAINED=null` trains from scratch). Needs scripts/demo.sh to have run once (tokenizer, export).
# Extra arguments are further --opts values (train.epochs=18 ...). Results: docs/results_synthetic.md "The default
# benchmark".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
DATA=${DATA:-data/synthetic_default}
PRETRAINED=${PRETRAINED:-output/demo_pretrain/meter_pretrain.ckpt}
OUT=${OUT:-output/default_benchmark}
TOKENIZER=data/synthetic/tokenizer
SPLITS="metadata/train.json metadata/val.json metadata/test.json"
start=$(date +%s)
test -d "$TOKENIZER" || { echo "error: $TOKENIZER missing: run scripts/demo.sh first" >&2; exit 1; }

if [ ! -f "$DATA/faces.json" ]; then
    python preprocess/make_synthetic.py --out "$DATA" --overwrite --train 4000 --val 400 --test 1000 --seed 0
    python preprocess/detect_faces.py --data-root "$DATA" --metadata $SPLITS --out "$DATA/faces.json" --from-metadata
    python preprocess/stopword_masks.py --data-root "$DATA" --metadata $SPLITS --out "$DATA/stopwords.json"
    python preprocess/check_alignment.py --data-root "$DATA" --metadata $SPLITS --tokenizer "$TOKENIZER"
fi
OPTS=(data.root="$DATA" data.tokenizer="$TOKENIZER" pretrained.meter="$PRETRAINED" train.output_dir="$OUT")
python train.py --config configs/demo.yaml --restart-if-stale --opts "${OPTS[@]}" "$@"
python test.py --config configs/demo.yaml --opts "${OPTS[@]}" "$@"
echo "default benchmark finished in $(( $(date +%s) - start )) s"
