#!/usr/bin/env bash
# The figures in models/mmchat-shapes/README.md: a fresh ShapesVQA test split (seed 20261123, never
# used in training), its blind baseline (every image blanked), easy-vqa's official test split, and
# two more fresh splits at the ends of the spec's side range (96 and 512 px), and 300 questions of
# the training-only "where" family (outside the spec: "Where is the red circle?" -> "top left"), and
# a split from benchmarks/independent_shapes.py, a second renderer of the spec written from the spec
# alone (its own rasteriser, triangles, noise and question sampler), at 224 and 96 px.
# Each score is also written to MODEL/results/*.json, and the card's model-index is rebuilt from
# them (python -m mmchat card): `bash scripts/evaluate_default.sh [MODEL]` is the one command.
set -euo pipefail
model=${1:-models/mmchat-shapes}
results="$model/results"
mkdir -p runs/eval "$results"
rm -f "$results"/*.json  # only what this run measures goes into the card
evaluate() {  # evaluate NAME DATA "DATASET NAME" DATASET_TYPE SPLIT [ARGS...]
  local name=$1 data=$2 title=$3 type=$4 split=$5
  shift 5
  python -m mmchat evaluate --model "$model" --data "$data" --predictions "runs/eval/$name.json" \
    --results-json "$results/$name.json" --dataset-name "$title" --dataset-type "$type" --dataset-split "$split" "$@"
}
[ -f data/shapes-test/annotations.json ] || python -m mmchat shapes --out data/shapes-test --images 300 --seed 20261123 --questions-per-image 5
[ -f data/easy-vqa-test/annotations.json ] || python -m mmchat easy-vqa --out data/easy-vqa-test --split test
evaluate 1-shapes-test data/shapes-test "ShapesVQA, fresh split (seed 20261123, 224 px)" shapes-vqa test
# The blind baseline is not the model's score on a data set: written beside the others, kept out of the card.
python -m mmchat evaluate --model "$model" --data data/shapes-test --predictions runs/eval/shapes-test-blind.json \
  --results-json runs/eval/shapes-test-blind-results.json --dataset-type shapes-vqa --blind
evaluate 2-easy-vqa-test data/easy-vqa-test "easy-vqa, official test split" easy-vqa test
for split in "96 20261121" "512 20261125"; do
  read -r side seed <<< "$split"
  [ -f data/shapes-test-$side/annotations.json ] || python -m mmchat shapes --out data/shapes-test-$side --images 100 --seed $seed --side $side --questions-per-image 5
  evaluate "3-shapes-test-$side" "data/shapes-test-$side" "ShapesVQA, fresh split at $side px (seed $seed)" shapes-vqa "test-${side}px"
done
[ -f data/where-test/annotations.json ] || python -m mmchat shapes --out data/where-test --images 150 --seed 20261126 --families where --questions-per-image 2
evaluate 4-where-test data/where-test "ShapesVQA training-only family \"Where is the ...?\" (seed 20261126)" shapes-vqa-where test
for split in "224 20261127" "96 20261128"; do
  read -r side seed <<< "$split"
  [ -f data/independent-test-$side/annotations.json ] || python benchmarks/independent_shapes.py --out data/independent-test-$side --images 500 --seed $seed --side $side
  evaluate "5-independent-test-$side" "data/independent-test-$side" "ShapesVQA from an independent renderer, $side px (seed $seed)" shapes-vqa-independent "test-${side}px"
done
python -m mmchat card "$model" --results "$results"/*.json
# Version 2 (phrasing, describe, unanswerable): fresh sets, through the world gate.
bash scripts/evaluate_v2.sh "$model" 20261130 300  # the 900-question sets of those rows
