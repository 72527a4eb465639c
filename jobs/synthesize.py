"""Write a synthetic two-event moving-shape video corpus with ClipBERT-format annotations, or (--images) a corpus of
captioned stills of the same world for image-text pretraining.

Usage:
    python jobs/synthesize.py --output data/synthetic --videos 500 --seed 0
    python jobs/synthesize.py --output data/synthetic --videos 600 --seed 0 --splits 400,100,100 --workers 2
    python jobs/synthesize.py --output data/mixed --videos 100 --seed 1 --mixed-formats   # + GIF and VP9 webm
    ray job submit --working-dir . -- python jobs/synthesize.py --output /shared/synthetic --videos 500
    python jobs/synthesize.py --output data/stills --images 3000 --val-images 100 --seed 7   # image-caption corpus

Writes DIR/videos/<video_id>.<mp4|webm|gif>, DIR/txt/{retrieval,mc,qa}_{train,val,test}.jsonl,
DIR/txt/qa_ans2label.json, DIR/txt/vocab_words.txt and DIR/corpus.json. The same arguments give the same
bytes (whatever --workers). With --images: DIR/images/<image_id>.<jpg|png>, DIR/txt/pretrain_{train,val}.jsonl
(COCO caption format: {"coco_id", "caption"}, several captions per image) and the same tokenizer as the videos'
(clipbert/synthetic/stills.py). Exits 2 on bad arguments or an existing corpus without --overwrite.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from clipbert.exit_codes import job_main
from clipbert.logs import setup_logging
from clipbert.synthetic.corpus import synthesize_corpus

logger = logging.getLogger("synthesize")


def _pairs(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="corpus directory")
    p.add_argument("--videos", type=int, default=None, help="videos in all splits (default: sum of --splits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-formats", action="store_true", help="~15%% GIF and ~15%% VP9 webm besides H.264 mp4")
    p.add_argument("--splits", type=_ints, default=None, help="TRAIN,VAL,TEST video counts")
    p.add_argument("--val-videos", type=int, default=None)
    p.add_argument("--test-videos", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--min-duration", type=float, default=2.0, help="seconds")
    p.add_argument("--max-duration", type=float, default=12.0, help="seconds")
    p.add_argument("--sizes", type=_pairs, default=None, help="WxH,WxH,... (even numbers)")
    p.add_argument("--fps", type=_ints, default=None, help="frame-rate choices, e.g. 10,15,24,25,30")
    p.add_argument("--qa-per-video", type=int, default=3, help="open-ended questions per video (1..6)")
    p.add_argument("--mc-changes", type=_ints, default=[1, 6], help="MIN,MAX attributes changed per MC distractor")
    p.add_argument("--paraphrases", action="store_true", help="a second, paraphrased caption per train video")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="encoding processes (default: CPUs, at most 4; the output does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace a corpus already in --output")
    p.add_argument("--images", type=int, default=None, help="write this many captioned stills instead of videos")
    p.add_argument("--val-images", type=int, default=100, help="of --images, held out for validation")
    p.add_argument("--captions-per-image", type=int, default=5)
    return p.parse_args(argv)


def _split_counts(args: argparse.Namespace) -> tuple[int, int | None, int | None]:
    if args.splits is None:
        if args.videos is None:
            raise ValueError("give --videos or --splits")
        return args.videos, args.val_videos, args.test_videos
    if len(args.splits) != 3:
        raise ValueError(f"--splits needs TRAIN,VAL,TEST, got {args.splits}")
    total = sum(args.splits)
    if args.videos is not None and args.videos != total:
        raise ValueError(f"--videos {args.videos} != sum of --splits {total}")
    return total, args.splits[1], args.splits[2]


def images_main(args: argparse.Namespace) -> int:
    from clipbert.synthetic.stills import synthesize_images

    specs = synthesize_images(args.output, n_images=args.images, val_images=args.val_images, seed=args.seed,
                              captions_per_image=args.captions_per_image, overwrite=args.overwrite)
    captions = sum(len(s.captions) for s in specs)
    print(f"images: {len(specs)} (train {len(specs) - args.val_images}, val {args.val_images}); {captions} captions")
    print(f"wrote {args.output}")
    return 0


@job_main(logger, "synthesis")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    if args.images is not None:
        return images_main(args)
    n_videos, val_videos, test_videos = _split_counts(args)
    info = synthesize_corpus(
        args.output, n_videos=n_videos, seed=args.seed, mixed_formats=args.mixed_formats,
        val_videos=val_videos, test_videos=test_videos, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, min_duration=args.min_duration, max_duration=args.max_duration,
        sizes=args.sizes, fps_choices=args.fps, qa_per_video=args.qa_per_video,
        mc_changes=tuple(args.mc_changes), paraphrases=args.paraphrases, workers=args.workers,
        overwrite=args.overwrite)
    formats: dict[str, int] = {}
    for v in info.videos:
        formats[v.ext] = formats.get(v.ext, 0) + 1
    size_mb = sum(info.video_path(v.video_id).stat().st_size for v in info.videos) / 1e6
    print(f"videos: {len(info.videos)} ({', '.join(f'{s} {len(ids)}' for s, ids in info.splits.items())})")
    print(f"formats: {', '.join(f'{k} {n}' for k, n in sorted(formats.items()))}; {size_mb:.1f} MB")
    print(f"wrote {info.root} in {info.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
