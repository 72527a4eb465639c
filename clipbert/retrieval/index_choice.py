"""Which FAISS index fits a memory budget: factory strings, their memory estimates and the choice among them.

The candidates run from exact search (Flat) through HNSW graphs and IVF-Flat to OPQ+IVF+PQ codes; the first
whose estimate fits the budget is chosen.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

FLAT_THRESHOLD = 10_000  # below this many vectors exact search is cheap enough
HNSW_MAX_VECTORS = 10_000_000  # HNSW graphs past this take too long to build
HNSW_MIN_M, HNSW_MAX_M = 8, 32  # links per node
MAX_NLIST = 65_536
PQ_SIZES = (256, 128, 64, 48, 32, 24, 16, 8, 4)  # bytes per PQ code, most accurate first
MIN_POINTS_PER_CENTROID = 39  # fewer training points per k-means centroid and faiss warns

_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_FLAT_RE = re.compile(r"^Flat$")
_HNSW_RE = re.compile(r"^HNSW(\d+)(?:,Flat)?$")
_IVF_RE = re.compile(r"^(?:OPQ(\d+)(?:_(\d+))?,)?IVF(\d+),(?:(Flat)|PQ(\d+)(?:x(\d+))?)$")


def parse_memory(text: str | int) -> int:
    """Bytes of a memory size such as "4G", "512M", "1.5T", "123456" (K/M/G/T are powers of 1024).

    Returns:
        int bytes; ValueError naming the text when it is not a size.
    """
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"memory size {text!r} is negative")
        return int(text)
    match = _MEMORY_RE.match(str(text))
    if not match:
        raise ValueError(f"cannot parse memory size {text!r} (expected e.g. 4G, 512M, 1.5T or bytes)")
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).upper()])


@dataclasses.dataclass(frozen=True)
class IndexSpec:
    """The structure of a factory string, as far as the memory estimate needs it."""

    kind: str  # "flat" | "hnsw" | "ivf_flat" | "ivf_pq"
    hnsw_m: int = 0  # links per HNSW node
    nlist: int = 0  # IVF lists
    pq_m: int = 0  # PQ sub-quantizers
    pq_bits: int = 8  # bits per sub-quantizer code
    opq_dim: int = 0  # output dimension of the OPQ rotation; 0 without OPQ


def parse_factory(factory: str, dim: int) -> IndexSpec:
    """IndexSpec of Flat, HNSW{m}[,Flat], IVF{n},Flat and [OPQ{m}[_{D}],]IVF{n},PQ{m}[x{bits}]."""
    if _FLAT_RE.match(factory):
        return IndexSpec("flat")
    if match := _HNSW_RE.match(factory):
        return IndexSpec("hnsw", hnsw_m=int(match.group(1)))
    if match := _IVF_RE.match(factory):
        opq_m, opq_dim, nlist, flat, pq_m, bits = match.groups()
        if flat:
            return IndexSpec("ivf_flat", nlist=int(nlist))
        rotated = int(opq_dim) if opq_dim else (dim if opq_m else 0)
        return IndexSpec("ivf_pq", nlist=int(nlist), pq_m=int(pq_m), pq_bits=int(bits or 8), opq_dim=rotated)
    raise ValueError(f"no memory model for index factory {factory!r}")


def estimate_memory(factory: str, n_vectors: int, dim: int) -> int:
    """Approximate resident bytes of a filled index.

    Flat 4*d*n; HNSWm (4*d + 8*m)*n; IVF-Flat 4*d*n + 8*n (ids) + centroids; IVF-PQ code bytes + 8 (id) per
    vector + centroids + PQ codebooks + the OPQ matrix.
    """
    spec = parse_factory(factory, dim)
    if spec.kind == "flat":
        return 4 * dim * n_vectors
    if spec.kind == "hnsw":
        return (4 * dim + 8 * spec.hnsw_m) * n_vectors
    if spec.kind == "ivf_flat":
        return (4 * dim + 8) * n_vectors + 4 * dim * spec.nlist
    space = spec.opq_dim or dim  # dimension the IVF and PQ work in
    code_bytes = math.ceil(spec.pq_m * spec.pq_bits / 8)
    tables = 4 * space * spec.nlist + 4 * space * 2**spec.pq_bits + (4 * dim * space if spec.opq_dim else 0)
    return (code_bytes + 8) * n_vectors + tables


def ivf_lists(n_vectors: int) -> int:
    """IVF list count: about 4*sqrt(n) as a power of 2, at most n/39 (trainable) and MAX_NLIST."""
    target = 2 ** round(math.log2(4 * math.sqrt(max(n_vectors, 1))))
    trainable = 2 ** math.floor(math.log2(max(n_vectors // MIN_POINTS_PER_CENTROID, 1)))
    return int(max(1, min(target, trainable, MAX_NLIST)))


def index_candidates(n_vectors: int, dim: int, memory_budget_bytes: int) -> list[str]:
    """Factory strings worth building, best first (the first one within budget wins).

    Flat for small galleries; HNSW with as many links as the budget leaves per vector (8..32) below
    HNSW_MAX_VECTORS; IVF-Flat; then OPQ+IVF+PQ with the largest code that might fit.
    """
    out = ["Flat"] if n_vectors < FLAT_THRESHOLD else []
    links = math.floor((memory_budget_bytes / max(n_vectors, 1) - 4 * dim) / 8)
    if n_vectors < HNSW_MAX_VECTORS and links >= HNSW_MIN_M:
        out.append(f"HNSW{min(links, HNSW_MAX_M)}")
    nlist = ivf_lists(n_vectors)
    out.append(f"IVF{nlist},Flat")
    for m in (m for m in PQ_SIZES if m < dim):
        out.append(f"OPQ{m}_{(dim // m) * m},IVF{nlist},PQ{m}")
    return out


def choose_index(n_vectors: int, dim: int, memory_budget_bytes: int) -> str:
    """The best index factory string whose estimate_memory fits the budget.

    Returns:
        a faiss.index_factory string; ValueError with the numbers when not even the smallest fits.
    """
    if n_vectors <= 0 or dim <= 0:
        raise ValueError(f"cannot index {n_vectors} vectors of dimension {dim}")
    candidates = index_candidates(n_vectors, dim, memory_budget_bytes)
    for factory in candidates:
        if estimate_memory(factory, n_vectors, dim) <= memory_budget_bytes:
            return factory
    smallest = candidates[-1]
    raise ValueError(f"no index of {n_vectors:,} vectors x {dim} dims fits in {memory_budget_bytes:,} bytes: "
                     f"the smallest, {smallest}, needs {estimate_memory(smallest, n_vectors, dim):,} bytes")
