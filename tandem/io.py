"""Small I/O helpers: transparent gzip, atomic writes, hashing, manifests."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

from tandem.errors import DataFormatError, UsageError

FORMAT_VERSION = 1


def open_text(path: str | os.PathLike, mode: str = "rt") -> IO[str]:
    """Open a text file for reading or writing, gzip-compressed when the name ends in ``.gz``.

    Reading is tolerant of CRLF (Python's universal newlines turn ``\\r\\n`` into ``\\n``) and of a
    UTF-8 byte-order mark, which many Windows tools write. A missing file, bytes that are not UTF-8
    and a truncated or corrupt gzip stream raise :class:`DataFormatError` naming the file (and the
    line, while iterating), never a bare decoder or zlib error.
    """
    path = Path(path)
    if "b" in mode:
        raise ValueError("open_text opens text only")
    writing = any(c in mode for c in "wax+")
    if not writing:
        if not path.exists():
            raise DataFormatError(path, "no such file")
        if path.is_dir():
            raise DataFormatError(path, "is a directory, expected a file")
    try:
        if writing:
            return gzip.open(path, mode, encoding="utf-8") if path.suffix == ".gz" else open(path, mode,
                                                                                             encoding="utf-8")
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as e:
        raise DataFormatError(path, f"cannot open: {e.strerror or e}") from None
    return _CheckedText(raw, path)  # type: ignore[return-value]


class _CheckedText:
    """A read-only text file decoded line by line, so that a decoding or decompression error names the file and
    the line it is on. CRLF is read as LF; a UTF-8 byte-order mark at the start is dropped."""

    def __init__(self, raw: IO[bytes], path: Path):
        self._raw, self._path, self._line = raw, path, 0

    def _decode(self, data: bytes) -> str:
        if self._line == 1 or (self._line == 0 and data):
            data = data.removeprefix(b"\xef\xbb\xbf")
        try:
            return data.decode("utf-8").replace("\r\n", "\n")
        except UnicodeDecodeError as e:
            raise DataFormatError(self._path, f"not UTF-8 text (byte {data[e.start:e.start + 1]!r} at column "
                                              f"{e.start + 1}: {e.reason}); re-encode the file as UTF-8",
                                  max(self._line, 1)) from None

    def _read(self, fn):
        try:
            return fn()
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise DataFormatError(self._path, f"truncated or corrupt gzip data ({type(e).__name__}: {e}); "
                                              "download or compress the file again", self._line + 1) from None

    def readline(self) -> str:
        data = self._read(self._raw.readline)
        if not data:
            return ""
        self._line += 1
        return self._decode(data)

    def __iter__(self) -> Iterator[str]:
        while line := self.readline():
            yield line

    def read(self, size: int = -1) -> str:
        return self._decode(self._read(lambda: self._raw.read(size)))

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> "_CheckedText":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it over ``path`` atomically.

    Whatever the caller writes to the temporary path only becomes ``path`` once the block
    exits without an exception, so a killed process leaves the old file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` atomically when the block succeeds.

    ``mode`` is ``"w"`` (text, UTF-8; gzip when the name ends in ``.gz``) or ``"wb"``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if mode == "wb":
            with open(tmp, "wb") as f:
                yield f
        elif path.suffix == ".gz":
            with gzip.open(tmp, "wt", encoding="utf-8") as f:
                yield f
        else:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                yield f


def output_dir(path: str | os.PathLike, make: bool = True) -> Path:
    """``path`` as a command's output directory, made if missing (``make``): a clear error (not a traceback) where a
    file already stands there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: output directory expected, but a file is there (pass another --out, or move it)")
    if make:
        path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    from tandem.errors import DataFormatError

    try:
        with open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON: {e.msg}", e.lineno) from None


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces directory ``path`` when the block succeeds.

    The old directory stays in place until the new one is complete; the swap is two renames,
    so a reader sees either the complete old or the complete new directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}-{time.time_ns()}"
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that decide what an artefact contains."""
    from importlib import metadata

    out = {}
    for name in ("tandem-ir", "torch", "transformers", "faiss-cpu", "bm25s", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def manifest(kind: str, **fields: Any) -> dict[str, Any]:
    """A manifest dict: what made an artefact, with format version, time and package versions."""
    return {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **fields,
        "versions": versions(),
    }


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON Lines file (gzip tolerated); errors
    name file and line."""
    from tandem.errors import DataFormatError

    n_objects = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"invalid JSON ({e.msg} at column {e.colno})", lineno) from None
            if not isinstance(obj, dict):
                raise DataFormatError(path, f"expected a JSON object, found {type(obj).__name__}", lineno)
            n_objects += 1
            yield lineno, obj
    if n_objects == 0:
        raise DataFormatError(path, "file is empty: expected one JSON object per line")
