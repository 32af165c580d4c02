"""Plugin API 1.0: one public surface, ``ltbench.api``, that the built-in and example plugins use alone."""

import ast
from pathlib import Path

import pytest

import ltbench.api as api

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"


def private_imports(path: Path, root: Path = ROOT) -> list[str]:
    """The imports of ltbench internals in one file: anything of ``ltbench`` but ``ltbench.api``."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ltbench":
                bad += [f"from ltbench import {a.name}" for a in node.names if a.name != "api"]
            elif node.module.startswith("ltbench.") and node.module != "ltbench.api":
                bad.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            bad += [f"import {a.name}" for a in node.names
                    if a.name.startswith("ltbench.") and a.name != "ltbench.api"]
    return [f"{path.relative_to(root)}: {line}" for line in bad]


def plugin_sources() -> list[Path]:
    return [p for p in sorted(PLUGINS.rglob("*.py")) if not {"build", ".eggs"} & set(p.parts)
            and not any(part.endswith(".egg-info") for part in p.parts)]


def test_the_plugins_import_nothing_private():
    files = plugin_sources()
    assert len(files) > 15
    assert [line for f in files for line in private_imports(f)] == []


def test_the_check_catches_a_private_import(tmp_path):
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from ltbench.api import Method\nfrom ltbench.training import Run\nimport ltbench.data.samplers\n"
                      "from ltbench import hookimpl, api\n")
    assert private_imports(sneaky, tmp_path) == ["sneaky.py: from ltbench.training import ...",
                                                 "sneaky.py: import ltbench.data.samplers",
                                                 "sneaky.py: from ltbench import hookimpl"]


#: the names of API 1.0, as it was released: a minor version may add names, never remove one
API_1_0 = ["hookimpl", "Method", "MethodMetadata", "Reporter", "BackboneSpec", "DatasetSpec", "Budget", "Run", "Batch",
           "SecondStage", "ModelOutput", "LTModel", "extract_features", "class_balanced", "class_share_sampler",
           "instance_balanced", "as_soft", "is_soft", "mix_pairs", "cross_entropy", "soft_cross_entropy",
           "weighted_mean", "evaluate_predictions", "per_class_figure", "epoch_scalars", "final_metrics",
           "flat_config", "CifarResNet", "projection_head", "is_distributed", "rank", "world_size", "shard_rows",
           "gather_rows", "all_reduce_sum", "agree", "barrier", "LtbenchError", "ConfigError", "PluginContractError",
           "build_catalog", "Catalog", "list_methods", "check_method", "check_distributed", "check_streaming",
           "catalog_with", "run_methods", "build_tiny_run"]


def test_api_1_1_keeps_every_1_0_name_and_lists_what_it_adds():
    assert api.API_VERSION == "1.1"
    assert [name for name in API_1_0 if name not in api.__all__] == []
    added = api.ADDED["1.1"]["names"]
    assert sorted(set(api.__all__) - set(API_1_0) - {"API_VERSION"}) == sorted(added)
    page = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    assert "## What 1.1 adds" in page and all(f"[`{name}`](#{name.lower()})" in page for name in added)


def test_every_public_name_resolves_and_says_what_it_is():
    for name in api.__all__:
        obj = getattr(api, name)
        if name != "API_VERSION":
            assert (getattr(obj, "__doc__", None) or "").strip(), f"ltbench.api.{name} has no docstring"


def test_the_testing_kit_is_imported_on_first_use_only():
    import subprocess
    import sys

    code = "import sys, ltbench.api as a; assert 'ltbench.plugins.testing' not in sys.modules; a.check_method; " \
           "assert 'ltbench.plugins.testing' in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        api.nothing  # noqa: B018


def test_the_former_testing_kit_path_still_works_and_warns_with_the_new_one(monkeypatch):
    """``ltbench.testing`` moved (to an internal module; the kit's public home is ``ltbench.api``): the old path
    works for one minor version, as the deprecation policy promises, and its warning names the new one."""
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "ltbench.testing", raising=False)
    with pytest.warns(DeprecationWarning, match=r"ltbench\.testing is deprecated.*from ltbench\.api"):
        old = importlib.import_module("ltbench.testing")
    for name in api._TESTING_KIT:
        assert getattr(old, name) is getattr(api, name)
    assert old.BroadcastProbe is importlib.import_module("ltbench.plugins.testing").BroadcastProbe
