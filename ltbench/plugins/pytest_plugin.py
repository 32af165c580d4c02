"""ltbench's pytest plugin (entry point ``pytest11``): fixtures for method authors.

Every fixture's name starts with ``ltbench_`` so that it cannot collide with a project's own. Loading the
plugin imports neither torch nor the engine: a project that merely has ltbench installed starts pytest as
fast as before; the first fixture a test uses imports :mod:`ltbench.plugins.testing`.

``ltbench_tiny_run``
    A built (untrained) run of ``ce`` on ``synthetic-lt`` at the smoke budget: a real ``Run`` with a tiny
    model, data and plugin manager, for calling a hook directly.
``ltbench_tiny_batch``
    A training ``Batch`` of 16 augmented images (and labels) from ``ltbench_tiny_run``.
``ltbench_tiny_model``
    The ``LTModel`` of ``ltbench_tiny_run`` (a tiny CNN with a linear head).
``ltbench_catalog``
    A fresh catalog of every installed plugin (add your own classes with ``catalog_with(MyMethod)``).
``ltbench_method_check``
    ``ltbench_method_check(MyMethod, **kwargs)`` runs :func:`ltbench.plugins.testing.check_method` in a temporary
    directory.

The unprefixed names of ltbench 0.2 (``tiny_run``, ``tiny_batch``, ``tiny_model``, ``method_check``) still
work for one minor version and warn (``DeprecationWarning``); a project's own fixture of the same name
overrides them, as pytest does for any plugin fixture.
"""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture
def ltbench_catalog():
    """A fresh catalog of every installed plugin."""
    from ltbench.plugins.testing import catalog_with

    return catalog_with()


@pytest.fixture
def ltbench_tiny_run(tmp_path):
    """A built (untrained) run of ``ce`` on ``synthetic-lt`` at the smoke budget."""
    from ltbench.plugins.testing import build_tiny_run

    return build_tiny_run(tmp_path)


@pytest.fixture
def ltbench_tiny_batch(ltbench_tiny_run):
    """A training ``Batch`` of 16 augmented images (and labels) from ``ltbench_tiny_run``."""
    import torch

    from ltbench.training.loop import image_batch

    return image_batch(ltbench_tiny_run, ltbench_tiny_run.train_labels)(torch.arange(16))


@pytest.fixture
def ltbench_tiny_model(ltbench_tiny_run):
    """The ``LTModel`` of ``ltbench_tiny_run``."""
    return ltbench_tiny_run.model


@pytest.fixture
def ltbench_method_check(tmp_path):
    """``ltbench_method_check(MyMethod, **kwargs)``: :func:`ltbench.plugins.testing.check_method` in ``tmp_path``."""
    from ltbench.plugins.testing import check_method

    return lambda cls, **kwargs: check_method(cls, tmp_path, **kwargs)


def _deprecated(new: str):
    def fixture(request):
        warnings.warn(f"the fixture {request.fixturename!r} is now {new!r}; the old name will stop working in the "
                      f"next minor version of ltbench", DeprecationWarning, stacklevel=2)
        return request.getfixturevalue(new)

    fixture.__doc__ = f"Deprecated: use ``{new}``."
    return fixture


tiny_run = pytest.fixture(_deprecated("ltbench_tiny_run"), name="tiny_run")
tiny_batch = pytest.fixture(_deprecated("ltbench_tiny_batch"), name="tiny_batch")
tiny_model = pytest.fixture(_deprecated("ltbench_tiny_model"), name="tiny_model")
method_check = pytest.fixture(_deprecated("ltbench_method_check"), name="method_check")
