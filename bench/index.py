"""Benchmark: the index chosen under a memory budget against exact search (IndexFlatIP) on clustered vectors.

Generates ``--vectors`` L2-normalised vectors of ``--dim`` dims around ``--centres`` random cluster centres
(seeded) that span a ``--centre-dim``-dimensional subspace, each cluster spread along its own
``--intrinsic-dim``-dimensional subspace plus a little isotropic noise: learned embeddings fill a narrow,
low-dimensional part of their space. ``--centre-dim 0`` puts the centres in every direction (nearly orthogonal,
well-separated clusters, which strand HNSW's greedy search) and ``--intrinsic-dim 0`` spreads each cluster over
all dims (no neighbour structure within a cluster): both are far harder than embeddings. ``--queries``
evaluation queries and as many tuning queries are drawn the same way, not from the base set.

Chooses the index with ``clipbert.retrieval.index_choice.choose_index`` under ``--budget``, builds it (train + add), tunes its
search parameter to recall@10 >= ``--target-recall`` on the tuning queries, then measures on the evaluation
queries, side by side with exact search: build seconds, memory (estimate, serialized size, RSS growth during the
build), queries/s over one batch, single-query latency and recall@10.

Usage:
    python bench/index.py --output bench_results                     # 1,000,000 x 256, 2G budget
    python bench/index.py --output /tmp/smoke --vectors 20000 --queries 200   # a quick smoke run
    python bench/index.py --output bench_results --centre-dim 0 --intrinsic-dim 0 --noise 0   # isotropic, separated
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from common import print_table, write_json  # noqa: E402

from clipbert.retrieval.index_build import build_index  # noqa: E402
from clipbert.retrieval.index_choice import choose_index, estimate_memory, parse_memory  # noqa: E402
from clipbert.retrieval.index_tuning import recall_of, tune_search  # noqa: E402

logger = logging.getLogger(__name__)

K = 10
CHUNK = 8_192  # vectors generated at a time


def cluster_centres(n_centres: int, dim: int, centre_dim: int, rng: np.random.Generator) -> np.ndarray:
    """Unit cluster centres, float32 (C, d): random in a `centre_dim`-dimensional subspace (all d dims when 0)."""
    if 0 < centre_dim < dim:
        basis = rng.standard_normal((centre_dim, dim)) / np.sqrt(dim)  # (c, d)
        centres = rng.standard_normal((n_centres, centre_dim)) @ basis  # (C, d)
    else:
        centres = rng.standard_normal((n_centres, dim))
    return (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)


def cluster_bases(n_centres: int, dim: int, intrinsic: int, seed: int) -> np.ndarray | None:
    """Per-centre random bases of the subspace its points spread along: float32 (C, r, d); None = isotropic."""
    if intrinsic <= 0 or intrinsic >= dim:
        return None
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_centres, intrinsic, dim)) / np.sqrt(dim)).astype(np.float32)  # rows ~unit norm


def clustered_vectors(n: int, centres: np.ndarray, bases: np.ndarray | None, spread: float, noise: float,
                      seed: int) -> np.ndarray:
    """n unit vectors: a random centre, plus a Gaussian offset of norm ~spread along that centre's r-dimensional
    subspace (isotropic in all d dims when `bases` is None), plus isotropic noise of norm ~noise; float32 (n, d)."""
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        label = rng.integers(0, len(centres), size)  # (size,)
        x = centres[label] + rng.standard_normal((size, dim), np.float32) * np.float32(noise / np.sqrt(dim))
        if bases is None:
            x += rng.standard_normal((size, dim), np.float32) * np.float32(spread / np.sqrt(dim))
        else:
            r = bases.shape[1]
            z = rng.standard_normal((size, r), np.float32) * np.float32(spread / np.sqrt(r))  # (size, r)
            x += np.einsum("sr,srd->sd", z, bases[label])  # (size, d)
        out[start:start + size] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(fn(), seconds, RSS growth in bytes)."""
    rss, start = rss_bytes(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start, rss_bytes() - rss


def serialized_bytes(index: faiss.Index, workdir: Path) -> int:
    """Size of the index as faiss.write_index stores it (written to workdir, then removed)."""
    path = workdir / "bench_index.faiss"
    faiss.write_index(index, str(path))
    size = path.stat().st_size
    path.unlink()
    return size


def measure_search(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, singles: int) -> dict[str, float]:
    """Batch queries/s and recall@K over (Q, d) queries, median single-query latency over `singles` of them."""
    (_, found), seconds, _ = timed(lambda: index.search(queries, K))
    latencies = []
    for query in queries[:singles]:
        start = time.perf_counter()
        index.search(query[None, :], K)
        latencies.append(time.perf_counter() - start)
    return {"qps": len(queries) / seconds, "latency_ms_p50": 1000 * float(np.median(latencies)),
            "recall_at_10": recall_of(found, truth)}


def build_exact(base: np.ndarray, queries: np.ndarray, tune_queries: np.ndarray, workdir: Path,
                singles: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The exact baseline: its figures, and the true top-K of the evaluation and tuning queries (Q, K) each."""
    def make() -> faiss.Index:
        flat = faiss.IndexFlatIP(base.shape[1])
        flat.add(base)
        return flat

    flat, seconds, rss = timed(make)
    truth, tune_truth = flat.search(queries, K)[1], flat.search(tune_queries, K)[1]
    row = {"index": "Flat (exact)", "build_s": seconds, "estimate_bytes": estimate_memory("Flat", *base.shape),
           "serialized_bytes": serialized_bytes(flat, workdir), "rss_growth_bytes": rss, "parameter": "-",
           **measure_search(flat, queries, truth, singles)}
    return row, truth, tune_truth


def build_chosen(base: np.ndarray, factory: str, queries: np.ndarray, truth: np.ndarray, tune_queries: np.ndarray,
                 tune_truth: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Build the chosen index, tune it on the tuning queries, measure it on the evaluation queries."""
    index, seconds, rss = timed(lambda: build_index(base, factory, seed=args.seed))
    print(f"built {factory} in {seconds:.1f} s", flush=True)
    tuned, tune_s, _ = timed(lambda: tune_search(index, None, tune_queries, K, args.target_recall,
                                                    truth=tune_truth))
    print(f"tuned in {tune_s:.1f} s: {tuned}", flush=True)
    parameter = f"{tuned['parameter']}={tuned['value']}" if tuned["parameter"] else "-"
    return {"index": factory, "build_s": seconds, "estimate_bytes": estimate_memory(factory, *base.shape),
            "serialized_bytes": serialized_bytes(index, Path(args.workdir)), "rss_growth_bytes": rss,
            "parameter": parameter, "tune_s": tune_s, "tune_recall": tuned["recall"],
            **measure_search(index, queries, truth, args.singles)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="bench_results", help="where index.json goes")
    p.add_argument("--workdir", default="bench_work/index", help="scratch space for the serialized indexes")
    p.add_argument("--vectors", type=int, default=1_000_000, help="base vectors")
    p.add_argument("--dim", type=int, default=256, help="dimension")
    p.add_argument("--centres", type=int, default=2_000, help="Gaussian cluster centres")
    p.add_argument("--centre-dim", type=int, default=32,
                   help="dimensions the cluster centres span (0 or >= --dim: all, i.e. well-separated clusters)")
    p.add_argument("--spread", type=float, default=0.6, help="offset norm around a centre (before normalising)")
    p.add_argument("--intrinsic-dim", type=int, default=16,
                   help="dimensions each cluster spreads along (0 or >= --dim: isotropic, the hardest case)")
    p.add_argument("--noise", type=float, default=0.1, help="isotropic noise norm on top (before normalising)")
    p.add_argument("--budget", default="2G", help="memory budget of the index choice")
    p.add_argument("--queries", type=int, default=1_000, help="evaluation queries (as many again for tuning)")
    p.add_argument("--singles", type=int, default=100, help="queries timed one at a time")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall@10 the tuning aims at")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    centres = cluster_centres(args.centres, args.dim, args.centre_dim, rng)
    bases = cluster_bases(args.centres, args.dim, args.intrinsic_dim, args.seed + 4)

    def draw(n: int, seed: int) -> np.ndarray:
        return clustered_vectors(n, centres, bases, args.spread, args.noise, seed)

    (base, gen_s, _) = timed(lambda: draw(args.vectors, args.seed + 1))
    queries, tune_queries = draw(args.queries, args.seed + 2), draw(args.queries, args.seed + 3)
    budget = parse_memory(args.budget)
    factory = choose_index(args.vectors, args.dim, budget)
    print(f"generated {args.vectors:,} x {args.dim} in {gen_s:.1f} s; chose {factory} under {args.budget} "
          f"({faiss.omp_get_max_threads()} faiss threads)", flush=True)

    exact, truth, tune_truth = build_exact(base, queries, tune_queries, Path(args.workdir), max(1, args.singles // 4))
    chosen = build_chosen(base, factory, queries, truth, tune_queries, tune_truth, args)
    rows = [chosen, exact]
    mb = 2**20
    print_table(f"index vs exact search: {args.vectors:,} x {args.dim}, budget {args.budget}, "
                f"{args.queries} queries, k={K}",
                ["index", "param", "build s", "est MB", "file MB", "RSS+ MB", "QPS", "1-query ms", "recall@10"],
                [[r["index"], r["parameter"], r["build_s"], r["estimate_bytes"] / mb, r["serialized_bytes"] / mb,
                  r["rss_growth_bytes"] / mb, r["qps"], r["latency_ms_p50"], r["recall_at_10"]] for r in rows])
    write_json(args.output, "index", {"args": vars(args), "factory": factory, "budget_bytes": budget,
                                      "faiss": faiss.__version__, "threads": faiss.omp_get_max_threads(),
                                      "results": rows})


if __name__ == "__main__":
    main()
