"""Errors a user can cause, and can fix.

Every message says what is wrong and what to do about it. The CLI and the apps print
the message of a :class:`ScalpelError` and exit; they never show a traceback for one.
"""

from __future__ import annotations


class ScalpelError(Exception):
    """Base class of every error that bad input, not a bug, can cause."""


class ConfigError(ScalpelError, ValueError):
    """A configuration is invalid. The message lists every problem found, not just the first."""

    def __init__(self, what: str, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {what} ({len(self.problems)} problem(s)):\n{lines}")


class TargetNotFoundError(ScalpelError):
    """A method's targets matched no module of the model."""


class UnknownNameError(ScalpelError, KeyError):
    """A name (method, scorer, pipeline, preset, ...) is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AdapterError(ScalpelError):
    """An adapter directory is missing, incomplete or unreadable."""


class BaseModelMismatchError(AdapterError):
    """An adapter was trained on a different base model than the one it is loaded onto."""


class DataError(ScalpelError):
    """Input data is missing, malformed or inconsistent."""


class TrainingError(ScalpelError):
    """Training cannot go on (a non-finite loss, an empty dataset, ...)."""


class CheckpointError(ScalpelError):
    """A checkpoint is missing, corrupt, or belongs to another run."""


class MissingDependencyError(ScalpelError, ImportError):
    """An optional package is needed for this feature and is not installed."""

    def __init__(self, package: str, feature: str, extra: str | None = None):
        how = f"pip install 'scalpel-peft[{extra}]'" if extra else f"pip install {package}"
        super().__init__(f"{feature} needs the package '{package}', which is not installed: run `{how}`")
        self.package = package
