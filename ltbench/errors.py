"""Errors ltbench raises for bad input. Each message names the bad value and the valid ones."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LtbenchError(Exception):
    """A user-facing error: the CLI prints its message and exits with status 2."""


class UnknownNameError(LtbenchError):
    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Valid {kind}s: {', '.join(valid)}")
        self.name = name
        self.valid = valid


class ConfigError(LtbenchError):
    """A bad hyper-parameter or option; the message names the key."""


class DataNotFoundError(LtbenchError):
    """No copy of a dataset could be found or downloaded."""


class PluginContractError(LtbenchError):
    """A plugin returned something the hook specification does not allow."""


class CompositionError(LtbenchError):
    """Two methods composed with '+' both claim a hook that only one may answer."""


class CheckpointError(LtbenchError):
    """A checkpoint that is corrupt, or that would need arbitrary objects unpickled; names the file and the remedy."""
