"""The dataset and backbone guides (issue 38, item 1): their code is the example, written against ``ltbench.api``
alone, registered through the registration hooks a third-party package implements, and trained."""

from __future__ import annotations

import ast
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from ltbench.api import DataNotFoundError, exponential_counts
from ltbench.plugins.catalog import PluginInfo
from ltbench.plugins.testing import catalog_with, run_methods

DOCS = Path(__file__).resolve().parents[1] / "docs"


def guide_blocks(page: str) -> list[str]:
    """The page's ``python`` code blocks, in order: the code the reader copies."""
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def private_ltbench_imports(code: str) -> list[str]:
    """The imports of ``code`` from ltbench other than ``ltbench.api`` (the one public surface)."""
    bad = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ltbench":
            if node.module != "ltbench.api":
                bad.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            bad += [f"import {a.name}" for a in node.names
                    if a.name.split(".")[0] == "ltbench" and a.name != "ltbench.api"]
    return bad


def guide_plugin(page: str, monkeypatch) -> types.ModuleType:
    """The guide's code blocks run, in order, as the body of one plugin module (what an entry point loads)."""
    blocks = guide_blocks(page)
    assert blocks and private_ltbench_imports("\n".join(blocks)) == []
    assert any("from ltbench.api import" in block for block in blocks)
    module = types.ModuleType(f"guide_{page.replace('-', '_').removesuffix('.md')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for block in blocks:
        exec(compile(block, page, "exec"), module.__dict__)
    return module


def catalog_with_plugin(module: types.ModuleType):
    """A catalog (core, installed entry points) plus ``module``, registered as an entry point's module is."""
    catalog = catalog_with()
    catalog.add_plugin(module, PluginInfo(module.__name__, module.__name__, "my-package", "0.1"))
    assert catalog.broken == []
    return catalog


def test_the_import_check_catches_an_internal_import():
    code = ("from ltbench.api import LTData\nfrom ltbench.data.split import long_tailed_split\nimport ltbench.errors\n"
            "from ltbench import hookimpl\nimport numpy as np\n")
    assert private_ltbench_imports(code) == ["from ltbench.data.split import long_tailed_split",
                                             "import ltbench.errors", "from ltbench import hookimpl"]


def write_shapes(root: Path, per_class: int = 60, test_per_class: int = 20) -> Path:
    """A balanced ``shapes.npz`` as the dataset guide expects it: 10 classes of 16x16 RGB images, a colour per
    class under noise (learnable in a few epochs)."""
    rng = np.random.default_rng(0)
    colours = rng.uniform(0.2, 0.8, size=(10, 3))

    def draw(n: int):
        labels = np.repeat(np.arange(10), n)
        images = colours[labels][:, None, None, :] + rng.normal(0, 0.15, size=(len(labels), 16, 16, 3))
        return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels

    (x_train, y_train), (x_test, y_test) = draw(per_class), draw(test_per_class)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "shapes.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return root


def test_the_dataset_guide_registers_a_dataset_that_trains(tmp_path, monkeypatch):
    module = guide_plugin("writing-a-dataset.md", monkeypatch)
    catalog = catalog_with_plugin(module)
    assert catalog.datasets["shapes-lt"] is module.SHAPES_LT

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError, match=r"no shapes\.npz in .*empty.*--data-root DIR"):
        run_methods(catalog, ["ce"], tmp_path / "runs", dataset="shapes-lt", data_root=str(empty))
    with pytest.raises(DataNotFoundError, match=r"no shapes\.npz \(no --data-root given\)"):
        run_methods(catalog, ["ce"], tmp_path / "runs", dataset="shapes-lt")

    root = write_shapes(tmp_path / "data")
    (rec,) = run_methods(catalog, ["ce"], tmp_path / "runs", dataset="shapes-lt", data_root=str(root))
    assert rec["status"] == "completed", rec.get("error")
    assert rec["dataset"] == "shapes-lt-if10"
    assert rec["train_counts"] == exponential_counts(60 - 10, 10, 10.0)  # n_max leaves 10 per class for validation
    assert (rec["val_size"], rec["test_size"]) == (10 * 10, 10 * 20)
    assert rec["class_names"][0] == "shape 0"


def test_the_backbone_guide_registers_a_backbone_that_trains(tmp_path, monkeypatch):
    module = guide_plugin("writing-a-backbone.md", monkeypatch)
    catalog = catalog_with_plugin(module)
    net = catalog.backbone("small-vgg").build(3)
    assert isinstance(net, module.SmallVGG) and net.num_features == 64

    (rec,) = run_methods(catalog, ["ce"], tmp_path, settings={"backbone": "small-vgg"})
    assert rec["status"] == "completed", rec.get("error")
    assert rec["config"]["backbone"] == "small-vgg"
    head = net.num_features * 10 + 10  # the core's linear classifier on synthetic-lt's 10 classes
    assert rec["cost"]["parameters"] == sum(p.numel() for p in net.parameters()) + head
