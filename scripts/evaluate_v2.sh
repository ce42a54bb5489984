#!/usr/bin/env bash
# ShapesVQA version 2 figures of models/mmchat-shapes/README.md ("Version 2" table), all on sets
# made fresh for it (seeds 20261130-20261136, used by no training run and no selection): the v1
# templates at 224 px, the independent renderer at 224 and 96 px, every v2 phrasing form, the
# describe family, out-of-world images from sources the gate never saw (gradio, scikit-learn and
# matplotlib photos, matplotlib charts, rendered text), out-of-world questions from the held-out
# list, and easy-vqa's test split (in-world: it counts towards the false declines).
# Needs the dev requirements (scikit-learn, matplotlib) to build the out-of-world image set.
set -euo pipefail
model=${1:-models/mmchat-shapes}
mkdir -p runs/eval-v2
[ -f data/v2-v1-test/annotations.json ] || python -m mmchat shapes --out data/v2-v1-test --images 200 --seed 20261130 --questions-per-image 5
[ -f data/v2-independent-224/annotations.json ] || python benchmarks/independent_shapes.py --out data/v2-independent-224 --images 300 --seed 20261131 --side 224
[ -f data/v2-independent-96/annotations.json ] || python benchmarks/independent_shapes.py --out data/v2-independent-96 --images 300 --seed 20261132 --side 96
[ -f data/v2-phrasing-test/annotations.json ] || python -m mmchat shapes --out data/v2-phrasing-test --images 200 --seed 20261133 --questions-per-image 5 --phrasing v2
[ -f data/v2-describe-test/annotations.json ] || python -m mmchat shapes --out data/v2-describe-test --images 200 --seed 20261134 --questions-per-image 1 --families describe --phrasing v2
[ -f data/v2-oow-images/annotations.json ] || python -m mmchat out-of-world --out data/v2-oow-images --images 200 --seed 20261135
[ -f data/v2-oow-questions/annotations.json ] || python -m mmchat out-of-world --out data/v2-oow-questions --questions held-out --images 200 --seed 20261136
[ -f data/easy-vqa-test/annotations.json ] || python -m mmchat easy-vqa --out data/easy-vqa-test --split test
for set in v2-v1-test v2-independent-224 v2-independent-96 v2-phrasing-test v2-describe-test v2-oow-images v2-oow-questions easy-vqa-test; do
  echo "== $set"
  python -m mmchat evaluate --model "$model" --data data/$set --predictions runs/eval-v2/$set.json
done
