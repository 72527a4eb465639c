"""Benchmark: the search service (jobs/serve.py) under a bounded load on loopback.

Starts ``jobs/serve.py`` on a free 127.0.0.1 port, then for each re-rank depth (0: dual encoder only, and
``--rerank``) and each concurrency (``--concurrency``, default 1, 4, 16) sends the same fixed number of
``GET /search`` requests (``--queries``, captions of the corpus, k = 10) from that many client threads, each on
its own keep-alive connection, after a few warm-up requests. Reports p50 / p95 latency, queries/s, failed
requests (any non-200 answer or error) and the mean size of the text-encoding batches (``@serve.batch``).

Without ``--index`` it makes its own: a synthetic corpus (``--videos``, stored at 160 px), a randomly initialised
``synthetic_tiny`` model (search cost does not depend on the weights), and ``jobs/build_index.py`` over every video.

Usage:
    python bench/serve.py --output bench_results                          # its own 200-video index
    python bench/serve.py --output bench_results --index demo_run/index   # the index `make demo` built
    python bench/serve.py --output bench_results --queries 64 --concurrency 1,4,16 --replicas 2 --num-cpus 1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(REPO))

from common import corpus, print_table, write_json  # noqa: E402

ENV = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}


def _run(cmd: list[str], log: Path) -> None:
    print(f"$ {' '.join(cmd[1:])}\n  log: {log}", flush=True)
    with open(log, "w") as out:
        if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=ENV).returncode != 0:
            raise SystemExit(f"{cmd[1]} failed; see {log}")


def own_index(workdir: Path, n_videos: int, logs: Path) -> Path:
    """A corpus, its frame store, a random synthetic_tiny checkpoint and an index over every video (cached)."""
    from clipbert.model.checkpoint import build_model, save_checkpoint
    from clipbert.config import load_config

    root = corpus(workdir, n_videos, seed=0)
    if not (root / "frames" / "manifest.parquet").exists():
        _run([sys.executable, "jobs/preprocess.py", "--videos", str(root / "videos"), "--output",
              str(root / "frames"), "--max-side", "160"], logs / "serve_preprocess.log")
    checkpoint, index = workdir / f"random_ckpt_{n_videos}", workdir / f"index_{n_videos}"
    if not (checkpoint / "config.json").exists():
        cfg = load_config("synthetic_tiny", [f"data.root={root}"])
        save_checkpoint(build_model(cfg.model)[0], cfg, checkpoint)
    if not (index / "index.json").exists():
        _run([sys.executable, "jobs/build_index.py", "--checkpoint", str(checkpoint), "--frame-store",
              str(root / "frames"), "--output", str(index)], logs / "serve_build_index.log")
    return index


def queries_of(index: Path, n: int) -> list[str]:
    """`n` captions of the index's videos (from the corpus beside its frame store), cycled when fewer."""
    store = Path(json.loads((index / "index.json").read_text())["provenance"]["frame_store"])
    videos = json.loads((store.parent / "corpus.json").read_text())["videos"]
    return [videos[i % len(videos)]["caption"] for i in range(n)]


class Service:
    """jobs/serve.py in a subprocess, on a free loopback port, until `stop`."""

    def __init__(self, index: Path, args: argparse.Namespace, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "jobs/serve.py", "--index", str(index), "--port", str(self.port),
               "--replicas", str(args.replicas), "--num-cpus", str(args.num_cpus)]
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=ENV)
        t0 = time.time()
        while "serving " not in log.read_text():
            if self.proc.poll() is not None or time.time() - t0 > 300:
                self.stop()
                raise SystemExit(f"jobs/serve.py did not start; see {log}")
            time.sleep(0.5)
        self.start_s = time.time() - t0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_request(conn: http.client.HTTPConnection, path: str) -> tuple[float, dict[str, Any] | None]:
    """(seconds, the JSON answer or None when it failed) of one GET."""
    t0 = time.perf_counter()
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        out = json.loads(body) if resp.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        conn.close()
        out = None
    return time.perf_counter() - t0, out


def load(port: int, queries: list[str], concurrency: int, rerank: int) -> dict[str, Any]:
    """Send every query once from `concurrency` threads (one connection each); latency and throughput figures."""
    paths = [f"/search?{urlencode({'q': q, 'k': 10, 'rerank': rerank})}" for q in queries]
    local = threading.local()

    def send(path: str) -> tuple[float, dict[str, Any] | None]:
        if not hasattr(local, "conn"):
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        return one_request(local.conn, path)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(send, paths))
    wall = time.perf_counter() - t0
    lat = sorted(s for s, _ in answers)
    ok = [a for _, a in answers if a is not None]
    return {"rerank": rerank, "concurrency": concurrency, "requests": len(paths), "failed": len(paths) - len(ok),
            "p50_ms": 1e3 * lat[len(lat) // 2], "p95_ms": 1e3 * lat[min(len(lat) - 1, int(0.95 * len(lat)))],
            "qps": len(paths) / wall, "mean_encode_batch": sum(a["encode_batch"] for a in ok) / max(1, len(ok)),
            "seconds": wall}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="bench_results", help="where serve.json and the logs go")
    p.add_argument("--workdir", default="bench_work/serve", help="corpus, model and index (reused between runs)")
    p.add_argument("--index", default=None, help="an existing index (default: build one under --workdir)")
    p.add_argument("--videos", type=int, default=200, help="videos of the index built without --index")
    p.add_argument("--queries", type=int, default=64, help="requests per (re-rank, concurrency) cell")
    p.add_argument("--concurrency", default="1,4,16", help="client threads, comma-separated")
    p.add_argument("--rerank", type=int, default=10, help="the re-rank depth measured besides 0")
    p.add_argument("--replicas", type=int, default=2, help="service replicas")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    index = Path(args.index) if args.index else own_index(Path(args.workdir).resolve(), args.videos, out)
    queries = queries_of(index, args.queries)
    service = Service(index, args, out / "serve_service.log")
    print(f"service up in {service.start_s:.0f} s on port {service.port}", flush=True)
    try:
        for rerank in (0, args.rerank):
            load(service.port, queries[:4], 2, rerank)  # warm-up: model, index and connections
        rows = [load(service.port, queries, c, r) for r in (0, args.rerank)
                for c in (int(v) for v in args.concurrency.split(","))]
    finally:
        service.stop()
    print_table(f"GET /search on loopback, k=10, {args.queries} queries per row, {args.replicas} replica(s) x "
                f"{args.num_cpus:g} CPU", ["re-rank", "concurrency", "requests", "failed", "p50 ms", "p95 ms",
                                           "queries/s", "mean encode batch"],
                [[r["rerank"], r["concurrency"], r["requests"], r["failed"], r["p50_ms"], r["p95_ms"], r["qps"],
                  r["mean_encode_batch"]] for r in rows])
    failed = sum(r["failed"] for r in rows)
    print(f"\nfailed requests: {failed}; load average {os.getloadavg()[0]:.1f}")
    payload = {"index": str(index), "index_info": json.loads((index / "index.json").read_text()),
               "replicas": args.replicas, "num_cpus": args.num_cpus, "service_start_s": service.start_s,
               "rows": rows, "failed": failed, "load_avg": os.getloadavg()}
    write_json(out, "serve", payload)
    return payload


if __name__ == "__main__":
    main()
