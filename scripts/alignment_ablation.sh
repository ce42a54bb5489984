#!/usr/bin/env bash
# Does the alignment stage (ITC + ITM on scene captions) help? Two arms from scratch, preset
# shapes-mini, same seed and the same 700 evaluation questions (seed 424242):
#   vqa-only:   1,200 VQA steps
#   align-vqa:  300 alignment steps, then 900 VQA steps initialised from them
# Usage: bash scripts/alignment_ablation.sh SEED   (about 15 minutes on 2 CPU cores)
# Results are in runs/ablation-SEED/*/log.jsonl (eval_accuracy every 300 steps).
set -euo pipefail
seed=${1:-0}
out=runs/ablation-$seed
c="--preset shapes-mini --batch-size 32 --gate-init 0.5 --threads 2 --mixed-precision bf16 --log-every 50 --save-every 10000 --eval-images 100 --eval-every 300 --seed $seed"
python -m mmchat train --out "$out/vqa-only" --steps 1200 --lr 8e-4 --warmup 100 --min-turns 4 $c
python -m mmchat train --out "$out/align" --stage align --steps 300 --lr 8e-4 --warmup 50 $c
python -m mmchat train --out "$out/align-vqa" --init-from "$out/align/final" --steps 900 --lr 8e-4 --warmup 100 --min-turns 4 $c
