#!/usr/bin/env bash
# The fine-tuning experiment (experiments/finetune/README.md): ResNet-18 pre-trained with reslab on
# CIFAR-10 classes 5-9, then fine-tuned on classes 0-4, against the same network from random weights
# with the same budget, on JPEGs of varied sizes built from CIFAR-10. From the repository root:
#   bash experiments/finetune/run.sh /tmp/ft runs/finetune && python experiments/finetune/table.py runs/finetune
# Each run is one process with one thread (under contention two threads spin-wait: 2 img/s instead of 33).
set -euo pipefail
WORK=${1:-/tmp/ft}             # the generated images (outside the repository)
OUT=${2:-runs/finetune}        # the run folders
TRAIN="nice -n 10 python -m reslab train resnet18 --threads 1 --progress plain --log-interval 10"
mkdir -p "$OUT"

# 7,500 training JPEGs (750 a class, from CIFAR-10's training images) and 1,500 validation JPEGs
# (150 a class, from its test images), upscaled to a shorter side of 128-640 px.
[ -d "$WORK/photos" ] || python benchmarks/make_image_folder.py --images 7500 --out "$WORK/photos" --seed 0 --workers 2
# Two folders of five classes each, as links into it: pre (dog frog horse ship truck), fine (the rest).
for split in train val; do
    mkdir -p "$WORK/pre/$split" "$WORK/fine/$split"
    for c in dog frog horse ship truck; do ln -sfn "$WORK/photos/$split/$c" "$WORK/pre/$split/$c"; done
    for c in airplane automobile bird cat deer; do ln -sfn "$WORK/photos/$split/$c" "$WORK/fine/$split/$c"; done
done

# The checkpoints: 3 and 10 epochs on the 3,750 images of classes 5-9, 32x32 crops, evaluated on
# 500 of their validation images (folders pretrain and pretrain10).
for epochs in 3 10; do
    name=pretrain$([ $epochs = 3 ] || echo $epochs)
    $TRAIN --recipe imagenet --schedule cosine --warmup 0.1 --epochs $epochs --batch-size 64 --image-size 32 \
        --eval-interval 0 --eval-subset 500 --data "$WORK/pre" --out "$OUT/$name" > "$OUT/$name.log" 2>&1
done

# Classes 0-4: 500 training images (100 a class), 6 epochs of batch 32 with the finetune recipe
# (cosine, warm-up, label smoothing), evaluated on 500 validation images (100 a class); at 64 px
# (folders without a suffix) and at 32 px, the pre-training's size (suffix 32).
for size in 64 32; do
    suffix=$([ $size = 64 ] || echo $size)
    SMALL="--epochs 6 --batch-size 32 --train-subset 500 --image-size $size --eval-interval 3 --eval-subset 500 --data $WORK/fine"
    run() { name=$1; shift; $TRAIN --recipe finetune "$@" $SMALL --out "$OUT/$name" > "$OUT/$name.log" 2>&1; }
    run scratch$suffix --lr 0.05                                                  # random weights, 5x the rate
    run finetune$suffix --init "$OUT/pretrain"
    run probe$suffix --init "$OUT/pretrain" --freeze-backbone --lr 0.1           # linear probe
    run finetune${size}_p10 --init "$OUT/pretrain10"
    [ $size = 64 ] || run probe${size}_p10 --init "$OUT/pretrain10" --freeze-backbone --lr 0.1
done
# The same rate for both starts (32 px): fine-tuned at scratch's 5x, and random weights at the recipe's own.
SMALL="--epochs 6 --batch-size 32 --train-subset 500 --image-size 32 --eval-interval 3 --eval-subset 500 --data $WORK/fine"
$TRAIN --recipe finetune --init "$OUT/pretrain10" --lr 0.05 $SMALL --out "$OUT/finetune32_p10_lr5x" > "$OUT/finetune32_p10_lr5x.log" 2>&1
$TRAIN --recipe finetune $SMALL --out "$OUT/scratch32_lr1x" > "$OUT/scratch32_lr1x.log" 2>&1
SMALL="${SMALL/--image-size 32/--image-size 64}"
$TRAIN --recipe finetune --init "$OUT/pretrain10" --lr 0.05 $SMALL --out "$OUT/finetune64_p10_lr5x" > "$OUT/finetune64_p10_lr5x.log" 2>&1
