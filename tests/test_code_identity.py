"""Code identity beyond the file that defines a method's class (issue 38 item 6; issue 40's flawed case "a helper
module edit is invisible to the code digest").

A record states, for each method, the digest of every module of the plugin's own package that the method's module
imports (``versions.plugins[name].modules_sha256``), and, for a backbone or dataset a plugin registered, the digest
of the modules that define it (``versions.components``). A change to any of them is named by ``run`` (which keeps
the record) and marked by ``status``; records that predate the new fields are compared as before.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import ltbench.plugins.catalog
from ltbench.cli import main
from ltbench.grid import status as status_mod
from ltbench.plugins.catalog import PluginInfo, build_catalog, get_catalog
from ltbench.plugins.testing import run_methods
from ltbench.results import records

PACKAGE = {
    "__init__.py": '"""a plugin package written by the test"""\n',
    "method.py": (
        "from ltbench.api import Method, MethodMetadata, hookimpl\n"
        "from .helpers import scale  # relative\n"
        "import torch.nn.functional as F  # another distribution: never followed\n\n\n"
        "class IdMethod(Method):\n"
        "    name = 'id-method'\n"
        "    metadata = MethodMetadata(title='code identity probe')\n\n"
        "    def later(self):\n"
        "        from PKG import lazy  # inside a function: imported when it runs, still its code\n"
        "        return lazy.X\n"),
    "helpers.py": "from .sub.tool import twice\n\n\ndef scale(x):\n    return twice(x)\n",
    "sub/__init__.py": "",
    "sub/tool.py": "from .. import deep  # two levels up\n\n\ndef twice(x):\n    return 2 * x * deep.ONE\n",
    "deep.py": "ONE = 1.0\n",
    "lazy.py": "X = 1\n",
    "unrelated.py": "import PKG.deep\nY = 2  # imports a helper, but nothing imports it\n",
    "nets.py": (
        "from ltbench.training.backbones import TinyCNN\nfrom PKG import netparts\n\n\n"
        "def build(in_chans):\n    return TinyCNN(in_chans, width=netparts.WIDTH)\n"),
    "netparts.py": "WIDTH = 8\n",
    "data.py": (
        "from ltbench.data.datasets import load_synthetic_lt\n\n\n"
        "def load(data_root, imbalance_factor):\n    return load_synthetic_lt(data_root, imbalance_factor)\n"),
    "plugin.py": (
        "from ltbench.api import BackboneSpec, Budget, DatasetSpec, hookimpl\n"
        "from PKG import data, nets\nfrom PKG.method import IdMethod\n\n\n"
        "@hookimpl\ndef ltbench_register_methods(register):\n    register(IdMethod)\n\n\n"
        "@hookimpl\ndef ltbench_register_backbones(register):\n"
        "    register(BackboneSpec('id-net', 'a tiny CNN from a plugin', nets.build))\n\n\n"
        "@hookimpl\ndef ltbench_register_datasets(register):\n"
        "    register(DatasetSpec('id-data', 'synthetic-lt from a plugin', data.load,\n"
        "                         {'smoke': Budget(backbone='id-net', epochs=1, batch_size=64, lr=0.05,\n"
        "                                          stage2_epochs=1, smoke=True, eval_batch_size=500)},\n"
        "                         default_imbalance_factor=30.0, crop_padding=2, image_shape=(16, 16, 3)))\n"),
}


def _write_package(root: Path, name: str) -> Path:
    for rel, text in PACKAGE.items():
        path = root / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("PKG", name))
    return root / name


@pytest.fixture
def plugin(tmp_path, monkeypatch, request):
    """A plugin package (method, helpers, backbone, dataset) on sys.path, registered in a catalog as an entry point
    would register it; forgotten again afterwards."""
    name = f"idpkg_{request.node.name.split('[')[0][-20:].replace('-', '_')}"
    pkg = _write_package(tmp_path / "site", name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import importlib

    module = importlib.import_module(f"{name}.plugin")
    catalog = build_catalog(entry_points=False)  # the core's datasets and backbones, and this plugin
    catalog.add_plugin(module, PluginInfo(name, f"{name}.plugin", "idpkg-dist", "0.1"))
    assert not catalog.broken, catalog.broken
    yield name, pkg, catalog
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def _edit(path: Path, extra: str = "# edited\n") -> None:
    path.write_text(path.read_text() + extra)


# -- what a record states --------------------------------------------------------------------------------------


def test_a_method_states_the_modules_of_its_package_that_it_imports_transitively_and_only_those(plugin):
    name, pkg, catalog = plugin
    ident = records.plugin_identity(catalog.method("id-method"))
    assert ident["distribution"] == "idpkg-dist" and ident["version"] == "0.1"
    assert ident["source_sha256"] == records.source_digest(catalog.method("id-method").cls)  # unchanged meaning
    expected = {name, f"{name}.helpers", f"{name}.sub", f"{name}.sub.tool", f"{name}.deep", f"{name}.lazy"}
    assert set(ident["modules_sha256"]) == expected  # not the class's own file, not `unrelated`, no torch/ltbench
    assert ident["modules_sha256"][f"{name}.deep"] == records._file_digest(pkg / "deep.py")
    assert all(len(d) == 16 for d in ident["modules_sha256"].values())


def test_a_plugin_backbone_and_dataset_state_their_modules_and_the_core_ones_state_nothing(plugin):
    name, _pkg, catalog = plugin
    found = records.components(catalog, catalog.dataset("id-data"), "id-net")
    backbone, dataset = found["backbone:id-net"], found["dataset:id-data"]
    assert backbone["module"] == f"{name}.nets" and backbone["distribution"] == "idpkg-dist"
    assert {f"{name}.netparts", f"{name}.plugin", name} <= set(backbone["modules_sha256"])
    assert dataset["module"] == f"{name}.data" and len(dataset["source_sha256"]) == 16
    assert records.components(catalog, catalog.dataset("synthetic-lt"), "tiny-cnn") == {}  # core: git commit
    assert records.components(catalog, catalog.dataset("synthetic-lt"), "no-such-net") == {}  # never raises


def test_built_in_methods_name_only_the_modules_they_import(tmp_path, monkeypatch):
    """All built-ins share one package: a change to bcl.py is not ce's, but losses.py is posthoc's."""
    catalog = get_catalog()
    ce, posthoc = catalog.method("ce"), catalog.method("logit-adjust-posthoc")
    assert "ltbench_builtin.bcl" not in records.plugin_identity(ce)["modules_sha256"]
    assert {"ltbench_builtin.losses", "ltbench_builtin.decoupling"} <= set(
        records.plugin_identity(posthoc)["modules_sha256"])
    record = {"versions": {"plugins": {"ce": records.plugin_identity(ce),
                                       "logit-adjust-posthoc": records.plugin_identity(posthoc)}}}
    assert records.changed_code(record, catalog) == []

    real = records._module_file

    def edited(module: str):  # the file as if edited: a copy with one more line
        copy = tmp_path / f"{module}.py"
        copy.write_bytes(real(module).read_bytes() + b"# edited\n")
        return lambda name: copy if name == module else real(name)

    monkeypatch.setattr(records, "_module_file", edited("ltbench_builtin.bcl"))
    assert records.changed_code(record, catalog) == []
    monkeypatch.setattr(records, "_module_file", edited("ltbench_builtin.losses"))
    [line] = records.changed_code(record, catalog)
    assert line.startswith("method 'logit-adjust-posthoc': helper module 'ltbench_builtin.losses' changed (source ")


# -- run and status name what changed -------------------------------------------------------------------------


def _status_row(runs: Path) -> dict:
    [row] = status_mod.collect(runs)
    return row


def test_run_and_status_name_a_changed_helper_backbone_or_dataset_module_and_nothing_when_unchanged(
        plugin, tmp_path, monkeypatch, capsys):
    name, pkg, catalog = plugin
    monkeypatch.setattr(ltbench.plugins.catalog, "_CATALOG", catalog)  # what `status` and the CLI see
    runs = tmp_path / "runs"
    [rec] = run_methods(catalog, ["id-method"], runs, dataset="id-data")
    assert rec["status"] == "completed"
    on_disk = json.loads(next(runs.rglob("result.json")).read_text())
    versions = on_disk["versions"]
    assert set(versions["plugins"]["id-method"]["modules_sha256"]) >= {f"{name}.helpers", f"{name}.deep"}
    assert set(versions["components"]) == {"backbone:id-net", "dataset:id-data"}

    def again() -> str:
        capsys.readouterr()
        [same] = run_methods(catalog, ["id-method"], runs, dataset="id-data")
        assert same["started_at"] == rec["started_at"]  # kept, never retrained: that is the user's call
        return capsys.readouterr().err

    # an unchanged checkout: nothing to say
    assert "code changed" not in again()
    assert records.changed_code(on_disk, catalog) == []
    row = _status_row(runs)
    assert row["state"] == "completed" and not row["code_changed"] and "code changed" not in row["detail"]

    # a helper two imports away from the method's module
    deep = pkg / "deep.py"
    original = deep.read_text()
    _edit(deep)
    err = again()
    assert f"helper module '{name}.deep' changed (source " in err and "--rerun" in err
    assert "method 'id-method'" in err and "helpers'" not in err  # only the module that changed is named
    row = _status_row(runs)
    assert row["code_changed"] and f"helper module '{name}.deep' changed" in row["detail"]
    capsys.readouterr()
    assert main(["status", str(runs)]) == 0
    assert f"helper module '{name}.deep' changed" in capsys.readouterr().out

    deep.write_text(original)  # put back: nothing changed again
    assert "code changed" not in again() and not _status_row(runs)["code_changed"]

    # the backbone's builder's helper, and the dataset's module
    _edit(pkg / "netparts.py")
    _edit(pkg / "data.py")
    err = again()
    assert f"backbone 'id-net': module '{name}.netparts' changed" in err
    assert f"dataset 'id-data': module '{name}.data' changed" in err
    detail = _status_row(runs)["detail"]
    assert f"module '{name}.netparts' changed" in detail and f"module '{name}.data' changed" in detail

    # a module nothing of the run imports changes nothing
    (pkg / "netparts.py").write_text(PACKAGE["netparts.py"])
    (pkg / "data.py").write_text(PACKAGE["data.py"].replace("PKG", name))
    _edit(pkg / "unrelated.py")
    assert "code changed" not in again() and not _status_row(runs)["code_changed"]


def test_a_record_without_the_new_fields_is_compared_as_before(plugin, tmp_path):
    """The committed records state only ``source_sha256``: a helper change must not make them all "changed", and
    a record's odd entries (it is untrusted input) are ignored, never a traceback."""
    name, pkg, catalog = plugin
    ident = records.plugin_identity(catalog.method("id-method"))
    legacy = {"versions": {"plugins": {"id-method": {k: ident[k] for k in ("distribution", "version",
                                                                            "source_sha256")}}}}
    _edit(pkg / "helpers.py")
    assert records.changed_code(legacy, catalog) == []
    stated = {"versions": {"plugins": {"id-method": ident}}}
    assert [line.split(" (source")[0] for line in records.changed_code(stated, catalog)] == [
        f"method 'id-method': helper module '{name}.helpers' changed"]

    odd_entries = [
        {"id-method": {**ident, "modules_sha256": ["x"]}},
        {"id-method": {**ident, "modules_sha256": {"../../etc/passwd": "ab", "os": "ab", "json": "00",
                                                   f"{name}.helpers": 7, f"{name}.nope": "zz", 3: "ab"}}},
        "not an object", None, [1, 2],
    ]
    for plugins in odd_entries:
        assert records.changed_code({"versions": {"plugins": plugins}}, catalog) == []
    for comps in ({"backbone:id-net": "x"}, {"backbone:id-net": {"modules_sha256": {"os": "ab"}}},
                  {"bogus": {}}, {"dataset:gone": {"module": "x", "source_sha256": "ab"}}, [1], None):
        assert records.changed_code({"versions": {"components": comps}}, catalog) == []
    for odd in ({}, {"versions": None}, {"versions": [1]}, {"versions": {"plugins": None, "components": 3}}):
        assert records.changed_code(odd, catalog) == []
    # a module the record states that is gone now is named as missing
    gone = {"versions": {"plugins": {"id-method": {**ident, "modules_sha256": {f"{name}.vanished": "ab" * 8}}}}}
    assert records.changed_code(gone, catalog) == [
        f"method 'id-method': helper module '{name}.vanished' changed (source abababab -> missing)"]
