#!/usr/bin/env bash
# Continue the shipped model on a lent GPU in one device call, and bring the result back sharded.
# Written for the `device` tool (its machine has torch but not this project's transformers,
# bitsandbytes, easy-vqa, pillow_heif or simplejpeg, and no network): here, once, put their wheels in .devsite/ (ignored by
# git; see scripts/device_site.sh), then
#   device run:  command "bash scripts/train_gpu.sh", carry [".devsite"], timeout_s 480
# (The GPU tests can run beside it, since rendering, not the GPU, bounds this run:
#   command "source scripts/device_site.sh; (python3 -m pytest -q -s tests/serving/test_gpu.py > $OUT/gpu-tests.log 2>&1) & bash scripts/train_gpu.sh; wait")
# It converts easy-vqa's train split there (the wheel carries it) and trains from
# models/mmchat-shapes with the last CPU stage's mix (describe at weight 4, crowded scenes drawn
# more often, v2 phrasings, answers weighed by the square root of their length) on a stream no CPU
# stage drew (SEED; stage 17 used 100), with many data-loader workers (rendering scenes is the CPU's work; the
# model is tiny) and the ViT trained too, which the CPU stages froze for speed. The cosine follows
# the clock (--decay-by-time) and ends with --max-minutes, whatever the step. It writes to
# $OUT/model only what differs from the shipped folder (config, weights in shards under the tool's
# 16 MiB per file, their index) and the log: at most 8 files come back. Then, here, in the folder
# the tool names (files_at):
#   cp -rn models/mmchat-shapes/. FILES_AT/model/ && rm FILES_AT/model/model.safetensors   # tokenizer etc.
# (To ship it, join the shards into one model.safetensors: safetensors' load_file and save_file.)
# Then score it on the selection sets (`bash scripts/select_stage.sh FOLDER OUT`, the world gate copied in)
# against a rule written down before the run.
# Arguments: MINUTES (the time box) BATCH LR SEED.
set -euo pipefail
minutes=${1:-6} batch=${2:-128} lr=${3:-2.5e-4} seed=${4:-101}
out=${OUT:?set by the device tool}
source scripts/device_site.sh
export PYTHONUNBUFFERED=1
[ -f data/easy-vqa-train/annotations.json ] || python3 -m mmchat easy-vqa --out data/easy-vqa-train --split train
mkdir -p runs
workers=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m mmchat train --out runs/gpu --init-from models/mmchat-shapes --preset shapes-small --seed "$seed" \
  --steps 1000000 --max-minutes "$minutes" --decay-by-time --batch-size "$batch" --lr "$lr" --warmup 200 \
  --mixed-precision bf16 --num-workers "$workers" --min-turns 4 --vqa-data data/easy-vqa-train --vqa-weight 0.25 \
  --more-variety --phrasing-v2 0.25 --object-weights 4=1.5 5=3 6=3 \
  --family-weights where=1 relation=3 count=6 query_size=0.75 describe=4 --answer-balanced --answer-length-power 0.5 \
  --eval-images 60 --eval-every 1000000 --save-every 1000000 --log-every 200 > runs/gpu-train.log 2>&1 \
  || { tail -c 4000 runs/gpu-train.log; cp runs/gpu-train.log "$out/" || true; exit 1; }
grep -a '"step"\|parameters\|ending' runs/gpu-train.log | tail -n 40 || true
cp runs/gpu/log.jsonl "$out/"
python3 - "$out/model" <<'EOF'
import sys
from mmchat.modeling import MMChatForConditionalGeneration
model = MMChatForConditionalGeneration.from_pretrained("runs/gpu/final")
model.save_pretrained(sys.argv[1], max_shard_size="15MB")  # tokenizer and processor: the shipped ones
EOF
rm -f "$out"/model/*.py "$out/model/generation_config.json"  # as shipped: at most 8 files come back
cp runs/gpu-train.log "$out/"
ls -la "$out" "$out/model"
