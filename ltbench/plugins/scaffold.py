"""``ltbench new-plugin NAME``: a new plugin package that installs and passes its own test as generated.

The package has a ``pyproject.toml`` with the ``ltbench`` entry point, one method (a cross-entropy with an
entropy bonus, to replace with yours) and a test that runs ltbench's conformance check
(:func:`ltbench.plugins.testing.check_method`) and a defining property of the method.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
from pathlib import Path

from ltbench.errors import ConfigError
from ltbench.results.records import MAX_NAME

PYPROJECT = '''[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "ltbench plugin: {name}"
requires-python = ">=3.10"
dependencies = ["ltbench"]

# the entry point makes ltbench find the method (`ltbench ls methods`)
[project.entry-points.ltbench]
{name} = "{package}"

[tool.setuptools]
packages = ["{package}"]
'''

MODULE = '''"""{name}: an ltbench method plugin. Replace the example's hooks with your method's
(the hook reference: ltbench's docs/hooks.md; a guide: docs/writing-a-method.md)."""

import torch

from ltbench.api import ConfigError, Method, MethodMetadata, hookimpl


class {cls}(Method):
    name = "{name}"
    options = {{"beta": 0.1}}
    metadata = MethodMetadata(
        title="{name}: cross-entropy with an entropy bonus (an example to replace)",
        paper="", venue="", year=None, family="loss",
        interpretations=(),
    )

    def check_options(self):
        if self.opts["beta"] < 0:
            raise ConfigError(f"{name}.beta must be >= 0, got {{self.opts['beta']}}")

    @hookimpl
    def ltbench_extra_losses(self, output):
        log_p = torch.log_softmax(output.logits.float(), dim=1)
        entropy = -(log_p.exp() * log_p).sum(1).mean()
        return {{"entropy_bonus": -self.opts["beta"] * entropy}}


@hookimpl
def ltbench_register_methods(register):
    register({cls})
'''

TEST = '''"""{name}'s own tests (pytest, with the package installed); the fixtures come with ltbench."""

import pytest
import torch

from ltbench.api import ModelOutput, build_catalog
from {package} import {cls}


def test_ltbench_finds_it_through_its_entry_point():
    catalog = build_catalog()
    assert catalog.method("{name}").cls is {cls} and not catalog.broken


def test_it_passes_ltbench_conformance_check(ltbench_method_check):
    assert ltbench_method_check({cls})["status"] == "completed"


def test_the_bonus_is_the_entropy_of_the_predictions_times_beta():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    out = {cls}(beta=0.5).ltbench_extra_losses(output=ModelOutput(logits, None, None))
    entropy = torch.tensor([torch.log(torch.tensor(2.0)), 0.0]).mean()  # uniform row, then a confident one
    assert torch.allclose(out["entropy_bonus"], -0.5 * entropy, atol=1e-6)


def test_a_negative_beta_is_refused():
    with pytest.raises(Exception, match="beta must be >= 0"):
        {cls}(beta=-1.0)
'''


#: package names a generated plugin may never have: ltbench's own (its built-in plugins live in ltbench_builtin,
#: formerly ltbench_plugins, a name a third party could pick by accident; ltbench new-plugin plugins generated it)
RESERVED_PACKAGES = ("ltbench_builtin", "ltbench_plugins", "ltbench_testing")


def create(name: str, parent: Path) -> Path:
    """Write the package for method ``name`` into ``parent/ltbench-<name>/``; return its directory."""
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name) or name.endswith("-"):
        raise ConfigError(f"new-plugin: a method name is lower-case letters, digits and '-', starting with a "
                          f"letter (e.g. my-method), got {name!r}")
    if len(name) > MAX_NAME:  # it names a folder, a package and every run directory of the method
        raise ConfigError(f"new-plugin: a method name is at most {MAX_NAME} characters (it becomes part of file "
                          f"names), got one of {len(name)}: {name[:20]}...")
    package = "ltbench_" + name.replace("-", "_")
    taken = importlib.util.find_spec(package) is not None
    if taken or package in RESERVED_PACKAGES:
        raise ConfigError(f"new-plugin: the package name {package!r} for method {name!r} is taken"
                          f"{' by an installed module' if taken else ' by ltbench itself'}: a package of that name "
                          f"would shadow it, or be shadowed by it; choose another method name")
    cls = "".join(part.capitalize() for part in name.split("-"))
    if keyword.iskeyword(cls):
        cls += "Method"
    root = Path(parent) / f"ltbench-{name}"
    if root.exists():
        raise ConfigError(f"new-plugin: {root} already exists; choose another name or directory")
    values = {"name": name, "dist": f"ltbench-{name}", "package": package, "cls": cls}
    (root / package).mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text(PYPROJECT.format(**values))
    (root / package / "__init__.py").write_text(MODULE.format(**values))
    (root / "tests" / f"test_{package}.py").write_text(TEST.format(**values))
    (root / "README.md").write_text(f"# ltbench-{name}\n\nAn ltbench method plugin.\n\n```bash\n"
                                    f"pip install -e .\npython -m pytest -q\nltbench run --methods {name} "
                                    f"--budget smoke\n```\n")
    return root
