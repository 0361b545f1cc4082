"""Dense index: FAISS (exact inner product by default; HNSW or IVF-PQ) + passage ids + manifest.

Directory layout (written atomically, as one directory swap):
    index.faiss     the FAISS index
    ids.txt         passage ids, one per line, in index order
    manifest.json   model, fingerprint, pooling, normalisation, dim, corpus hash, index type, versions
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tandem.data.types import Run
from tandem.errors import IncompatibleArtifactError, UsageError
from tandem.io import atomic_dir, manifest, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

INDEX_TYPES = ("flat", "hnsw", "ivfpq")


def build_faiss(vectors: np.ndarray, kind: str = "flat", **options):
    """A FAISS inner-product index over ``vectors`` (N, D) float32 (options as :func:`new_faiss`)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = new_faiss(vectors.shape[1], len(vectors), kind, **options)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def new_faiss(dim: int, n: int, kind: str = "flat", hnsw_m: int = 32, ef_construction: int = 200,
              ef_search: int = 128, nlist: int | None = None, pq_m: int | None = None, nprobe: int = 16):
    """An empty FAISS inner-product index for ``n`` vectors of ``dim``; IVF-PQ still needs ``train``
    (on at least :func:`train_size` of them) before vectors are added."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        return index
    if kind == "ivfpq":
        if n < 256:
            raise UsageError(f"IVF-PQ needs at least 256 vectors to train its codebooks; got {n}. Use --index-type "
                             "flat")
        nlist = nlist or default_nlist(n)
        pq_m = pq_m or _pq_subquantizers(dim)
        if dim % pq_m:
            raise UsageError(f"IVF-PQ needs pq_m to divide the dimension {dim}; got pq_m={pq_m}")
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(nprobe, nlist)
        return index
    raise UsageError(f"index type must be one of {INDEX_TYPES}, got {kind!r}")


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: 4 sqrt(n), with at least 39 training points per list."""
    return max(1, min(int(4 * np.sqrt(n)), n // 39))


def train_size(n: int, nlist: int) -> int:
    """Vectors an IVF-PQ index trains on: 64 per list (FAISS wants >= 39), at least 10,000 (the
    256-centroid PQ codebooks), at most all of them. Grows with sqrt(n), not n."""
    return min(n, max(64 * nlist, 10_000))


def _pq_subquantizers(dim: int) -> int:
    for m in (48, 32, 24, 16, 12, 8, 4, 2, 1):
        if dim % m == 0 and dim // m >= 4:
            return m
    return 1


class DenseIndex:
    """A FAISS index with the passage ids and the manifest that says how its vectors were made."""

    def __init__(self, index, ids: Sequence[str], info: dict[str, Any]):
        if index.ntotal != len(ids):
            raise IncompatibleArtifactError(f"index holds {index.ntotal} vectors but {len(ids)} ids")
        self.index = index
        self.ids = list(ids)
        self.info = info

    @classmethod
    def build(cls, vectors: np.ndarray, ids: Sequence[str], info: dict[str, Any], kind: str = "flat",
              **options) -> "DenseIndex":
        if len(vectors) != len(ids):
            raise UsageError(f"{len(vectors)} vectors but {len(ids)} ids")
        index = build_faiss(vectors, kind, **options)
        return cls(index, ids, {**info, "index_type": kind, "index_options": options, "dim": int(vectors.shape[1]),
                                "size": len(ids)})

    store = "faiss"

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def close(self) -> None:
        """Nothing to release (the Milvus store's connection is closed by its own ``close``)."""

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        require_appendable(self)

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and positions (Q, k) of the top-``k`` passages for each query vector."""
        k = min(k, len(self.ids))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise IncompatibleArtifactError(f"query vectors have shape {queries.shape}, index dim is {self.index.d}")
        return self.index.search(queries, k)

    def search(self, qids: Sequence[str], queries: np.ndarray, k: int) -> Run:
        return run_from_positions(self.ids, qids, *self.search_vectors(queries, k))

    def save(self, path: str | os.PathLike) -> None:
        """Write the index directory atomically (a killed save leaves the previous index intact)."""
        import faiss

        with atomic_dir(path) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in self.ids), encoding="utf-8")
            # checksums of the two data files, verified on load: a flipped bit is an error, not other scores
            sums = {"sha256": {f: sha256_file(tmp / f) for f in ("index.faiss", "ids.txt")}}
            write_json(tmp / "manifest.json", manifest("dense-index", **{**self.info, **sums}))

    @classmethod
    def load(cls, path: str | os.PathLike, expect: dict[str, Any] | None = None):
        """Load an index directory; refuse when ``expect`` (e.g. the model fingerprint) disagrees.

        A directory whose manifest names the Milvus store opens its collection instead
        (:class:`~tandem.index.milvus_store.MilvusIndex`, searched the same way)."""
        import faiss

        path = Path(path)
        for f in ("ids.txt", "manifest.json"):
            if not (path / f).exists():
                raise IncompatibleArtifactError(f"{path}: not a tandem index (missing {f}); build one with tandem "
                                                "index")
        info = read_json(path / "manifest.json")
        if not isinstance(info, dict) or info.get("kind") != "dense-index":
            kind = info.get("kind") if isinstance(info, dict) else type(info).__name__
            raise IncompatibleArtifactError(f"{path}/manifest.json: kind is {kind!r}, expected 'dense-index'; "
                                            "rebuild the index with tandem index")
        check_compatible(info, expect or {}, path)
        store = info.get("store", "faiss")
        if store not in ("faiss", "milvus"):
            raise IncompatibleArtifactError(f"{path}/manifest.json: unknown store {store!r} (faiss or milvus)")
        if store == "faiss" and not (path / "index.faiss").exists():
            raise IncompatibleArtifactError(f"{path}: not a tandem index (missing index.faiss); build one with tandem "
                                            "index")
        for name, want in (info.get("sha256") or {}).items():  # indexes built before checksums have none
            if sha256_file(path / name) != want:
                raise IncompatibleArtifactError(f"{path}/{name}: checksum differs from the manifest's (the file is "
                                                "damaged or was replaced); rebuild the index with tandem index")
        ids = read_ids(path, info)
        if store == "milvus":
            from tandem.index.milvus_store import MilvusIndex

            return MilvusIndex.open(path, info, ids)
        try:
            index = faiss.read_index(str(path / "index.faiss"))
        except RuntimeError as e:
            raise IncompatibleArtifactError(f"{path}/index.faiss: not a readable FAISS index "
                                            f"({str(e).splitlines()[0]}); "
                                            "rebuild the index with tandem index") from None
        if index.ntotal != len(ids):
            raise IncompatibleArtifactError(f"{path}: index.faiss holds {index.ntotal} vectors but ids.txt {len(ids)} "
                                            "ids; rebuild the index with tandem index")
        return cls(index, ids, info)


def run_from_positions(ids: Sequence[str], qids: Sequence[str], scores: np.ndarray, positions: np.ndarray) -> Run:
    """A run from an index's (Q, k) scores and positions (-1: no passage there), ``ids`` naming the positions."""
    return {qid: {ids[int(p)]: float(s) for s, p in zip(row_s, row_p) if p >= 0}
            for qid, row_s, row_p in zip(qids, scores, positions)}


def require_appendable(index) -> None:
    """Passages can be added to a Milvus store only; a FAISS index is rebuilt with them."""
    if getattr(index, "store", "faiss") != "milvus":
        raise UsageError("appending passages needs an index built with --store milvus; rebuild this FAISS index "
                         "with the new passages in the corpus (tandem index)")


def ids_digest(ids: Sequence[str]) -> str:
    """sha256 of the ids as ``ids.txt`` writes them (one per line)."""
    import hashlib

    h = hashlib.sha256()
    for i in ids:
        h.update(f"{i}\n".encode("utf-8"))
    return h.hexdigest()


def read_ids(path: Path, info: dict[str, Any]) -> list[str]:
    """The passage ids of an index directory. A Milvus store names how many of ``ids.txt``'s lines are
    committed (``size``; an append killed before its manifest leaves more) and their digest."""
    from tandem.io import open_text

    with open_text(path / "ids.txt") as f:
        ids = f.read().splitlines()
    if info.get("store") == "milvus":
        n = int(info.get("size", len(ids)))
        if len(ids) < n or ids_digest(ids[:n]) != info.get("ids_sha256"):
            raise IncompatibleArtifactError(f"{path}/ids.txt: not the {n} ids the manifest records (the file is "
                                            "damaged or was replaced); rebuild the index with tandem index")
        ids = ids[:n]
    return ids


def check_compatible(info: dict[str, Any], expect: dict[str, Any], where: Path) -> None:
    """Raise if any expected manifest field differs from the recorded one."""
    for key, want in expect.items():
        have = info.get(key)
        if have != want:
            raise IncompatibleArtifactError(
                f"{where}: the index was built with {key}={have!r} but is being used with {key}={want!r}. "
                f"Search with the model the index was built with (omit --model), or rebuild the index")
