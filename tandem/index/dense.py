"""Dense retrieval end to end: encode a corpus into an index directory, search it with queries."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from tandem.data.types import Corpus, Run, join_title
from tandem.errors import IncompatibleArtifactError, UsageError
from tandem.index.faiss_index import DenseIndex, default_nlist, new_faiss, require_appendable, train_size
from tandem.io import atomic_open, atomic_path, read_json, sha256_file, write_json
from tandem.models.encoder import Encoder
from tandem.models.hf import model_fingerprint, resolve_model
from tandem.utils import resolve_precision

log = logging.getLogger(__name__)


def encoder_info(encoder: Encoder) -> dict:
    """What an index must record about the encoder that made its vectors."""
    s = encoder.settings
    name = encoder.name
    if Path(name).is_dir():
        name = str(Path(name).resolve())
    numerics = (resolve_precision(encoder.precision, encoder.device) if encoder.backend == "torch"
                else encoder.backend)  # fp32 / bf16 (PyTorch), or onnx / onnx-int8
    return {"model": name, "model_fingerprint": model_fingerprint(encoder.name), "pooling": s.pooling,
            "normalize": s.normalize, "max_length": s.max_length, "prefix": s.prefix, "dim": encoder.dim,
            "precision": numerics}


def _check_embeddings_dtype(dtype: str) -> None:
    if dtype not in ("float32", "float16"):
        raise UsageError(f"embedding dtype must be float32 or float16, got {dtype!r}")


def save_embeddings(path: str | os.PathLike, vectors: np.ndarray, dtype: str = "float32") -> None:
    """Write vectors as ``.npy`` (float32 or float16), atomically."""
    _check_embeddings_dtype(dtype)
    with atomic_open(path, "wb") as f:
        np.save(f, vectors.astype(dtype, copy=False))


def load_embeddings(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a ``.npy`` of vectors (read-only)."""
    return np.load(path, mmap_mode="r")


def build_index(corpus: Corpus | str | os.PathLike, out: str | os.PathLike, encoder: Encoder | None = None, *,
                corpus_hash: str = "", corpus_file: str = "", index_type: str = "flat", batch_size: int = 32,
                embeddings_dtype: str | None = "float32", progress: bool = False, shard_size: int = 50_000,
                distributed: bool = False, seed: int = 0, store: str = "faiss", milvus_uri: str | None = None,
                milvus_collection: str | None = None, **index_options):
    """Encode every passage and save a :class:`DenseIndex` (and the embeddings) under ``out``.

    ``corpus`` is a loaded :class:`Corpus` or the path of a passages file (BEIR corpus.jsonl, MS MARCO
    collection.tsv, DPR psgs_w100.tsv), which is then streamed: only one shard of texts is in memory.
    The corpus is encoded in shards of ``shard_size`` passages, each saved as it completes in
    ``OUT.encoding/``: a killed build, run again with the same settings, encodes only the shards
    still missing. The index is then filled shard by shard from those files (IVF-PQ first trains on
    a seeded sample of :func:`train_size` vectors), so peak memory is one shard plus the index itself
    (plus the passage ids): nothing else grows with the corpus.

    With ``distributed`` (every process of a torchrun launch calls this), the shards are dealt out
    round-robin to the processes (one per GPU), and rank 0 builds the one index it saves and
    returns; the other ranks return ``None``. The processes meet through the shard files, not
    collectives, so a long encoding cannot hit a process-group timeout.

    ``store="milvus"`` fills a Milvus collection from the same shards instead of a FAISS file (Milvus Lite
    inside ``out``, or the server at ``milvus_uri``; :func:`tandem.index.milvus_store.build_milvus`) and
    returns the open :class:`~tandem.index.milvus_store.MilvusIndex`.
    """
    if store not in ("faiss", "milvus"):
        raise UsageError(f"store must be faiss or milvus, got {store!r}")
    if store == "faiss" and (milvus_uri or milvus_collection):
        raise UsageError("--milvus-uri and --milvus-collection need --store milvus")
    if store == "milvus":
        from tandem.index.milvus_store import index_params, require_pymilvus

        require_pymilvus()
        index_params(index_type, 1, **index_options)  # an index type Milvus lacks fails before the encoding
    elif index_type == "ivf":
        raise UsageError("index type ivf (IVF_FLAT) is a Milvus store option; the FAISS store offers flat, hnsw "
                          "and ivfpq")
    rank, size = (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))) if distributed else (0, 1)
    encoder = encoder or Encoder.from_pretrained(None)
    if not isinstance(corpus, Corpus):
        corpus_file = corpus_file or str(corpus)
        corpus_hash = corpus_hash or sha256_file(corpus)
    info = {**encoder_info(encoder), "corpus_hash": corpus_hash}
    if corpus_file:
        info["corpus_file"] = str(Path(corpus_file).resolve())
    work = Path(out).parent / (Path(out).name + ".encoding")
    shards = encode_in_shards(corpus, work, encoder, shard_size, batch_size, progress, info, rank, size)
    if shards is None:
        return None
    paths, ids = shards
    info["passages"] = len(ids)
    if store == "milvus":
        from tandem.index.milvus_store import build_milvus

        built = build_milvus(paths, ids, info, out, work, int(encoder.dim), index_type, index_options, milvus_uri,
                             milvus_collection)
        if embeddings_dtype:
            save_embeddings_from_shards(Path(out) / "embeddings.npy", paths, embeddings_dtype)
        shutil.rmtree(work, ignore_errors=True)
        return built
    options = dict(index_options)
    if index_type == "ivfpq":
        options["nlist"] = options.get("nlist") or default_nlist(len(ids))
    index = new_faiss(encoder.dim, len(ids), index_type, **options)
    if not index.is_trained:
        index.train(_sample_rows(paths, train_size(len(ids), options["nlist"]), seed))
    for p in paths:
        index.add(np.ascontiguousarray(np.load(p, mmap_mode="r"), dtype=np.float32))
    dense = DenseIndex(index, ids, {**info, "index_type": index_type, "index_options": index_options,
                                    "dim": int(encoder.dim), "size": len(ids)})
    dense.save(out)
    if embeddings_dtype:
        save_embeddings_from_shards(Path(out) / "embeddings.npy", paths, embeddings_dtype)
    shutil.rmtree(work, ignore_errors=True)
    return dense


def _sample_rows(paths: list[Path], k: int, seed: int) -> np.ndarray:
    """``k`` rows drawn without replacement (seeded) from the vectors of the shard files, in order."""
    sizes = [len(np.load(p, mmap_mode="r")) for p in paths]
    picks = np.sort(np.random.default_rng(seed).choice(sum(sizes), size=k, replace=False))
    out = np.empty((k, np.load(paths[0], mmap_mode="r").shape[1]), dtype=np.float32)
    start, filled = 0, 0
    for p, n in zip(paths, sizes):
        mine = picks[(picks >= start) & (picks < start + n)] - start
        out[filled : filled + len(mine)] = np.load(p, mmap_mode="r")[mine]
        filled += len(mine)
        start += n
    return out


def save_embeddings_from_shards(path: str | os.PathLike, paths: list[Path], dtype: str = "float32") -> None:
    """Write the shards' vectors, in order, as one ``.npy`` (float32 or float16), atomically, a shard at a time."""
    _check_embeddings_dtype(dtype)
    shapes = [np.load(p, mmap_mode="r").shape for p in paths]
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                        shape=(sum(s[0] for s in shapes), shapes[0][1] if shapes else 0))
        start = 0
        for p, (n, _) in zip(paths, shapes):
            out[start : start + n] = np.load(p, mmap_mode="r")
            start += n
        out.flush()
        del out


def _wait_for(ready, what: str, poll_s: float = 0.5) -> None:
    """Poll until ``ready()``; log every minute while waiting."""
    t0 = last = time.monotonic()
    while not ready():
        time.sleep(poll_s)
        if time.monotonic() - last > 60:
            last = time.monotonic()
            log.info("index: waiting for %s (%.0f s)", what, last - t0)


def _passages(corpus: Corpus | str | os.PathLike) -> Iterator[tuple[str, str]]:
    """``(pid, text)`` in corpus order, from a loaded corpus or streamed from its file."""
    if isinstance(corpus, Corpus):
        return ((corpus.ids[i], corpus[i]) for i in range(len(corpus)))
    from tandem.data.dataset import iter_any_corpus

    return ((pid, join_title(title, text)) for pid, title, text in iter_any_corpus(corpus))


def encode_in_shards(corpus: Corpus | str | os.PathLike, work: Path, encoder: Encoder, shard_size: int,
                     batch_size: int, progress: bool, info: dict, rank: int = 0,
                     world_size: int = 1) -> tuple[list[Path], list[str]] | None:
    """Encode the passages shard by shard into ``work/shard-NNNNN.npy`` (resumable); return the shard
    files and the passage ids, in corpus order.

    The passages are read once, in order, and only the current shard's texts are held. With
    ``world_size`` > 1 (torchrun), process ``rank`` encodes shards ``rank, rank + world_size, ...``;
    rank 0 waits until every shard file exists and gets the result, the others get ``None``.
    """
    shard_size = max(1, shard_size)
    key = {"model_fingerprint": info.get("model_fingerprint"), "max_length": info.get("max_length"),
           "pooling": info.get("pooling"), "normalize": info.get("normalize"), "prefix": info.get("prefix"),
           "corpus_hash": info.get("corpus_hash"), "shard_size": shard_size, "precision": info.get("precision")}
    if isinstance(corpus, Corpus):  # no file hash to go by: the size and the ends of the corpus
        key.update(passages=len(corpus), first=corpus.ids[0] if len(corpus) else None,
                   last=corpus.ids[-1] if len(corpus) else None)
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
    done = len(list(work.glob("shard-*.npy")))
    if done and rank == 0:
        log.info("index: resuming, %d shards already encoded", done)
    ids: list[str] = []
    paths: list[Path] = []
    total = len(corpus) if isinstance(corpus, Corpus) else None
    stream = _passages(corpus)
    while True:
        shard = list(itertools.islice(stream, shard_size))
        if not shard:
            break
        i = len(paths)
        path = work / f"shard-{i:05d}.npy"
        paths.append(path)
        ids.extend(pid for pid, _ in shard)
        if i % world_size != rank or path.exists():
            continue
        n_shards = f"/{-(-total // shard_size)}" if total is not None else ""
        desc = "encoding corpus" + (f" (shard {i + 1}{n_shards})" if total is None or total > shard_size else "")
        vecs = encoder.encode([text for _, text in shard], batch_size=batch_size, progress=progress, desc=desc)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(vecs, dtype=np.float32))
        del vecs
    if not ids:
        raise UsageError("the corpus has no passages to index")
    if rank != 0:
        return None
    if world_size > 1:
        _wait_for(lambda: all(p.exists() for p in paths), "the other processes' shards")
    return paths, ids


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
    if encoder.dim != index.dim:
        index.close()
        raise IncompatibleArtifactError(f"{index_dir}: index dim {index.dim} != model dim {encoder.dim}")
    return index, encoder


def passage_encoder_for(info: dict) -> Encoder:
    """The encoder that made an index's passage vectors, from its manifest (a tandem retriever's passage
    tower, or the model with the recorded pooling, normalisation, length and prefix); refused when the
    model on disk is no longer the one the manifest names."""
    name = info["model"]
    fp = model_fingerprint(resolve_model(name))
    if fp != info.get("model_fingerprint"):
        raise IncompatibleArtifactError(f"model {name!r} has fingerprint {fp}, the index was built with "
                                        f"{info.get('model_fingerprint')}: its new vectors would not match the old")
    from tandem.models.retriever import CONFIG_FILE, Retriever

    precision = info.get("precision")
    backend = precision if precision in ("onnx", "onnx-int8") else "torch"
    if (Path(name) / CONFIG_FILE).exists():
        enc = Retriever.from_pretrained(name).passage_tower()
    else:
        enc = Encoder.from_pretrained(name, pooling=info["pooling"], normalize=info["normalize"],
                                      max_length=info["max_length"], prefix=info.get("prefix", ""))
    if backend != "torch":
        enc.set_backend(backend)
    elif precision in ("fp32", "bf16"):
        enc.precision = precision
    return enc


def append_to_index(index_dir: str | os.PathLike, records, batch_size: int = 32, progress: bool = False) -> int:
    """Add ``(pid, title, text)`` passages to a Milvus-store index directory without a rebuild; returns how many.
    Whoever serves the index sees them after a reload (``POST /reload`` or SIGHUP)."""
    index = DenseIndex.load(index_dir)
    try:
        require_appendable(index)  # before the encoder loads
        from tandem.index.milvus_store import append_passages

        return append_passages(index, records, passage_encoder_for(index.info), batch_size, progress)
    finally:
        index.close()


def dense_search(index: DenseIndex, encoder: Encoder, queries: Mapping[str, str], k: int = 100,
                 batch_size: int = 64, progress: bool = False) -> Run:
    qids = list(queries)
    vectors = encoder.encode([queries[q] for q in qids], batch_size=batch_size, progress=progress,
                             desc="encoding queries")
    return index.search(qids, vectors, k)


def index_corpus(index, data: str | os.PathLike | None = None) -> tuple[Corpus | None, Path | None]:
    """The passages of an index and the file they came from: ``data``'s corpus (a dataset name or directory),
    else the corpus file the manifest recorded; ``(None, None)`` when neither is there. The file must be the
    one the index was built from (sha256), and passages appended since (Milvus store) are added after it."""
    from itertools import chain

    from tandem.data import resolve_dataset
    from tandem.data.dataset import corpus_file, iter_any_corpus

    info = index.info
    path: Path | None = None
    if data is not None:
        path = corpus_file(resolve_dataset(data))
    elif info.get("corpus_file") and Path(info["corpus_file"]).exists():
        path = Path(info["corpus_file"])
    if path is None:
        return None, None
    want = info.get("corpus_hash")
    if want and sha256_file(path) != want:
        raise IncompatibleArtifactError(f"{path}: not the corpus the index was built from (sha256 differs)")
    extra = [Path(index.directory) / a["file"] for a in info.get("appended") or []
             if getattr(index, "directory", None) is not None]
    corpus = Corpus.from_records(chain(iter_any_corpus(path), *(iter_any_corpus(p) for p in extra)))
    missing = [pid for pid in index.ids[:1000] if pid not in corpus]
    if missing:
        raise IncompatibleArtifactError(f"{path}: passage {missing[0]!r} of the index is not in it")
    return corpus, path
