"""Tests of the index choice under a memory budget: memory sizes, factory memory estimates, the chosen type."""

from __future__ import annotations

import pytest

from clipbert.retrieval.index_choice import choose_index, estimate_memory, parse_memory

GIB = 2**30


@pytest.mark.parametrize("n, dim, budget, expected", [
    (5_000, 256, GIB, "Flat"),
    (1_000_000, 256, 2 * GIB, "HNSW32"),
    (1_000_000, 256, 1_050_000_000, "IVF4096,Flat"),  # HNSW8 needs 1.088e9; the raw vectors 1.024e9
    (1_000_000, 256, 500_000_000, "OPQ128_256,IVF4096,PQ128"),
    (1_000_000, 256, 64_000_000, "OPQ48_240,IVF4096,PQ48"),  # PQ64 needs 76.8e6
    (20_000_000, 256, 50 * GIB, "IVF16384,Flat"),  # too many vectors for HNSW
])
def test_choose_index(n, dim, budget, expected):
    assert choose_index(n, dim, budget) == expected
    assert estimate_memory(expected, n, dim) <= budget


def test_choose_index_fits_nothing_names_numbers():
    with pytest.raises(ValueError, match=r"1,000,000 vectors x 256 dims fits in 1,000,000 bytes.*PQ4.*needs"):
        choose_index(1_000_000, 256, 1_000_000)


def test_every_choice_respects_the_budget():
    for n in (100, 20_000, 300_000, 5_000_000):
        for budget in (2**k for k in range(20, 36, 3)):
            try:
                factory = choose_index(n, 128, budget)
            except ValueError:
                continue
            assert estimate_memory(factory, n, 128) <= budget, (n, budget, factory)


@pytest.mark.parametrize("text, expected", [("4G", 4 * GIB), ("512M", 512 * 2**20), ("1.5K", 1536), ("123", 123),
                                            ("2g", 2 * GIB), ("1T", 2**40), ("3GiB", 3 * GIB), (77, 77)])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["", "G", "4X", "four", "-1G", "1..5G"])
def test_parse_memory_rejects(bad):
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.")):
        parse_memory(bad)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF1024,Flat", "OPQ32_256,IVF1024,PQ32", "IVF256,PQ16x4"])
def test_estimate_memory_grows_with_vectors(factory):
    sizes = [estimate_memory(factory, n, 256) for n in (10_000, 100_000, 1_000_000, 10_000_000)]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_estimate_memory_orders_types():
    n, d = 1_000_000, 256
    est = {f: estimate_memory(f, n, d) for f in ("Flat", "HNSW8", "HNSW32", "IVF4096,Flat",
                                                 "OPQ64_256,IVF4096,PQ64", "OPQ8_256,IVF4096,PQ8")}
    assert est["Flat"] == 4 * d * n
    assert est["HNSW32"] == (4 * d + 8 * 32) * n
    assert est["OPQ8_256,IVF4096,PQ8"] < est["OPQ64_256,IVF4096,PQ64"] < est["Flat"] < est["IVF4096,Flat"]
    assert est["IVF4096,Flat"] < est["HNSW8"] < est["HNSW32"]
