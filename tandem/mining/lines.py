"""Resumable JSON-lines work files: one line per finished query, opened by its ``qid``; a torn last line (a
killed write) is cut off and redone."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Iterator

log = logging.getLogger("tandem.mine")


def done_qids(path: Path) -> set[str]:
    """Query ids of the complete lines of a growing JSON-lines file; a torn last line is cut off.

    Streams the file (bounded memory for any size); lines written here start with their ``qid``.
    """
    if not path.exists():
        return set()
    qids: set[str] = set()
    good = 0  # bytes up to the end of the last complete line
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            good += len(line)
            if line.strip():
                m = _QID.match(line)
                qids.add(json.loads(m.group(1)) if m else json.loads(line)["qid"])
    size = path.stat().st_size
    if good < size:  # killed mid-write: drop the partial line, it is redone
        with open(path, "r+b") as f:
            f.truncate(good)
        log.info("%s: cut a partial last line (%d bytes) left by an interrupted run", path, size - good)
    return qids


_QID = re.compile(rb'\{"qid": ("(?:[^"\\]|\\.)*")')  # the qid opens every line this module writes


def iter_lines(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def append_lines(f, records: list[dict]) -> None:
    f.write("".join(json.dumps(r) + "\n" for r in records))
    f.flush()
    os.fsync(f.fileno())


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
