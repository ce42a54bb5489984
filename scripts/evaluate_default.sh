#!/usr/bin/env bash
# The figures in models/mmchat-shapes/README.md: a fresh ShapesVQA test split (seed 20261123, never
# used in training), its blind baseline (every image blanked), easy-vqa's official test split, and
# two more fresh splits at the ends of the spec's side range (96 and 512 px), and 300 questions of
# the training-only "where" family (outside the spec: "Where is the red circle?" -> "top left"), and
# a split from benchmarks/independent_shapes.py, a second renderer of the spec written from the spec
# alone (its own rasteriser, triangles, noise and question sampler), at 224 and 96 px.
set -euo pipefail
model=${1:-models/mmchat-shapes}
mkdir -p runs/eval
[ -f data/shapes-test/annotations.json ] || python -m mmchat shapes --out data/shapes-test --images 300 --seed 20261123 --questions-per-image 5
[ -f data/easy-vqa-test/annotations.json ] || python -m mmchat easy-vqa --out data/easy-vqa-test --split test
python -m mmchat evaluate --model "$model" --data data/shapes-test --predictions runs/eval/shapes-test.json
python -m mmchat evaluate --model "$model" --data data/shapes-test --predictions runs/eval/shapes-test-blind.json --blind
python -m mmchat evaluate --model "$model" --data data/easy-vqa-test --predictions runs/eval/easy-vqa-test.json
for split in "96 20261121" "512 20261125"; do
  read -r side seed <<< "$split"
  [ -f data/shapes-test-$side/annotations.json ] || python -m mmchat shapes --out data/shapes-test-$side --images 100 --seed $seed --side $side --questions-per-image 5
  python -m mmchat evaluate --model "$model" --data data/shapes-test-$side --predictions runs/eval/shapes-test-$side.json
done
[ -f data/where-test/annotations.json ] || python -m mmchat shapes --out data/where-test --images 150 --seed 20261126 --families where --questions-per-image 2
python -m mmchat evaluate --model "$model" --data data/where-test --predictions runs/eval/where-test.json
for split in "224 20261127" "96 20261128"; do
  read -r side seed <<< "$split"
  [ -f data/independent-test-$side/annotations.json ] || python benchmarks/independent_shapes.py --out data/independent-test-$side --images 500 --seed $seed --side $side
  python -m mmchat evaluate --model "$model" --data data/independent-test-$side --predictions runs/eval/independent-test-$side.json
done
# Version 2 (phrasing, describe, unanswerable): fresh sets, through the world gate.
bash scripts/evaluate_v2.sh "$model"
