"""ltbench: a benchmark suite for long-tailed image recognition.

Methods are pluggy plugins. A plugin module implements the registration
hooks in :mod:`ltbench.hookspecs` and registers :class:`ltbench.Method`
subclasses; each run instantiates the selected methods and calls their
stage hooks.
"""

from __future__ import annotations

import pluggy

__version__ = "0.2.0"

#: Marker for hook implementations, in plugin modules and on Method classes.
hookimpl = pluggy.HookimplMarker("ltbench")

from ltbench.errors import LtbenchError
from ltbench.plugins.method import Method, MethodMetadata

__all__ = ["hookimpl", "Method", "MethodMetadata", "LtbenchError", "__version__"]
