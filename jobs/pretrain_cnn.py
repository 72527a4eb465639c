"""Pretrain the CNN for model.init_checkpoint: on event labels of a synthesized corpus, or on image captions.

--objective attributes (default; clipbert.training.cnn_pretrain): classify each event's colour, shape and direction, a
labelled stand-in for ImageNet. Usage (a corpus of its own seed, so none of its videos is in the retrieval splits):
    python jobs/synthesize.py --output data/pretrain --seed 1 --splits 400,50,0
    python jobs/preprocess.py --videos data/pretrain/videos --output data/pretrain/frames
    python jobs/pretrain_cnn.py --corpus data/pretrain --output data/cnn_pretrained --minutes 2
    python jobs/train.py --config synthetic_tiny --set data.root=data/synthetic \
        --set model.init_checkpoint=$PWD/data/cnn_pretrained

--objective captions (clipbert.training.caption_cnn): predict the words of each image's captions, captions only, on the
caption files and frame store of an image-text pretraining config; then pretrain from it:
    python jobs/pretrain_cnn.py --objective captions --config synthetic_tiny_pretrain --set data.root=data/stills \
        --output data/caption_cnn --minutes 2.5
    python jobs/pretrain.py --config synthetic_tiny_pretrain --set data.root=data/stills \
        --set model.init_checkpoint=$PWD/data/caption_cnn

Writes OUTPUT/model.safetensors (the ResNet trunk and grid encoder, ClipBert key names) and
OUTPUT/pretrain_metrics.json (held-out accuracy per attribute, or word recall and loss, before and after). Exits 2
on bad arguments or data it cannot read.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from clipbert.training.caption_cnn import pretrain_cnn_on_captions
from clipbert.training.cnn_pretrain import pretrain_cnn
from clipbert.config import load_config
from clipbert.exit_codes import job_main
from clipbert.logs import setup_logging

logger = logging.getLogger("pretrain_cnn")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", choices=("attributes", "captions"), default="attributes",
                   help="event labels of --corpus, or the caption words of the config's image-text data")
    p.add_argument("--corpus", default=None, help="attributes: synthesized corpus directory (with corpus.json)")
    p.add_argument("--frames", default=None, help="its frame store (default: CORPUS/frames)")
    p.add_argument("--output", required=True, help="directory for the pretrained CNN weights")
    p.add_argument("--config", default="synthetic_tiny",
                   help="preset or YAML whose model section is pretrained (captions: also its data section)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--minutes", type=float, default=2.0, help="training wall time")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps instead (0: use --minutes)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p.parse_args(argv)


@job_main(logger, "CNN pretraining")
def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    if args.objective == "captions":
        return _captions(args)
    if args.corpus is None:
        raise ValueError("--objective attributes needs --corpus")
    corpus = Path(args.corpus)
    frames = Path(args.frames) if args.frames else corpus / "frames"
    for path, what in ((corpus / "corpus.json", "corpus.json"), (frames, "frame store")):
        if not path.exists():
            raise FileNotFoundError(f"no {what} at {path}")
    cfg = load_config(args.config, args.set)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    pretrain_cnn(cfg.model, corpus, frames, args.output, minutes=args.minutes, max_steps=args.max_steps,
                 batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    return 0


def _captions(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    if cfg.data.task != "pretrain":
        raise ValueError(f"--objective captions needs an image-text pretraining config (data.task pretrain), "
                         f"{args.config} has {cfg.data.task!r}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    pretrain_cnn_on_captions(cfg, args.output, minutes=args.minutes, max_steps=args.max_steps,
                             batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
