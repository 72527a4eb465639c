"""Image-text pretraining (MLM + ITM on image captions, the original's ClipBertForPreTraining) on Ray Train.

Usage:
    python jobs/synthesize.py --output data/stills --images 3000 --val-images 100 --seed 7
    python jobs/preprocess.py --videos data/stills/images --output data/stills/frames
    python jobs/pretrain.py --config synthetic_tiny_pretrain --set data.root=data/stills --name stills
    python jobs/train.py --config synthetic_tiny --set data.root=data/synthetic \
        --set model.init_checkpoint=$PWD/runs/stills/best
    ray job submit --working-dir . -- python jobs/pretrain.py --config pretrain --set data.root=/shared/coco \
        --num-workers 8 --gpu --storage-path s3://bucket/runs --name coco_pretrain

Images are 1-frame videos of a frame store (jobs/preprocess.py stores JPEG and PNG stills); captions are the
original's jsonl ({"coco_id" | "vg_id", "caption"}). The same machinery as jobs/train.py (same options, resume,
checkpoints, TensorBoard, exit codes): every evaluation reports ITM and MLM accuracy on the held-out captions, and
the checkpoint chosen on validation (train.metric, mlm_acc by default) is exported to STORAGE/NAME/best/, whose
weights (CNN, transformer) initialise finetuning through model.init_checkpoint. Exits 2 when the config is not a
pretraining one (data.task=pretrain).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train.py beside this file

import train as train_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return train_job.main(argv, task="pretrain")


if __name__ == "__main__":
    sys.exit(main())
