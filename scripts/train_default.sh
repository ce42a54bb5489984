#!/usr/bin/env bash
# How models/mmchat-shapes was trained (2 CPU cores, no GPU; about eight and a half hours in all): a short easy stage
# (scenes of 1-2 objects, no relation/compare questions), so that the from-scratch ViT learns to
# find objects, then the full ShapesVQA + easy-vqa mix, initialised from the easy stage, then a
# continuation at a lower learning rate, then a longer one that asks the weak families (relation,
# count, query_color, query_shape) more often, then a position stage: a 2-D position code on the
# ViT patches and training-only "Where is the ...?" questions, its data mix changed twice on one
# learning-rate schedule (--stop-at, then --resume), then eight count stages that ask "how many"
# most often (a short one, a long one at a higher rate, two more at a lower rate, one on a fresh
# stream, two that draw crowded scenes more often, one with more varied renders), then a describe
# stage (ShapesVQA v2: descriptions and v2 phrasings, each answer weighing the same in the loss,
# the ViT frozen). Run from the repo root; runs/shapes-small-describe/final, with the world gate
# beside it, is what ships as models/mmchat-shapes.
set -euo pipefail
python -m mmchat easy-vqa --out data/easy-vqa-train --split train
common="--preset shapes-small --batch-size 32 --mixed-precision bf16 --threads 2 --min-turns 4 --vqa-data data/easy-vqa-train --vqa-weight 0.25 --log-every 50 --save-every 250"
python -m mmchat train --out runs/easy --easy --steps 600 --lr 8e-4 --warmup 100 --gate-init 0.5 --eval-every 600 --eval-images 60 $common
python -m mmchat train --out runs/shapes-small --init-from runs/easy/final --steps 5000 --lr 6e-4 --warmup 100 --eval-every 500 --eval-images 60 $common
python -m mmchat train --out runs/shapes-small-more --init-from runs/shapes-small/final --steps 1500 --lr 3e-4 --warmup 50 --eval-every 500 --eval-images 60 $common
python -m mmchat train --out runs/shapes-small-focus --init-from runs/shapes-small-more/final --steps 5500 --lr 4e-4 --warmup 100 --eval-every 1000 --eval-images 60 $common \
  --family-weights relation=2.5 count=2 query_color=1.5 query_shape=1.5 query_size=0.75
where="--out runs/shapes-small-where --lr 4e-4 --warmup 100 --eval-every 500 --eval-images 60 $common"
python -m mmchat train $where --init-from runs/shapes-small-focus/final --patch-position-code --patch-position-init 0.5 \
  --steps 4000 --stop-at 1000 --family-weights where=2 relation=2.5 count=2 query_size=0.75
python -m mmchat train $where --resume --steps 4000 --stop-at 2750 --family-weights where=6 relation=4 count=1.5 query_size=0.75
python -m mmchat train $where --resume --steps 5000 --family-weights where=6 relation=4 count=1.5 query_size=0.75
count="--eval-images 60 $common"
python -m mmchat train --out runs/shapes-small-count-1 --init-from runs/shapes-small-where/final --steps 1000 --lr 3e-4 --warmup 50 \
  --eval-every 500 $count --family-weights where=2 relation=3 count=4 query_size=0.75
python -m mmchat train --out runs/shapes-small-count-2 --init-from runs/shapes-small-count-1/final --steps 5000 --lr 4e-4 --warmup 100 \
  --eval-every 1000 $count --family-weights where=2 relation=3 count=4 query_size=0.75
python -m mmchat train --out runs/shapes-small-count-3 --init-from runs/shapes-small-count-2/final --steps 2500 --lr 2e-4 --warmup 100 \
  --eval-every 500 $count --family-weights where=1 relation=3 count=6 query_size=0.75
python -m mmchat train --out runs/shapes-small-count-4 --init-from runs/shapes-small-count-3/final --steps 2000 --lr 2e-4 --warmup 100 \
  --eval-every 500 $count --family-weights where=1 relation=3 count=6 query_size=0.75
# Stage 10 on fresh conversations: stages 6-9 all ran with --seed 0, so stage 7 began by replaying
# stage 6's 1,000 steps of conversations and stage 9 replayed the first 2,000 of stage 8's.
python -m mmchat train --out runs/shapes-small-count-5 --init-from runs/shapes-small-count-4/final --seed 10 --steps 3000 --lr 2e-4 \
  --warmup 100 --eval-every 1000 $count --family-weights where=1 relation=3 count=6 query_size=0.75
# Stages 11-12 draw scenes of 4-6 objects more often (--object-weights; counting erred most there).
crowded="--eval-every 1000 $count --family-weights where=1 relation=3 count=6 query_size=0.75 --object-weights 4=1.5 5=2 6=2"
python -m mmchat train --out runs/shapes-small-count-6 --init-from runs/shapes-small-count-5/final --seed 11 --steps 3000 --lr 2e-4 --warmup 100 $crowded
python -m mmchat train --out runs/shapes-small-count-7 --init-from runs/shapes-small-count-6/final --seed 12 --steps 3000 --lr 1.5e-4 --warmup 100 $crowded
# Stage 13 widens the renders within the spec (--more-variety): counting at 96 px on the
# independent renderer's scenes erred most.
python -m mmchat train --out runs/shapes-small-count-8 --init-from runs/shapes-small-count-7/final --seed 13 --steps 2000 --lr 1.5e-4 --warmup 100 $crowded --more-variety
# The world gate (world_gate.json: what the model declines as `unanswerable`; mmchat/serving/gate.py),
# trained on in-world renders and easy-vqa's train images against scikit-image photos, UI mock-ups,
# icons, patterns and noise (the other out-of-world sources are held out to measure it).
python -m mmchat train-gate --model runs/shapes-small-count-8/final --seed 2 --in-world 1500 --out-of-world 1500 --max-false-declines 0.002
# Stage 14 teaches `describe` (v2) and the v2 phrasings on top of stage 13, keeping v1: every answer
# weighs the same in the loss (--answer-balanced: a 20-60 token description would otherwise drown
# the one-word answers), the ViT frozen. The gate above is pixel statistics only; it is reused.
python -m mmchat train --out runs/shapes-small-describe --init-from runs/shapes-small-count-8/final --seed 17 --steps 1800 \
  --lr 2e-4 --warmup 100 --eval-every 600 --max-minutes 85 $crowded --more-variety --phrasing-v2 0.25 \
  --family-weights where=1 relation=3 count=6 query_size=0.75 describe=6 --answer-balanced --freeze-vision
cp runs/shapes-small-count-8/final/world_gate.json runs/shapes-small-describe/final/
# Stage 15 goes on teaching descriptions from stage 14: a description weighs the square root of its
# length against a one-word answer (--answer-length-power 0.5, where stage 14 weighed every answer
# alike), describe at weight 3; ended by --max-minutes 80 at step 2,026 of the 2,600-step schedule.
python -m mmchat train --out runs/shapes-small-describe-2 --init-from runs/shapes-small-describe/final --seed 18 --steps 2600 \
  --lr 1.5e-4 --warmup 50 --max-minutes 80 $crowded --eval-every 2600 --save-every 650 --more-variety --phrasing-v2 0.25 \
  --family-weights where=1 relation=3 count=6 query_size=0.75 describe=3 --answer-balanced --answer-length-power 0.5 --freeze-vision
cp runs/shapes-small-describe/final/world_gate.json runs/shapes-small-describe-2/final/
# Stage 16 goes on from stage 15 with crowded scenes drawn more often (5 and 6 objects at weight 3,
# where stage 15's descriptions erred most) and describe at weight 4; ended by --max-minutes 85 at
# step 1,658 of the 3,000-step schedule.
python -m mmchat train --out runs/shapes-small-describe-3 --init-from runs/shapes-small-describe-2/final --seed 19 --steps 3000 \
  --lr 1.5e-4 --warmup 50 --max-minutes 85 $count --eval-every 3000 --save-every 750 --more-variety --phrasing-v2 0.25 \
  --object-weights 4=1.5 5=3 6=3 --family-weights where=1 relation=3 count=6 query_size=0.75 describe=4 \
  --answer-balanced --answer-length-power 0.5 --freeze-vision
cp runs/shapes-small-describe-2/final/world_gate.json runs/shapes-small-describe-3/final/
# Stage 17 ran on a GPU lent to one session (an H200; `bash scripts/train_gpu.sh 5.5 128 2.5e-4 100` in one
# call of the `device` tool, which also carries the wheels that machine lacks): on from stage 16 with
# its mix, batches of 128, lr 2.5e-4, the ViT trained too, the cosine following the clock; ended by
# --max-minutes 5.5 at step 2,576 (7.8 steps/s). Its command, as train_gpu.sh ran it there; on a CPU
# the same time box ends after a few dozen steps: there, use --steps 2576 without --max-minutes and
# --decay-by-time (the clock's cosine followed the steps closely at a steady rate), some 10 hours here.
python -m mmchat train --out runs/gpu --init-from runs/shapes-small-describe-3/final --preset shapes-small --seed 100 \
  --steps 1000000 --max-minutes 5.5 --decay-by-time --batch-size 128 --lr 2.5e-4 --warmup 200 \
  --mixed-precision bf16 --num-workers 14 --min-turns 4 --vqa-data data/easy-vqa-train --vqa-weight 0.25 \
  --more-variety --phrasing-v2 0.25 --object-weights 4=1.5 5=3 6=3 \
  --family-weights where=1 relation=3 count=6 query_size=0.75 describe=4 --answer-balanced --answer-length-power 0.5 \
  --eval-images 60 --eval-every 1000000 --save-every 1000000 --log-every 200
cp runs/shapes-small-describe-3/final/world_gate.json runs/gpu/final/
# Stage 18 (not shipped) went on from stage 17 on the CPU with stage 16's CPU settings, the ViT frozen,
# lr 6e-5 and 6-object scenes at weight 4 (--seed 20, --max-minutes 50): it tied stage 17 on the ship rule.
# Stage 19 is that stage with the ViT trained too (stage 17's diagnosis: the misses are small objects,
# which the eyes must see) and its own seed; ended by --max-minutes 45 at step 1,662 (the cosine
# follows the clock, --decay-by-time), on 2 CPU cores.
cpu_stage="--preset shapes-small --steps 5000 --decay-by-time --batch-size 32 --lr 6e-5 --warmup 50
  --mixed-precision bf16 --num-workers 1 --threads 2 --min-turns 4 --vqa-data data/easy-vqa-train --vqa-weight 0.25
  --more-variety --phrasing-v2 0.25 --object-weights 4=1.5 5=3 6=4
  --family-weights where=1 relation=3 count=6 query_size=0.75 describe=4 --answer-balanced --answer-length-power 0.5
  --eval-images 60 --eval-every 100000 --save-every 100000 --log-every 50"
python -m mmchat train --out runs/stage19 --init-from runs/gpu/final --seed 21 --max-minutes 45 $cpu_stage
# Stage 20 (not shipped) tried --small-sides 0.5 --small-objects 0.65 on top of stage 19's settings.
# Stage 21 is stage 19's settings once more, from stage 19, with its own seed; ended by
# --max-minutes 40 at step 1,255.
python -m mmchat train --out runs/stage21 --init-from runs/stage19/final --seed 23 --max-minutes 40 $cpu_stage
# Stage 22 (not shipped) was the same once more from stage 21 (--seed 25, --max-minutes 40): it
# failed its selection rule (96 px count 96.09 %, 292 of 300 descriptions; see the card).
# Stage 23 (not shipped) was the same from stage 21 with a fifth of the scenes at exactly the ViT's
# 96 px (--seed 27 --max-minutes 45 --native-sides 0.2): it failed its rule (independent renderer's
# 96 px count 95.31 %; see the card).
# Stage 24 (not shipped) was stage 21's settings from stage 21 with twice the learning rate
# (--seed 29 --max-minutes 30 --lr 1.2e-4): it failed the same rule (96 px count 96.09 %).
# Stage 25 (not shipped) was stage 21's settings from models/mmchat-shapes (its processor softens
# scenes drawn at 96 px, in training too) with --seed 31 --max-minutes 50 --native-sides 0.2 and
# count=10 in --family-weights: it failed its rule (pooled count selection sets no better; 290 of 300
# descriptions exact; see the card).
# The gate's second version (16 features, clip art among its training sources; the model card says
# why), trained afresh rather than copied. With today's code the train-gate line near the top trains
# this version's features too; the first version's came from the code of its time.
python -m mmchat train-gate --model runs/stage21/final --seed 2 --in-world 3000 --out-of-world 3000 --max-false-declines 0.002
# The second look (second_look.json; mmchat/serving/second_look.py): an answer of a v1 family whose
# first token the model picks with a probability under 0.99 is chosen again over four views of the
# picture shifted by 4 of its 96 px. No training: chosen on diagnostic sets, then held to rules on
# selection sets (see the card).
python -c "from mmchat.serving.second_look import SecondLook
SecondLook(('count', 'exist', 'query_color', 'query_shape', 'query_size', 'relation', 'compare'), 0.99, 4).save('runs/stage21/final')"
