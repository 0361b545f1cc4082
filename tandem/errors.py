"""Exceptions raised by tandem.

Every error a user can cause derives from :class:`TandemError`, and also from the builtin
exception that fits, so ``except ValueError`` keeps working for callers that do not know us.
The CLI turns a ``TandemError`` into a one-paragraph message and a non-zero exit, no traceback.
"""

from __future__ import annotations


class TandemError(Exception):
    """Base class of every error tandem raises on purpose."""


class UsageError(TandemError, ValueError):
    """An argument, or a combination of them, is wrong: an option missing, an input empty, a value out of range."""


class UnknownIdError(TandemError, KeyError):
    """A query or passage id is not where it was looked up."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(TandemError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


class ServiceUnavailableError(TandemError, ConnectionError):
    """A server tandem talks to (a Milvus cluster) cannot be reached."""


class DataFormatError(TandemError, ValueError):
    """A data file is malformed. The message names the file and, where it applies, the line."""

    def __init__(self, path: object, problem: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class DatasetNotFoundError(TandemError, FileNotFoundError):
    """A dataset name or directory could not be resolved."""


class ConfigError(TandemError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


class IncompatibleArtifactError(TandemError, ValueError):
    """An index, checkpoint or model does not match what it is used with."""


class ModelLoadError(TandemError, OSError):
    """A model id or directory could not be loaded."""
