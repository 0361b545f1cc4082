"""Dense retrieval end to end: encode a corpus into an index directory, search it with queries."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from tandem.data.types import Corpus, Run
from tandem.errors import IncompatibleArtifactError, TandemError
from tandem.index.faiss_index import DenseIndex
from tandem.io import atomic_open, atomic_path, read_json, write_json
from tandem.models.encoder import Encoder
from tandem.models.hf import model_fingerprint, resolve_model

log = logging.getLogger(__name__)


def encoder_info(encoder: Encoder) -> dict:
    """What an index must record about the encoder that made its vectors."""
    s = encoder.settings
    name = encoder.name
    if Path(name).is_dir():
        name = str(Path(name).resolve())
    return {"model": name, "model_fingerprint": model_fingerprint(encoder.name), "pooling": s.pooling,
            "normalize": s.normalize, "max_length": s.max_length, "prefix": s.prefix, "dim": encoder.dim}


def save_embeddings(path: str | os.PathLike, vectors: np.ndarray, dtype: str = "float32") -> None:
    """Write vectors as ``.npy`` (float32 or float16), atomically."""
    if dtype not in ("float32", "float16"):
        raise TandemError(f"embedding dtype must be float32 or float16, got {dtype!r}")
    with atomic_open(path, "wb") as f:
        np.save(f, vectors.astype(dtype, copy=False))


def load_embeddings(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a ``.npy`` of vectors (read-only)."""
    return np.load(path, mmap_mode="r")


def build_index(corpus: Corpus, out: str | os.PathLike, encoder: Encoder | None = None, *,
                corpus_hash: str = "", corpus_file: str = "", index_type: str = "flat", batch_size: int = 32,
                embeddings_dtype: str | None = "float32", progress: bool = False, shard_size: int = 50_000,
                distributed: bool = False, **index_options) -> DenseIndex | None:
    """Encode every passage and save a :class:`DenseIndex` (and the embeddings) under ``out``.

    The corpus is encoded in shards of ``shard_size`` passages, each saved as it completes in
    ``OUT.encoding/``: a killed build, run again with the same settings, encodes only the shards
    still missing. Encoding memory is bounded by the shard size; the vectors are gathered on disk.

    With ``distributed`` (every process of a torchrun launch calls this), the shards are dealt out
    round-robin to the processes (one per GPU), and rank 0 merges them into the one index it saves
    and returns; the other ranks return ``None``. The processes meet through the shard files, not
    collectives, so a long encoding cannot hit a process-group timeout.
    """
    rank, size = (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))) if distributed else (0, 1)
    encoder = encoder or Encoder.from_pretrained(None)
    info = {**encoder_info(encoder), "corpus_hash": corpus_hash, "passages": len(corpus)}
    if corpus_file:
        info["corpus_file"] = str(Path(corpus_file).resolve())
    work = Path(out).parent / (Path(out).name + ".encoding")
    vectors = encode_in_shards(corpus, work, encoder, shard_size, batch_size, progress, info, rank, size)
    if vectors is None:
        return None
    index = DenseIndex.build(vectors, corpus.ids, info, kind=index_type, **index_options)
    index.save(out)
    if embeddings_dtype:
        save_embeddings(Path(out) / "embeddings.npy", vectors, embeddings_dtype)
    del vectors
    shutil.rmtree(work, ignore_errors=True)
    return index


def _wait_for(ready, what: str, poll_s: float = 0.5) -> None:
    """Poll until ``ready()``; log every minute while waiting."""
    t0 = last = time.monotonic()
    while not ready():
        time.sleep(poll_s)
        if time.monotonic() - last > 60:
            last = time.monotonic()
            log.info("index: waiting for %s (%.0f s)", what, last - t0)


def encode_in_shards(corpus: Corpus, work: Path, encoder: Encoder, shard_size: int, batch_size: int,
                     progress: bool, info: dict, rank: int = 0, world_size: int = 1) -> np.ndarray | None:
    """All passage vectors (N, D) as a read-only memory map, encoded shard by shard (resumable).

    With ``world_size`` > 1 (torchrun), process ``rank`` encodes shards ``rank, rank + world_size,
    ...``; rank 0 waits until every shard file exists and gathers them, the others get ``None``.
    """
    shard_size = max(1, shard_size)
    key = {"model_fingerprint": info.get("model_fingerprint"), "max_length": info.get("max_length"),
           "pooling": info.get("pooling"), "normalize": info.get("normalize"), "prefix": info.get("prefix"),
           "passages": len(corpus), "corpus_hash": info.get("corpus_hash"), "shard_size": shard_size,
           "first": corpus.ids[0] if len(corpus) else None, "last": corpus.ids[-1] if len(corpus) else None}
    if rank == 0:
        if work.exists() and (not (work / "key.json").exists() or read_json(work / "key.json") != key):
            shutil.rmtree(work)  # another model, corpus or shard size: start over
        work.mkdir(parents=True, exist_ok=True)
        write_json(work / "key.json", key)
    else:  # wait for rank 0 to (re)create the work directory for this key
        def ready() -> bool:
            try:
                return read_json(work / "key.json") == key
            except (OSError, ValueError):
                return False

        _wait_for(ready, "rank 0's work directory")
    starts = list(range(0, len(corpus), shard_size))
    done = sum((work / f"shard-{i:05d}.npy").exists() for i in range(len(starts)))
    if done and rank == 0:
        log.info("index: resuming, %d of %d shards already encoded", done, len(starts))
    for i, start in enumerate(starts):
        path = work / f"shard-{i:05d}.npy"
        if i % world_size != rank or path.exists():
            continue
        texts = [corpus[j] for j in range(start, min(start + shard_size, len(corpus)))]
        desc = "encoding corpus" + (f" (shard {i + 1}/{len(starts)})" if len(starts) > 1 else "")
        vecs = encoder.encode(texts, batch_size=batch_size, progress=progress, desc=desc)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(vecs, dtype=np.float32))
    if rank != 0:
        return None
    if world_size > 1:
        _wait_for(lambda: all((work / f"shard-{i:05d}.npy").exists() for i in range(len(starts))),
                  "the other processes' shards")
    dim = encoder.dim
    all_path = work / "all.npy"
    out = np.lib.format.open_memmap(all_path, mode="w+", dtype=np.float32, shape=(len(corpus), dim))
    for i, start in enumerate(starts):
        shard = np.load(work / f"shard-{i:05d}.npy", mmap_mode="r")
        out[start : start + len(shard)] = shard
    out.flush()
    del out
    return np.load(all_path, mmap_mode="r")


def load_index_and_encoder(index_dir: str | os.PathLike, model: str | None = None) -> tuple[DenseIndex, Encoder]:
    """Load an index and the encoder that built it; a different ``model`` is refused."""
    index = DenseIndex.load(index_dir)
    info = index.info
    if model is not None:
        resolved = resolve_model(model)
        fp = model_fingerprint(resolved)
        if fp != info.get("model_fingerprint"):
            raise IncompatibleArtifactError(
                f"{index_dir}: the index was built with model {info.get('model')!r} "
                f"(fingerprint {info.get('model_fingerprint')}) but --model {model!r} has fingerprint {fp}. "
                "Search with the model the index was built with (omit --model), or rebuild the index")
    name = model or info["model"]
    from tandem.models.retriever import CONFIG_FILE, Retriever

    if (Path(name) / CONFIG_FILE).exists():  # a tandem retriever: its query tower (length, prefix) encodes queries
        encoder = Retriever.from_pretrained(name).query_tower()
    else:
        encoder = Encoder.from_pretrained(name, pooling=info["pooling"], normalize=info["normalize"],
                                          max_length=info["max_length"], prefix=info.get("prefix", ""))
    if encoder.dim != index.index.d:
        raise IncompatibleArtifactError(f"{index_dir}: index dim {index.index.d} != model dim {encoder.dim}")
    return index, encoder


def dense_search(index: DenseIndex, encoder: Encoder, queries: Mapping[str, str], k: int = 100,
                 batch_size: int = 64, progress: bool = False) -> Run:
    qids = list(queries)
    vectors = encoder.encode([queries[q] for q in qids], batch_size=batch_size, progress=progress,
                             desc="encoding queries")
    return index.search(qids, vectors, k)
