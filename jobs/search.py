"""Search an index with text queries (FAISS recall, cross-encoder re-rank), or evaluate search on held-out captions.

Usage:
    python jobs/search.py --index data/index --query "a red circle moves left, then a blue square moves up"
    python jobs/search.py --index data/index --query "..." --query "..." --k 10 --rerank 32
    python jobs/search.py --index data/index --eval data/synth/txt/retrieval_test.jsonl --json search_eval.json
    python jobs/search.py --index data/index --query "..." --query "..." --k 5 --html contact_sheet.html

The model, tokenizer and frame store default to those the index was built from (index.json); --checkpoint,
--tokenizer and --frame-store override them. --eval prints dual-encoder, two-stage (each --depths) and all-pairs
cross-encoder retrieval side by side: R@1/5/10, median rank, cross-encoder pair passes, seconds. --html writes the
queries' hits as one self-contained results page (each hit's frame strip inlined), to look at without a server.
Exit codes: 0 done, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import TYPE_CHECKING

from clipbert.exit_codes import job_main
from clipbert.logs import setup_logging

if TYPE_CHECKING:
    from clipbert.retrieval.search import Hit, Searcher

logger = logging.getLogger("search")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="index directory (jobs/build_index.py --output)")
    p.add_argument("--query", action="append", default=[], help="query text (repeatable)")
    p.add_argument("--k", type=int, default=10, help="hits per query (clamped to the gallery)")
    p.add_argument("--rerank", type=int, default=32, help="candidates re-ranked by the cross-encoder (0: none)")
    p.add_argument("--aggregate", choices=("max", "mean", "lse"), default="max", help="clip aggregation (clips index)")
    p.add_argument("--eval", default=None, help="retrieval annotations (jsonl): run the evaluation protocol")
    p.add_argument("--depths", default="4,8,16,32,64,128", help="re-rank depths of --eval")
    p.add_argument("--no-all-pairs", action="store_true", help="--eval without the all-pairs cross-encoder row")
    p.add_argument("--json", default=None, help="write the --eval rows (or the hits) to this JSON file")
    p.add_argument("--html", default=None, help="write the hits of the queries as a self-contained HTML page")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the index's)")
    p.add_argument("--frame-store", default=None, help="frame store (default: the index's)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    return p.parse_args(argv)


def _print_rows(rows: list[dict]) -> None:
    from clipbert.retrieval.search_eval import ROW_KEYS

    print("  ".join(f"{k:>24}" if k == "method" else f"{k:>12}" for k in ROW_KEYS))
    for r in rows:
        print("  ".join(f"{r[k]:>24}" if k == "method" else f"{r[k]:>12.4g}" if isinstance(r[k], float)
                        else f"{r[k]:>12}" for k in ROW_KEYS))


def _print_hits(query: str, hits: list) -> None:
    print(f"\n{query}")
    for h in hits:
        rerank = f"{h.rerank_score:.4f}" if h.rerank_score is not None else "-"
        print(f"  {h.rank:>3}  {h.video_id:<40}  dual {h.dual_score:+.4f}  cross {rerank}")


def _write_html(path: str, searcher: Searcher, queries: list[str], results: list[list[Hit]], index: str) -> None:
    from clipbert.retrieval.results_page import contact_sheet

    note = f"index {index}: {searcher.gallery_size} videos, checkpoint {searcher.checkpoint_hash}"
    with open(path, "w") as f:
        f.write(contact_sheet(searcher, queries, results, note=note))
    print(f"\ncontact sheet: {path}")


@job_main(logger, "search")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from clipbert.retrieval.search import Searcher
    from clipbert.retrieval.search_eval import evaluate_search

    if not args.query and not args.eval:
        raise ValueError("give --query TEXT (repeatable) or --eval ANNOTATIONS.jsonl")
    if args.html and not args.query:
        raise ValueError("--html writes the hits of --query TEXT (repeatable)")
    searcher = Searcher(args.index, checkpoint=args.checkpoint, frame_store=args.frame_store,
                        tokenizer=args.tokenizer, device=args.device)
    if args.eval:
        depths = [int(d) for d in args.depths.split(",") if d.strip()]
        out = evaluate_search(searcher, args.eval, depths=depths, all_pairs=not args.no_all_pairs)
        _print_rows(out)
    else:
        results = searcher.search(args.query, k=args.k, rerank=args.rerank, aggregate=args.aggregate)
        for query, hits in zip(args.query, results):
            _print_hits(query, hits)
        out = [{"query": q, "hits": [dataclasses.asdict(h) for h in hits]} for q, hits in zip(args.query, results)]
        if args.html:
            _write_html(args.html, searcher, args.query, results, args.index)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
