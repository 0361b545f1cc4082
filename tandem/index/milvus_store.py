"""Dense index in Milvus: the same vectors, ids and manifest as the FAISS store, searched by a Milvus collection.

One client (``pymilvus.MilvusClient``) for both places a collection can live:

- **Milvus Lite** (the default): an embedded store, a ``store-<token>.db`` directory inside the index
  directory, opened in this process (``milvus-lite``; no server). Exact search (``FLAT``) by default.
- **A Milvus server** (standalone or distributed) given by URI (``--milvus-uri http://host:19530``;
  a token from ``$TANDEM_MILVUS_TOKEN``, never written to the manifest). HNSW or IVF_FLAT as options.

The index directory keeps what FAISS's keeps, minus ``index.faiss``: ``ids.txt`` (the passage ids in row
order), ``manifest.json`` (``"store": "milvus"`` and where the collection is) and, after appends, the appended
passages' texts (``appended-NNNNN.jsonl``). Each row of the collection is ``row`` (INT64 primary key: the
position in ``ids.txt``), ``pid`` and ``vec``.

A build writes a *physical* collection named after its settings and points the index's *alias* at it once
it is complete, so a server keeps answering from the previous collection until then and a killed build
resumes by counting the rows it holds (rows are upserted by position, so a repeated batch is not a
duplicate). A search only sees rows below ``len(ids)``: an append killed between the collection and
``ids.txt`` leaves rows nobody can find, which the next append overwrites.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tandem.data.types import Run
from tandem.errors import IncompatibleArtifactError, MissingDependencyError, ServiceUnavailableError, UsageError

log = logging.getLogger(__name__)

INDEX_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT"}
PID_MAX_BYTES = 1024
TOKEN_ENV = "TANDEM_MILVUS_TOKEN"
_BATCH_BYTES = 8 << 20  # one upsert call: ~8 MB of float32 vectors (gRPC's limit is 64 MB)


def require_pymilvus():
    try:
        import pymilvus  # noqa: F401
    except ImportError:
        raise MissingDependencyError("the Milvus store needs pymilvus and milvus-lite: pip install "
                                     "'tandem-ir[milvus]'") from None
    return pymilvus


# --- connections --------------------------------------------------------------------------------------------

_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}


def _is_lite(uri: str) -> bool:
    return not re.match(r"^[a-z]+://", uri)


def connect(uri: str):
    """A ``MilvusClient`` for a server URI or a Milvus Lite path (opened in this process, counted: see
    :func:`disconnect`)."""
    pymilvus = require_pymilvus()
    logging.getLogger("milvus_lite").setLevel(max(logging.WARNING, logging.getLogger("milvus_lite").level))
    logging.getLogger("milvus_lite.server_manager").setLevel(logging.CRITICAL)  # its failures are reported below
    if _is_lite(uri):
        uri = str(Path(uri).resolve())
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        with _lite_lock:
            _lite_users[uri] = _lite_users.get(uri, 0) + 1
        try:
            return pymilvus.MilvusClient(uri)
        except Exception as e:
            disconnect(uri, None)
            raise IncompatibleArtifactError(f"{uri}: cannot open the Milvus Lite store ({_first_line(e)}); another "
                                            "process may hold it (a Lite store serves one process at a time)") from None
    try:
        return pymilvus.MilvusClient(uri, token=os.environ.get(TOKEN_ENV, ""))
    except Exception as e:
        raise ServiceUnavailableError(f"cannot reach Milvus at {uri}: {_first_line(e)}") from None


def disconnect(uri: str, client) -> None:
    """Close ``client``; a Lite store's in-process server stops when its last user closes it (it holds the
    store's lock and its vectors in memory)."""
    if client is not None:
        try:
            client.close()
        except Exception:  # pragma: no cover - closing is best effort
            pass
    if not _is_lite(uri):
        return
    uri = str(Path(uri).resolve())
    with _lite_lock:
        left = _lite_users.get(uri, 0) - 1
        if left > 0:
            _lite_users[uri] = left
            return
        _lite_users.pop(uri, None)
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


# --- names and settings ---------------------------------------------------------------------------------------

def collection_name(out: str | os.PathLike) -> str:
    """The default alias of an index's collection: ``tandem_`` and the index directory's name (letters, digits
    and underscores, as Milvus requires)."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", Path(out).resolve().name)
    return ("tandem_" + name)[:200]


def check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][0-9A-Za-z_]{0,199}", name or ""):
        raise UsageError(f"Milvus collection name {name!r}: letters, digits and underscores, not starting with a digit")
    return name


def index_params(index_type: str, n: int, hnsw_m: int = 32, ef_construction: int = 200, nlist: int | None = None,
                 **_) -> tuple[str, dict]:
    """Milvus's index type and build parameters for tandem's ``--index-type``."""
    if index_type not in INDEX_TYPES:
        raise UsageError(f"index type on the Milvus store must be one of {tuple(INDEX_TYPES)}, got {index_type!r}")
    kind = INDEX_TYPES[index_type]
    if kind == "HNSW":
        return kind, {"M": hnsw_m, "efConstruction": ef_construction}
    if kind == "IVF_FLAT":
        from tandem.index.faiss_index import default_nlist

        return kind, {"nlist": nlist or default_nlist(n)}
    return kind, {}


def search_params(kind: str, ef_search: int = 128, nprobe: int = 16, **_) -> dict:
    if kind == "HNSW":
        return {"ef": ef_search}
    if kind == "IVF_FLAT":
        return {"nprobe": nprobe}
    return {}


def _rows(start: int, ids: Sequence[str], vectors: np.ndarray) -> list[dict]:
    out = []
    for j, (pid, v) in enumerate(zip(ids, vectors)):
        if len(pid.encode("utf-8")) > PID_MAX_BYTES:
            raise UsageError(f"passage id {pid[:60]!r}...: longer than {PID_MAX_BYTES} bytes, which the Milvus store "
                             "holds")
        out.append({"row": start + j, "pid": pid, "vec": v})
    return out


def batch_rows(dim: int) -> int:
    return max(1, _BATCH_BYTES // (4 * max(1, dim)))


def count_rows(client, name: str) -> int:
    res = client.query(name, filter="", output_fields=["count(*)"])
    return int(res[0]["count(*)"]) if res else 0


def create_collection(client, name: str, dim: int, kind: str, params: dict, wait: bool = True) -> None:
    """The collection's schema and its vector index (``wait``: until a server has built it; Milvus Lite
    builds segment indexes in the background and has no call to wait on)."""
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("pid", DataType.VARCHAR, max_length=PID_MAX_BYTES)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=int(dim))
    ip = client.prepare_index_params()
    ip.add_index(field_name="vec", index_type=kind, metric_type="IP", params=params)
    client.create_collection(name, schema=schema)
    client.create_index(name, ip, sync=wait)
    client.load_collection(name)


def upsert(client, name: str, start: int, ids: Sequence[str], vectors: np.ndarray) -> None:
    """Write rows ``start ..`` (by position: a repeated call replaces, never duplicates), in ~8 MB calls."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    step = batch_rows(vectors.shape[1] if vectors.ndim == 2 else 1)
    for s in range(0, len(ids), step):
        client.upsert(name, _rows(start + s, ids[s : s + step], vectors[s : s + step]))


def point_alias(client, alias: str, physical: str) -> str | None:
    """Point ``alias`` at ``physical`` (one step for the readers); return the collection it named before."""
    listed = client.list_aliases()
    names = listed.get("aliases", []) if isinstance(listed, dict) else list(listed)
    before = client.describe_alias(alias).get("collection_name") if alias in names else None
    if before is None:
        client.create_alias(physical, alias)
    elif before != physical:
        client.alter_alias(physical, alias)
    return before


def physical_name(alias: str, key: dict) -> str:
    digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:10]
    return f"{alias[:180]}_{digest}"


def new_lite_name() -> str:
    return f"store-{secrets.token_hex(4)}.db"


# --- the index -----------------------------------------------------------------------------------------------

class MilvusIndex:
    """A Milvus collection with the passage ids and the manifest that says how its vectors were made; searched
    like :class:`~tandem.index.faiss_index.DenseIndex`."""

    store = "milvus"

    def __init__(self, directory: Path | None, uri: str, collection: str, ids: Sequence[str], info: dict[str, Any],
                 client=None, orphans: bool = False):
        self.directory = directory
        self.uri = uri
        self.collection = collection
        self.ids = list(ids)
        self.info = info
        self.client = client if client is not None else connect(uri)
        self._closed = False
        # rows past the committed ids (an interrupted append) are filtered out in Milvus; the filter costs ~25% of a
        # Lite search, so it is on only when there are some. Rows another process appended since this one opened
        # the collection are dropped from the results (it sees them after a reload).
        self.orphans = orphans
        m = info.get("milvus") or {}
        self._kind = m.get("index_type", "FLAT")
        self._search = search_params(self._kind, **(info.get("index_options") or {}))

    @property
    def dim(self) -> int:
        return int(self.info["dim"])

    def __len__(self) -> int:
        return len(self.ids)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            disconnect(self.uri, self.client)

    def _search_raw(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise IncompatibleArtifactError(f"query vectors have shape {queries.shape}, index dim is {self.dim}")
        k = min(k, len(self.ids), 16_384)  # Milvus's top-k limit
        if k < 1 or not len(queries):
            return [[] for _ in range(len(queries))]
        n = len(self.ids)
        res = self.client.search(self.collection, data=list(queries), limit=k,
                                 filter=f"row < {n}" if self.orphans else "",
                                 search_params={"metric_type": "IP", "params": self._search})
        return [[(int(h.id), float(h.distance)) for h in hits if int(h.id) < n] for hits in res]

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and positions (Q, k) of the top-``k`` passages for each query vector (-1 where fewer)."""
        rows = self._search_raw(queries, k)
        width = max([len(r) for r in rows] + [min(k, len(self.ids))])
        scores = np.full((len(rows), width), -np.inf, dtype=np.float32)
        positions = np.full((len(rows), width), -1, dtype=np.int64)
        for i, r in enumerate(rows):
            for j, (p, s) in enumerate(r):
                positions[i, j], scores[i, j] = p, s
        return scores, positions

    def search(self, qids: Sequence[str], queries: np.ndarray, k: int) -> Run:
        from tandem.index.faiss_index import run_from_positions

        return run_from_positions(self.ids, qids, *self.search_vectors(queries, k))

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Upsert ``vectors`` as the rows after the last one, then extend the ids (memory only: the caller
        writes ``ids.txt`` and the manifest)."""
        upsert(self.client, self.collection, len(self.ids), list(ids), vectors)
        self.client.flush(self.collection)
        self.ids.extend(ids)

    @classmethod
    def open(cls, path: Path, info: dict[str, Any], ids: list[str]) -> "MilvusIndex":
        m = info.get("milvus") or {}
        if m.get("lite"):
            uri = str(path / m["lite"])
            if not Path(uri).is_dir():
                raise IncompatibleArtifactError(f"{path}: the Milvus Lite store {m['lite']} is missing; rebuild the "
                                                "index with tandem index --store milvus")
        else:
            uri = m.get("uri") or ""
            if not uri:
                raise IncompatibleArtifactError(f"{path}/manifest.json: a Milvus store without a URI")
        alias = m.get("collection")
        client = connect(uri)
        try:
            if not client.has_collection(alias):
                raise IncompatibleArtifactError(f"{path}: Milvus at {uri} has no collection {alias!r}; rebuild the "
                                                "index with tandem index --store milvus")
            have = count_rows(client, alias)
            if have < len(ids):
                raise IncompatibleArtifactError(f"{path}: the Milvus collection {alias!r} holds {have} rows but "
                                                f"ids.txt {len(ids)} ids; rebuild the index with tandem index --store "
                                                "milvus")
            if have > len(ids):  # an append killed after the collection, before ids.txt: those rows stay unseen
                log.warning("%s: the collection holds %d rows that ids.txt does not name (an interrupted append); "
                            "searches ignore them", path, have - len(ids))
            client.load_collection(alias)
        except Exception:
            disconnect(uri, client)
            raise
        return cls(path, uri, alias, ids, info, client, orphans=have > len(ids))


# --- building and appending ----------------------------------------------------------------------------------

def build_milvus(paths: Sequence[Path], ids: Sequence[str], info: dict[str, Any], out: str | os.PathLike, work: Path,
                 dim: int, index_type: str = "flat", index_options: dict | None = None, uri: str | None = None,
                 collection: str | None = None) -> MilvusIndex:
    """Fill a collection from the encoded shard files and write the index directory ``out`` around it.

    Milvus Lite (``uri`` None): the store is built in ``work`` (the build's resumable work directory) and
    moved into ``out`` with the directory swap. A server: the physical collection is named after the
    build's settings, so a killed build, run again, finds it and upserts the rows it lacks; the alias then
    moves to it and the collection it named before (another build of this index) is dropped.
    """
    from tandem.index.faiss_index import ids_digest
    from tandem.io import atomic_dir, manifest, read_json, write_json

    index_options = dict(index_options or {})
    kind, params = index_params(index_type, len(ids), **index_options)
    alias = check_name(collection or collection_name(out))
    key = {k: info.get(k) for k in ("model_fingerprint", "max_length", "pooling", "normalize", "prefix",
                                    "corpus_hash", "precision")}
    key.update(kind=kind, params=repr(sorted(params.items())), passages=len(ids), dim=int(dim))
    physical = physical_name(alias, key)
    lite = uri is None
    if lite:  # the store's name survives a kill with the work directory
        state = work / "milvus.json"
        name = read_json(state)["lite"] if state.exists() else new_lite_name()
        write_json(state, {"lite": name})
        where = str(work / name)
    else:
        where = uri
    client = connect(where)
    try:
        if client.has_collection(physical):
            have = count_rows(client, physical)
            if have:
                log.info("index: resuming the Milvus collection %s at row %d of %d", physical, have, len(ids))
        else:
            create_collection(client, physical, dim, kind, params, wait=not lite)
            have = 0
        start = 0
        for p in paths:
            n = len(np.load(p, mmap_mode="r"))
            if start + n > have:  # rows from max(have, start) on are missing (or partly written): upsert them
                skip = max(0, have - start)
                upsert(client, physical, start + skip, ids[start + skip : start + n],
                       np.load(p, mmap_mode="r")[skip:])
            start += n
        client.flush(physical)
        if count_rows(client, physical) != len(ids):
            raise IncompatibleArtifactError(f"Milvus collection {physical}: holds {count_rows(client, physical)} rows "
                                            f"after the build, expected {len(ids)}")
        before = point_alias(client, alias, physical)
        if before and before != physical and client.has_collection(before):
            client.drop_collection(before)
    finally:
        disconnect(where, client)
    store: dict[str, Any] = {"collection": alias, "physical": physical, "index_type": kind, "params": params}
    store.update({"lite": Path(where).name} if lite else {"uri": uri})
    full = {**info, "store": "milvus", "milvus": store, "index_type": index_type, "index_options": index_options,
            "dim": int(dim), "size": len(ids), "ids_sha256": ids_digest(ids), "appended": []}
    with atomic_dir(out) as tmp:
        if lite:
            os.replace(where, tmp / Path(where).name)
        (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        write_json(tmp / "manifest.json", manifest("dense-index", **full))
    return MilvusIndex.open(Path(out), full, list(ids))


def append_passages(index: MilvusIndex, records: Sequence[tuple[str, str, str]], encoder, batch_size: int = 32,
                    progress: bool = False) -> int:
    """Encode ``(pid, title, text)`` passages with the index's passage encoder and add them to a live index.

    In order, each step safe to kill: the rows go into the collection (after the last committed one), the
    passages' texts into a new ``appended-NNNNN.jsonl``, the ids into ``ids.txt``, and last the manifest,
    which commits them (its ``size``). Returns the number of passages added.
    """
    import json

    from tandem.data.types import join_title
    from tandem.index.faiss_index import ids_digest, require_appendable
    from tandem.io import atomic_open, manifest, read_json, write_json

    require_appendable(index)
    if index.directory is None:
        raise UsageError("this Milvus index has no directory to record appended passages in")
    records = list(records)
    if not records:
        raise UsageError("no passages to append")
    have = set(index.ids)
    seen: set[str] = set()
    for pid, _, text in records:
        if not isinstance(pid, str) or not pid:
            raise UsageError(f"passage id {pid!r}: must be a non-empty string")
        if pid in have or pid in seen:
            raise UsageError(f"passage {pid!r} is already in the index; append only new passages")
        if not isinstance(text, str):
            raise UsageError(f"passage {pid!r}: its text must be a string")
        seen.add(pid)
    d = index.directory
    info = read_json(d / "manifest.json")
    if int(info.get("size", -1)) != len(index.ids):
        raise IncompatibleArtifactError(f"{d}: the index changed on disk since it was opened ({info.get('size')} "
                                        f"passages, this process has {len(index.ids)}); reload it before appending")
    vecs = encoder.encode([join_title(t, x) for _, t, x in records], batch_size=batch_size, progress=progress,
                          desc="encoding passages")
    vecs = np.asarray(vecs, dtype=np.float32)
    if vecs.shape[1] != index.dim:
        raise IncompatibleArtifactError(f"the passage encoder gives {vecs.shape[1]} dimensions, the index {index.dim}")
    ids = [r[0] for r in records]
    old = list(index.ids)
    index.add(ids, vecs)
    try:
        appended = list(info.get("appended") or [])
        name = f"appended-{len(appended):05d}.jsonl"
        with atomic_open(d / name) as f:
            for pid, title, text in records:
                f.write(json.dumps({"_id": pid, "title": title or "", "text": text}, ensure_ascii=False) + "\n")
        with atomic_open(d / "ids.txt") as f:
            f.write("".join(f"{i}\n" for i in index.ids))
        appended.append({"file": name, "passages": len(records)})
        fields = {k: v for k, v in info.items() if k not in ("kind", "format_version", "created", "versions")}
        fields.update(size=len(index.ids), ids_sha256=ids_digest(index.ids), appended=appended)
        write_json(d / "manifest.json", manifest("dense-index", **fields))
    except BaseException:
        index.ids = old  # the rows stay in the collection, unseen (``row < size``); the next append replaces them
        index.orphans = True
        raise
    log.info("index: appended %d passages to %s (%d in all)", len(records), d, len(index.ids))
    return len(records)
