"""Resolve a dataset name or directory to a BEIR-layout directory.

A name resolves, in order, in ``$TANDEM_DATA`` (a folder of dataset directories), in the user
cache (``$TANDEM_CACHE`` or ``~/.cache/tandem``)/datasets, and finally by downloading the
official archive, checking the sha256 of every file against the published values before the
dataset is moved into the cache.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tandem.errors import DatasetNotFoundError, IncompatibleArtifactError
from tandem.io import sha256_file

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"


@dataclass(frozen=True)
class KnownDataset:
    url: str
    files: dict[str, str]  # relative path -> sha256


KNOWN: dict[str, KnownDataset] = {
    "scifact": KnownDataset(
        url=BEIR_URL.format(name="scifact"),
        files={
            "corpus.jsonl": "dec31c8182f3d744c7d2c09423756fd1d17cbef75808db13ba01cc0aab4d1ac6",
            "queries.jsonl": "8ff84a7c903f722981cd8d595c022660140c51867b27608a6d4910db86080313",
            "qrels/train.tsv": "a53f2114831916c096b6c37d9e54da68cef4efdcdbd5ed46533601af972acf1d",
            "qrels/test.tsv": "0864bb985e0ca2367ba217977e72004d549054b2b06666ed9d4825ac7c21284c",
        },
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("TANDEM_CACHE", Path.home() / ".cache" / "tandem"))


def _is_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("corpus.jsonl", "corpus.jsonl.gz", "collection.tsv"))


def resolve_dataset(name_or_dir: str | os.PathLike, download: bool = True) -> Path:
    """Return the directory of a dataset given as a path or as a name (see module docstring)."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    if os.sep in name or name.startswith("."):
        raise DatasetNotFoundError(f"{name}: no such dataset directory")
    searched = []
    if os.environ.get("TANDEM_DATA"):
        for root in os.environ["TANDEM_DATA"].split(os.pathsep):
            cand = Path(root) / name
            searched.append(str(cand))
            if _is_dataset(cand):
                return cand
    cached = cache_dir() / "datasets" / name
    searched.append(str(cached))
    if _is_dataset(cached):
        return cached
    if name not in KNOWN or not download:
        known = ", ".join(sorted(KNOWN))
        raise DatasetNotFoundError(
            f"dataset {name!r} not found (looked in {', '.join(searched)}). Pass a BEIR-layout directory, or set "
            f"TANDEM_DATA to a folder that holds {name}/; datasets tandem can download: {known}")
    return download_dataset(name, cached)


def download_dataset(name: str, dest: Path) -> Path:
    """Download a known dataset, verify every file's sha256, then move it into ``dest`` atomically."""
    spec = KNOWN[name]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{name}.") as tmp:
        archive = Path(tmp) / "archive.zip"
        log.info("downloading %s from %s", name, spec.url)
        try:
            with urllib.request.urlopen(spec.url, timeout=60) as resp, open(archive, "wb") as out:
                shutil.copyfileobj(resp, out)
        except OSError as e:
            raise DatasetNotFoundError(
                f"could not download {name} from {spec.url} ({e}). Offline? Put the dataset in a folder "
                f"and set TANDEM_DATA to it (TANDEM_DATA/{name}/corpus.jsonl ...), or pass --data DIR") from None
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        root = Path(tmp) / name
        for rel, expected in spec.files.items():
            got = sha256_file(root / rel) if (root / rel).exists() else "missing"
            if got != expected:
                raise IncompatibleArtifactError(f"{spec.url}: {rel} has sha256 {got}, expected {expected}; not using "
                                                "it")
        os.replace(root, dest)
    return dest
