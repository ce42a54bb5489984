#!/usr/bin/env bash
# Continue the shipped model on a lent GPU in one device call, and bring the result back sharded.
# Not yet run on a GPU: no session that wrote it was lent one. Written for the `device` tool:
#   here, once:  mkdir -p .whl && pip download --no-deps -d .whl easy-vqa==1.0
#   device run:  command "bash scripts/train_gpu.sh", carry [".whl"], timeout_s 600
# It converts easy-vqa's train split there (the wheel carries it), trains from models/mmchat-shapes
# with many data-loader workers (rendering scenes is the CPU's work; the model is tiny) on a stream
# no CPU stage drew (--seed 100), with the last CPU stages' mix (count asked most, crowded scenes
# drawn more often, more varied renders), ends by --max-minutes whatever the step, and writes to
# $OUT/model only what differs from the shipped
# folder (config, weights in shards under the tool's 16 MiB per file, their index) and the log:
# at most 8 files come back. Then, here, in the folder the tool names (files_at):
#   cp -rn models/mmchat-shapes/. FILES_AT/model/ && rm FILES_AT/model/model.safetensors   # tokenizer etc.
#   bash scripts/evaluate_default.sh FILES_AT/model                                          # the card's figures
# Arguments: STEPS (the LR schedule's length) MINUTES (the time box) BATCH.
set -euo pipefail
steps=${1:-8000} minutes=${2:-8} batch=${3:-64}
out=${OUT:?set by the device tool}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
[ -f data/easy-vqa-train/annotations.json ] || python -m mmchat easy-vqa --out data/easy-vqa-train --split train
workers=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))
python3 -m mmchat train --out runs/gpu --init-from models/mmchat-shapes --steps "$steps" --max-minutes "$minutes" \
  --batch-size "$batch" --lr 4e-4 --warmup 200 --mixed-precision bf16 --num-workers "$workers" --min-turns 4 \
  --vqa-data data/easy-vqa-train --vqa-weight 0.25 --family-weights where=1 relation=3 count=6 query_size=0.75 \
  --object-weights 4=1.5 5=2 6=2 --more-variety --seed 100 \
  --log-every 100 --eval-every 2000 --eval-images 60 --save-every 1000000 > runs/gpu-train.log 2>&1 \
  || { tail -c 4000 runs/gpu-train.log; exit 1; }
grep -a "step \|parameters\|ending" runs/gpu-train.log || true
cp runs/gpu/log.jsonl "$out/"
python3 - "$out/model" <<'EOF'
import sys
from mmchat.modeling import MMChatForConditionalGeneration
model = MMChatForConditionalGeneration.from_pretrained("runs/gpu/final")
model.save_pretrained(sys.argv[1], max_shard_size="15MB")  # tokenizer and processor: the shipped ones
EOF
ls -la "$out/model"
