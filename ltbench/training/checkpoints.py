"""Checkpoints that cannot run code.

Every checkpoint is written with :func:`save` and read with :func:`load`,
which uses ``torch.load(weights_only=True)``: a file that would need
arbitrary objects unpickled is refused, never executed. What may go in a
checkpoint is tensors, numpy arrays and numbers (converted to tensors and
Python scalars here, and back on load), and dicts, lists, tuples, strings,
numbers, booleans and ``None``. A method whose ``state_dict`` holds anything
else fails its run by name when the checkpoint is written.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltbench.errors import CheckpointError, PluginContractError

_NDARRAY = "__ltbench_ndarray__"
_PLAIN = (str, int, float, bool, type(None))


def to_safe(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with numpy arrays and scalars made loadable by ``weights_only=True``."""
    if isinstance(obj, np.generic):  # before the plain types: np.float64 is a float, and pickles as numpy's
        return obj.item()
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise PluginContractError(f"{where} holds a numpy array of Python objects; checkpoints hold numbers only")
        # int64 holds every unsigned integer dtype numpy's RNG state uses; the dtype is restored on load
        data = obj.astype(np.int64) if obj.dtype.kind == "u" else obj
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(data)), "dtype": obj.dtype.str}
    if isinstance(obj, dict):
        return {k: to_safe(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise PluginContractError(f"{where} holds a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold "
                              f"tensors, numpy arrays, numbers, strings and dicts/lists/tuples of them only")


def from_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        if _NDARRAY in obj:
            return obj[_NDARRAY].numpy().astype(np.dtype(obj["dtype"]))
        return {k: from_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_safe(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_safe(v) for v in obj)
    return obj


def save(obj: Any, path: Path, where: str = "checkpoint") -> None:
    from ltbench.results.records import atomic_torch_save

    atomic_torch_save(to_safe(obj, where), path)


def load(path: Path) -> Any:
    """Read a checkpoint; a refused or unreadable file is a :class:`CheckpointError` naming it and the remedy."""
    remedy = "pass --rerun to retrain this run from scratch (or delete the file)"
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only" in text.lower() or "weights_only" in text.lower():
            found = re.search(r"GLOBAL ([\w.]+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(f"refused to load {path}: it needs arbitrary Python objects{what} unpickled, which "
                                  f"could run code; ltbench writes checkpoints of tensors and plain types only; "
                                  f"{remedy}") from None
        raise CheckpointError(f"checkpoint {path} is corrupt ({text.strip()[:200]}); {remedy}") from None
    except Exception as exc:  # truncated zip, garbage bytes, EOF ...
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: "
                              f"{str(exc).strip()[:200]}); {remedy}") from None
    return from_safe(raw)
