"""Serve text-to-video search over HTTP with Ray Serve: a JSON API, the stored frames and a results page.

Usage:
    python jobs/serve.py --index data/synth/index                  # then open http://127.0.0.1:8000/
    python jobs/serve.py --index data/synth/index --port 8080 --replicas 2 --num-cpus 0.5 --rerank 10
    ray job submit --working-dir . -- python jobs/serve.py --index /shared/msrvtt/index --replicas 4 --num-cpus 2

    curl 'http://127.0.0.1:8000/search?q=a+red+circle+moves+left&k=5&rerank=5'
    curl -o f.jpg 'http://127.0.0.1:8000/frames/VIDEO_ID/0.jpg'

Listens on 127.0.0.1 unless --host says otherwise; the model, tokenizer and frame store default to those the index
was built from (index.json), as in jobs/search.py. Runs until interrupted (Ctrl-C or SIGTERM), then removes the
application (and stops the local Ray it started). Routes and validation: clipbert/retrieval/service.py.
Exit codes: 0 stopped, 1 the service failed to start, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from clipbert.exit_codes import job_main
from clipbert.logs import setup_logging

logger = logging.getLogger("serve")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="index directory (jobs/build_index.py --output)")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the index's)")
    p.add_argument("--frame-store", default=None, help="frame store (default: the index's)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the checkpoint's)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--replicas", type=int, default=1, help="service replicas (each loads the model and index)")
    p.add_argument("--num-cpus", type=float, default=0.5, help="CPUs reserved per replica (fractions allowed)")
    p.add_argument("--rerank", type=int, default=10, help="default re-rank depth of a request that gives none")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument("--ray-cpus", type=int, default=None, help="CPUs of a local Ray (default: all)")
    return p.parse_args(argv)


@job_main(logger, "starting the service")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    if not os.path.exists(os.path.join(args.index, "index.json")):
        raise FileNotFoundError(f"no index at {args.index} (no index.json): build one with jobs/build_index.py")
    if args.replicas < 1 or args.num_cpus <= 0:
        raise ValueError(f"--replicas must be >= 1 and --num-cpus > 0, got {args.replicas} and {args.num_cpus:g}")
    import ray
    from ray import serve

    from clipbert.ray_init import init_ray
    from clipbert.retrieval.service import build_app

    local = init_ray(args.address, args.ray_cpus, log_to_driver=False, include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app(args.index, checkpoint=args.checkpoint, frame_store=args.frame_store, tokenizer=args.tokenizer,
                    rerank=args.rerank, replicas=args.replicas, num_cpus=args.num_cpus)
    serve.run(app, name="clipbert_search", route_prefix="/")
    print(f"serving {args.index} on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    if local:
        ray.shutdown()  # the local Ray and Serve with it
    else:
        serve.delete("clipbert_search")
    return 0


if __name__ == "__main__":
    sys.exit(main())
