"""Tests of the sharded build on Ray (pipelines/index.py): the same index as a single-process build."""

from __future__ import annotations

import faiss
import numpy as np
from index_data import synthetic_videos, write_emb

from clipbert.retrieval import embeddings as ve
from clipbert.retrieval.index import VideoIndex
from clipbert.retrieval.index_build import build_index, train_empty_index
from clipbert.retrieval.index_tuning import make_queries


def test_sharded_build_equals_single_process(tmp_path, ray_local):
    from pipelines.index import add_sharded, sharded_add

    emb = write_emb(tmp_path / "emb", synthetic_videos(700, seed=2), failed=("bad",), shards=3)
    factory = "OPQ4,IVF8,PQ4x4"
    gallery = ve.open_gallery(emb, "video")
    sharded, ids = add_sharded(train_empty_index(gallery, factory, seed=3), gallery, 2), gallery.ids()
    vectors, single_ids = ve.load_embeddings(emb, "video")
    single = build_index(vectors, factory, seed=3)
    assert ids.equals(single_ids) and sharded.ntotal == single.ntotal == 700

    queries = make_queries(vectors[:50], seed=4)
    for index in (sharded, single):
        faiss.extract_index_ivf(index).nprobe = 4
    d_sharded, i_sharded = sharded.search(queries, 10)
    d_single, i_single = single.search(queries, 10)
    np.testing.assert_allclose(d_sharded, d_single, rtol=1e-6)
    assert (i_sharded == i_single).mean() > 0.99  # only equal-score hits may swap

    built = VideoIndex.build(emb, tmp_path / "index", granularity="video", memory_budget="1G", factory=factory,
                             seed=3, add_fn=sharded_add(2))
    assert built.info["sharded"] and built.index.ntotal == 700
    loaded = VideoIndex.load(tmp_path / "index").index
    faiss.extract_index_ivf(loaded).nprobe = 4
    np.testing.assert_allclose(loaded.search(queries, 10)[0], d_single, rtol=1e-6)  # same seed: same index
