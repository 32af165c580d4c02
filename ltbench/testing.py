"""Deprecated: the testing kit's former path. Import it from :mod:`ltbench.api` instead
(``from ltbench.api import check_method, catalog_with, run_methods``).

The kit moved to an internal module when the package was grouped by concern; this module keeps the old
``import ltbench.testing`` / ``from ltbench.testing import check_method`` working for one minor version, as the
API's deprecation policy promises, with a ``DeprecationWarning`` naming the new path. It goes in the next minor
version.
"""

from __future__ import annotations

import warnings

warnings.warn("ltbench.testing is deprecated and goes in the next minor version of ltbench: import the testing kit "
              "from ltbench.api instead (from ltbench.api import check_method, catalog_with, run_methods, ...)",
              DeprecationWarning, stacklevel=2)

from ltbench.plugins.testing import *  # noqa: E402,F401,F403  (every name the module had before it moved)
from ltbench.plugins.testing import (BroadcastProbe, build_tiny_run, catalog_with, check_distributed,  # noqa: E402,F401
                                     check_method, check_streaming, run_methods)
from ltbench.plugins.kit_checks import check_backbone, check_dataset, check_device  # noqa: E402,F401
