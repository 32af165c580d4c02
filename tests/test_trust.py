"""Trustworthy results: each test pins one fault that made a record lie or a run unsafe (issue 10).

A run is its configuration; one owner per plugin name; checkpoints cannot run code; any plugin fault fails only
its own cell; the exit status is honest; one process per run; data is checked before anything trains.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ltbench.plugins.catalog
from ltbench.cli import main
from ltbench.plugins.testing import catalog_with, run_methods

import toy_methods as toy

SMOKE = ["--datasets", "synthetic-lt", "--budget", "smoke", "--quiet"]


@pytest.fixture(scope="module")
def catalog():
    return catalog_with(*toy.ALL)


@pytest.fixture
def toy_cli(catalog, monkeypatch):
    """``ltbench`` commands in this process see the toy methods, as if a plugin package provided them."""
    monkeypatch.setattr(ltbench.plugins.catalog, "_CATALOG", catalog)


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(root).rglob("result.json"))]


# -- 1. a run is its configuration -----------------------------------------------------------------------------


def test_changed_settings_are_another_run_beside_the_first_and_a_row_of_their_own(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "ce", *SMOKE]) == 0
    assert main(["run", "--methods", "ce", *SMOKE, "--set", "lr=0.02"]) == 0
    assert main(["run", "--methods", "ce", *SMOKE, "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "already completed" not in out
    recs = {r["variant"]: r for r in _records(tmp_path / "runs")}
    assert set(recs) == {"ce", "ce [lr=0.02]", "ce [epochs=2]"}
    assert recs["ce"]["config"]["lr"] == 0.05 and recs["ce [lr=0.02]"]["config"]["lr"] == 0.02
    assert recs["ce [epochs=2]"]["epochs_completed"] == 2 and recs["ce"]["epochs_completed"] == 3
    assert len({r["config_id"] for r in recs.values()}) == 3

    # the same settings again: skipped, not retrained
    before = {r["variant"]: r["finished_at"] for r in _records(tmp_path / "runs")}
    time.sleep(1.1)
    assert main(["run", "--methods", "ce", *SMOKE, "--set", "lr=0.02"]) == 0
    assert {r["variant"]: r["finished_at"] for r in _records(tmp_path / "runs")} == before

    # --rerun replaces only the run it names
    assert main(["run", "--methods", "ce", *SMOKE, "--set", "lr=0.02", "--rerun"]) == 0
    after = {r["variant"]: r["finished_at"] for r in _records(tmp_path / "runs")}
    assert set(after) == set(before) and after["ce [lr=0.02]"] != before["ce [lr=0.02]"]
    assert after["ce"] == before["ce"] and after["ce [epochs=2]"] == before["ce [epochs=2]"]

    assert main(["leaderboard", "build", "runs", "--out", "lb"]) == 0
    assert len(list((tmp_path / "lb" / "records").rglob("result.json"))) == 3  # none overwrote another
    rows = [line.split("|")[1].strip() for line in (tmp_path / "lb" / "synthetic-lt-if30.md").read_text().splitlines()
            if line.startswith("| ce")]
    assert sorted(rows) == ["ce", "ce [epochs=2]", "ce [lr=0.02]"]


def test_method_options_are_resolved_with_their_defaults_and_name_the_variant(tmp_path):
    from ltbench.grid import config as C

    catalog = catalog_with(toy.Counter)
    spec = catalog.dataset("synthetic-lt")
    default = C.resolve(spec, "smoke", [toy.Counter])
    assert default["methods"] == {"counter": {"scale": toy.Counter.options["scale"]}}
    explicit = C.resolve(spec, "smoke", [toy.Counter], {"scale": str(toy.Counter.options["scale"])})
    assert C.config_id(explicit) == C.config_id(default)  # the default, spelled out, is the same run
    other = C.resolve(spec, "smoke", [toy.Counter], {"scale": "7"})
    assert C.config_id(other) != C.config_id(default)
    assert C.variant_label("counter", C.overrides(other, default)) == "counter [scale=7]"


def test_a_record_whose_config_differs_never_comes_back_for_another_config(catalog, tmp_path):
    (a,) = run_methods(catalog, ["ce"], tmp_path)
    (b,) = run_methods(catalog, ["ce"], tmp_path, settings={"weight_decay": "0.001"})
    assert b["finished_at"] and b["config"]["weight_decay"] == 0.001 and a["config"]["weight_decay"] != 0.001
    assert b["config_id"] != a["config_id"]


def test_the_leaderboard_refuses_to_average_two_configurations_into_one_row(tmp_path):
    from ltbench.errors import LtbenchError
    from ltbench.results.leaderboard import render

    def rec(seed, config_id):
        return {"dataset": "d-if1", "budget": "cpu", "method": "m", "methods": ["m"], "seed": seed, "variant": "m",
                "config_id": config_id, "metrics": {"overall": 1.0, "many": 1.0, "medium": 1.0, "few": 1.0},
                "wall_time_s": 1.0, "stage_wall_time_s": {}, "config": {"backbone": "b", "epochs": 1},
                "group_sizes": {}, "group_thresholds": {"few_below": 20, "many_above": 100},
                "method_metadata": {"m": {}}, "status": "completed"}

    render([rec(0, "a"), rec(1, "a")])
    with pytest.raises(LtbenchError, match="mix 2 configurations"):
        render([rec(0, "a"), rec(1, "b")])


# -- 2. one owner per name ---------------------------------------------------------------------------------------


def _fake_distribution(root: Path, dist: str, module: str, source: str) -> None:
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ltbench]\n{module} = {module}\n")


IMPOSTOR = '''
from ltbench import Method, MethodMetadata, hookimpl

class Impostor(Method):
    name = "{name}"
    metadata = MethodMetadata(title="impostor")

@hookimpl
def ltbench_register_methods(register):
    register(Impostor)
'''


def test_a_third_party_plugin_cannot_take_a_builtin_method(tmp_path, monkeypatch, capsys):
    # "aaa" sorts before "ltbench": the order that let the impostor win before
    _fake_distribution(tmp_path, "aaa-impostor", "aaa_impostor", IMPOSTOR.format(name="ce"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ltbench.plugins.catalog, "_CATALOG", None)
    monkeypatch.chdir(tmp_path)

    assert main(["plugins", "--json"]) == 0
    rows = {r["plugin"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ce"]["status"] == "loaded" and rows["ce"]["distribution"] == "ltbench"
    assert rows["aaa_impostor"]["status"] == "broken" and "belongs to ltbench itself" in rows["aaa_impostor"]["error"]

    assert main(["ls", "methods"]) == 0
    assert "plugin 'aaa_impostor' (aaa-impostor) is broken" in capsys.readouterr().err
    assert main(["run", "--methods", "ce", *SMOKE]) == 0
    assert "plugin 'aaa_impostor' (aaa-impostor) is broken" in capsys.readouterr().err
    (rec,) = _records(tmp_path / "runs")
    assert rec["versions"]["plugins"]["ce"]["distribution"] == "ltbench"


def test_a_package_that_shadows_the_builtin_plugins_is_refused_not_run_as_ltbench(tmp_path, monkeypatch, capsys):
    """Another distribution ships a top-level ltbench_builtin/ earlier on the path: ltbench's own entry point
    'ce' would import its ce.py and record it as 'ltbench 0.2.0'."""
    shadow = tmp_path / "site" / "ltbench_builtin"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    (shadow / "ce.py").write_text(IMPOSTOR.format(name="ce"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "ltbench_builtin" or m.startswith("ltbench_builtin.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(ltbench.plugins.catalog, "_CATALOG", None)
    monkeypatch.chdir(tmp_path)

    assert main(["plugins", "--json"]) == 0
    rows = {r["plugin"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ce"]["status"] == "broken" and rows["ce"]["distribution"] == "ltbench"
    assert str(shadow / "ce.py") in rows["ce"]["error"] and "shadows it" in rows["ce"]["error"]
    assert main(["run", "--methods", "ce", *SMOKE]) == 2  # refused: the impostor never trains as 'ce'
    assert "unknown method 'ce'" in capsys.readouterr().err
    assert not list(tmp_path.rglob("result.json"))


@pytest.mark.parametrize("first, second", [("aaa-one", "zzz-two"), ("zzz-one", "aaa-two")])
def test_two_plugins_registering_one_name_are_both_refused_whatever_the_install_order(tmp_path, monkeypatch, first,
                                                                                       second):
    from ltbench.plugins.catalog import build_catalog
    from ltbench.errors import LtbenchError

    for dist in (first, second):
        _fake_distribution(tmp_path, dist, dist.replace("-", "_"), IMPOSTOR.format(name="shared-name"))
    monkeypatch.syspath_prepend(str(tmp_path))
    catalog = build_catalog()
    broken = {b.distribution: b.error for b in catalog.broken}
    assert set(broken) == {first, second}
    for error in broken.values():
        assert first in error and second in error
    with pytest.raises(LtbenchError, match=f"{first}.*{second}|{second}.*{first}"):
        catalog.method("shared-name")


# -- 3 and 5. checkpoints cannot run code, and a corrupt one is a named error that loses nothing ----------------


class _Payload:
    """Unpickling this creates ``marker``: a stand-in for any code a crafted checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _interrupted(tmp_path: Path, method: str = "cb-sampling") -> Path:
    """A run of ``method`` as an interrupted one leaves it: config, history and a stage-1 checkpoint."""
    assert main(["run", "--methods", method, *SMOKE]) == 0
    (out,) = (tmp_path / "runs").rglob(f"{method}/*/seed0")
    for name in ("result.json", "stage1.pt", "stage1.json"):
        (out / name).unlink()
    return out


def test_a_crafted_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = _interrupted(tmp_path)
    marker = tmp_path / "payload-ran"
    torch.save({"epoch": 0, "model": _Payload(marker)}, out / "checkpoint-stage1.pt")
    assert main(["run", "--methods", "cb-sampling", *SMOKE]) == 1
    assert not marker.exists()
    (rec,) = _records(tmp_path / "runs")
    assert rec["status"] == "failed" and "refused to load" in rec["error"] and "open)" in rec["error"]
    assert str((out / "checkpoint-stage1.pt").relative_to(tmp_path)) in rec["error"] and "--rerun" in rec["error"]


def test_a_crafted_shared_stage1_is_refused_too(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "ce", *SMOKE]) == 0
    (shared,) = (tmp_path / "runs").rglob("_stage1/*/stage1.pt")
    marker = tmp_path / "payload-ran"
    torch.save({"model": _Payload(marker)}, shared)
    assert main(["run", "--methods", "crt", *SMOKE]) == 1
    assert not marker.exists()


def test_a_method_state_that_needs_unpickling_fails_its_run_by_name(catalog, tmp_path):
    (rec,) = run_methods(catalog, ["object-state"], tmp_path)
    assert rec["status"] == "failed" and "method 'object-state': state_dict()" in rec["error"]
    assert "builtins.object" in rec["error"]


def test_a_checkpoint_restores_numpy_state_exactly():
    from ltbench.training import checkpoints

    state = {"rng": np.random.RandomState(3).get_state(), "counts": np.arange(5, dtype=np.int32),
             "n": np.float64(2.5), "t": torch.ones(2)}
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"ltbench-ckpt-{os.getpid()}.pt"
    try:
        checkpoints.save(state, path)
        back = checkpoints.load(path)
    finally:
        path.unlink(missing_ok=True)
    rng = np.random.RandomState()
    rng.set_state(back["rng"])
    assert rng.randint(1 << 30) == np.random.RandomState(3).randint(1 << 30)
    assert back["counts"].dtype == np.int32 and back["counts"].tolist() == [0, 1, 2, 3, 4]
    assert back["n"] == 2.5 and torch.equal(back["t"], torch.ones(2))


def test_a_corrupt_checkpoint_names_its_file_and_remedy_and_keeps_the_history(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = _interrupted(tmp_path)
    history = (out / "metrics.jsonl").read_text()
    assert len(history.splitlines()) == 3
    (out / "checkpoint-stage1.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    assert main(["run", "--methods", "cb-sampling", *SMOKE]) == 1
    (rec,) = _records(tmp_path / "runs")
    assert rec["status"] == "failed" and "corrupt" in rec["error"]
    assert str((out / "checkpoint-stage1.pt").relative_to(tmp_path)) in rec["error"] and "--rerun" in rec["error"]
    assert (out / "metrics.jsonl").read_text() == history  # the epoch history survives
    assert main(["run", "--methods", "cb-sampling", *SMOKE, "--rerun"]) == 0  # the remedy works


def test_a_corrupt_shared_stage1_is_named_and_rerun_retrains_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "ce", *SMOKE]) == 0
    (shared,) = (tmp_path / "runs").rglob("_stage1/*/stage1.pt")
    shared.write_bytes(shared.read_bytes()[:100])  # truncated
    assert main(["run", "--methods", "crt,lws", *SMOKE]) == 1
    recs = {r["method"]: r for r in _records(tmp_path / "runs")}
    for m in ("crt", "lws"):
        assert recs[m]["status"] == "failed" and "--rerun" in recs[m]["error"]
        assert str(shared.relative_to(tmp_path)) in recs[m]["error"]
    assert main(["run", "--methods", "crt,lws", *SMOKE, "--rerun"]) == 0


def test_a_checkpoint_of_another_configuration_is_refused_not_resumed_from(tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "crt", *SMOKE, "--epochs", "2"]) == 0
    (theirs,) = (tmp_path / "runs").rglob("crt/*/seed0/checkpoint-stage2.pt")  # a finished stage 2 keeps its own
    other = ["run", "--methods", "crt", *SMOKE, "--epochs", "2", "--set", "stage2_lr=0.07"]
    from ltbench.cli import build_parser
    from ltbench.grid.orchestrate import plan_cells, run_options

    (cell,) = plan_cells(run_options(build_parser().parse_args([*other, "--output", "runs"])))
    mine = cell.out_dir(tmp_path / "runs")
    assert mine != theirs.parent
    mine.mkdir(parents=True)
    shutil.copyfile(theirs, mine / "checkpoint-stage2.pt")  # left there, or copied by hand
    assert main(other) == 1
    [rec] = [r for r in _records(tmp_path / "runs") if r["config"]["stage2_lr"] == 0.07]
    assert rec["status"] == "failed" and "belongs to another configuration" in rec["error"]
    assert "--rerun" in rec["error"] and "checkpoint-stage2.pt" in rec["error"]
    assert main([*other, "--rerun"]) == 0


# -- 4. containment ----------------------------------------------------------------------------------------------


def test_a_hook_that_raises_fails_only_its_cell_naming_method_and_hook(toy_cli, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["run", "--methods", "raises-in-configure,raises-in-record,non-json-record,ce", *SMOKE])
    assert code == 1
    recs = {r["method"]: r for r in _records(tmp_path / "runs")}
    assert recs["ce"]["status"] == "completed"
    assert recs["raises-in-configure"]["status"] == "failed"
    assert "method 'raises-in-configure', hook ltbench_configure_model" in recs["raises-in-configure"]["error"]
    assert "configure blew up" in recs["raises-in-configure"]["error"]
    assert "method 'raises-in-record', hook ltbench_record" in recs["raises-in-record"]["error"]
    assert "method 'non-json-record': ltbench_record returned a value JSON cannot hold" in \
        recs["non-json-record"]["error"]
    out = capsys.readouterr().out
    assert "3 of 4" not in out and "1 of 4 runs completed" in out


def test_sys_exit_in_a_hook_fails_only_its_cell_and_the_grid_goes_on(toy_cli, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "exits-in-epoch-start,ce", *SMOKE]) == 1
    recs = {r["method"]: r for r in _records(tmp_path / "runs")}
    assert recs["ce"]["status"] == "completed"  # the run after it still ran
    assert recs["exits-in-epoch-start"]["status"] == "failed"
    assert "method 'exits-in-epoch-start', hook ltbench_epoch_start" in recs["exits-in-epoch-start"]["error"]
    assert "SystemExit" in recs["exits-in-epoch-start"]["error"]


# -- 6. honest exit status ---------------------------------------------------------------------------------------


def test_a_grid_that_diverged_exits_non_zero_with_a_summary(toy_cli, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "nan-at-epoch-2", *SMOKE]) == 1
    out = capsys.readouterr().out
    assert "0 of 1 runs completed" in out and "nan-at-epoch-2 seed 0 on synthetic-lt-if30: diverged" in out
    assert main(["run", "--methods", "nan-at-epoch-2", *SMOKE]) == 1  # skipped, and still not a success


@pytest.mark.parametrize("seeds", [",", ""])
def test_asking_for_no_run_is_an_error(seeds, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "ce", *SMOKE, "--seeds", seeds]) == 2
    assert "--seeds: give at least one seed" in capsys.readouterr().err


# -- 7. smaller faults -------------------------------------------------------------------------------------------


def test_output_naming_a_file_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main(["run", "--methods", "ce", *SMOKE, "--output", "afile"]) == 2
    assert "--output afile is a file" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["run", "--config", "."], "--config . is a directory"),
    (["run", "--config", "latin1.toml"], "not UTF-8 text"),
    (["run", "--methods", "ce", *SMOKE, "--output", "afile/sub"],
     "--output afile/sub lies under afile, which is a file"),
    (["plot", "runs", "--out", "afile"], "--out afile is a file"),
    (["compare", "runs", "ce", "crt", "--bootstrap", "0"], "--bootstrap is the number of bootstrap draws"),
    (["run", "--methods", "ce", *SMOKE, "--set", "val_every=-1"], "val_every must be >= 0"),
    (["run", "--methods", "ce", *SMOKE, "--set", "workers=-1"], "workers must be >= 0"),
    (["run", "--methods", "ce", *SMOKE, "--set", "image_size=-3"], "image_size must be >= 0"),
])
def test_bad_paths_and_values_are_named_errors_not_tracebacks(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "latin1.toml").write_bytes('methods = ["cé"]'.encode("latin-1"))
    (tmp_path / "runs").mkdir()
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob("result.json"))


def test_a_method_name_that_would_leave_the_output_folder_is_refused(tmp_path):
    from ltbench import Method, MethodMetadata, hookimpl
    from ltbench.plugins.catalog import build_catalog

    escaping = type("Escaping", (Method,), {"name": "../../evil", "metadata": MethodMetadata(title="x")})
    catalog = build_catalog(entry_points=False)
    catalog.add_plugin(type("P", (), {"ltbench_register_methods": hookimpl(
        lambda self, register: register(escaping))})(), ltbench.plugins.catalog.PluginInfo("evil", "evil", "evil-dist", "1"))
    assert "../../evil" not in catalog.methods
    assert "would become part of a file path" in catalog.broken[-1].error


def test_a_300_character_method_name_from_a_plugin_is_refused_at_registration():
    """Flawed: a plugin's 300-character method name was registered, and its first run crashed on ENAMETOOLONG
    making the run's folder. The catalog refuses it by name, as it refuses a name that leaves the output."""
    from ltbench import Method, MethodMetadata, hookimpl
    from ltbench.plugins.catalog import build_catalog

    long = type("Long", (Method,), {"name": "a" * 300, "metadata": MethodMetadata(title="x")})
    catalog = build_catalog(entry_points=False)
    catalog.add_plugin(type("P", (), {"ltbench_register_methods": hookimpl(
        lambda self, register: register(long))})(), ltbench.plugins.catalog.PluginInfo("long", "long", "long-dist", "1"))
    assert "a" * 300 not in catalog.methods
    assert "would become part of a file path: use at most 100 letters" in catalog.broken[-1].error


def test_a_method_seed_or_variant_given_twice_runs_once_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "exp.toml"
    exp.write_text('methods = ["ce", "ce"]\nseeds = [0, 0]\n[variants.again]\nmethod = "ce"\n')
    assert main(["run", "--config", str(exp), *SMOKE]) == 0
    out = capsys.readouterr()
    assert "1 of 1 runs completed" in out.out
    assert "is the same run as ce seed 0" in out.err


@pytest.mark.parametrize("where", ["flag", "file"])
def test_true_is_not_a_number(where, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "exp.toml"
    exp.write_text('methods = ["ce"]\n' + ("[set]\nbatch_size = true\n" if where == "file" else ""))
    flags = ["--set", "batch_size=true"] if where == "flag" else []
    assert main(["run", "--config", str(exp), *SMOKE, *flags]) == 2
    assert "batch_size: expected int, got" in capsys.readouterr().err
    assert not list(tmp_path.rglob("result.json"))


def test_paths_in_an_experiment_file_are_relative_to_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "boards"
    folder.mkdir()
    (folder / "exp.toml").write_text('methods = ["ce"]\noutput = "records"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", "--config", str(folder / "exp.toml"), *SMOKE]) == 0
    assert list((folder / "records").rglob("result.json")) and not list(elsewhere.rglob("result.json"))


def _npz(root: Path, x_train: np.ndarray, x_test: np.ndarray) -> Path:
    root.mkdir(exist_ok=True)
    y_train = np.arange(len(x_train)) % 100
    np.savez(root / "cifar100.npz", x_train=x_train, y_train=y_train, x_test=x_test,
             y_test=np.arange(len(x_test)) % 100)
    return root


@pytest.mark.parametrize("shape, message", [
    ((3, 32, 32), "looks channels-first (N, C, H, W)"),
    ((28, 28, 3), "expected (N, 32, 32, 3)"),
])
def test_images_of_the_wrong_layout_or_size_are_named_by_data_and_run(shape, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = _npz(tmp_path / "data", np.zeros((200, *shape), np.uint8), np.zeros((100, *shape), np.uint8))
    assert main(["data", "cifar100-lt", "--data-root", str(root)]) == 2
    assert message in capsys.readouterr().err
    assert main(["run", "--methods", "ce", "--datasets", "cifar100-lt", "--budget", "smoke",
                 "--data-root", str(root)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_plugin_dataset_of_the_wrong_shape_is_named():
    from ltbench.data.split import check_data
    from ltbench.data.datasets import load_synthetic_lt
    from ltbench.errors import DataNotFoundError

    spec = ltbench.plugins.catalog.build_catalog(entry_points=False).dataset("synthetic-lt")
    data = load_synthetic_lt(None, 30.0)
    check_data(spec, data)
    data.x_test = data.x_test.transpose(0, 3, 1, 2)
    with pytest.raises(DataNotFoundError, match="x_test.*channels-first"):
        check_data(spec, data)


def test_an_imbalance_factor_that_empties_a_class_names_the_largest_allowed(cifar_root, capsys):
    assert main(["data", "cifar100-lt", "--data-root", str(cifar_root), "--imbalance-factor", "1000"]) == 2
    err = capsys.readouterr().err
    assert "leaves 10 of 100 classes without a training image" in err and "largest imbalance factor allowed is 500" in err
    assert main(["data", "cifar100-lt", "--data-root", str(cifar_root), "--imbalance-factor", "500", "--json"]) == 0
    assert min(json.loads(capsys.readouterr().out)["train_counts"]) == 1


def test_a_mistyped_data_root_is_never_created_and_nothing_is_downloaded_unasked(tmp_path, monkeypatch, capsys):
    import torchvision

    calls = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", lambda *a, **k: calls.append((a, k)))
    typo = tmp_path / "dtaa"
    for argv in (["data", "cifar100-lt"], ["run", "--methods", "ce", "--datasets", "cifar100-lt"]):
        assert main([*argv, "--data-root", str(typo)]) == 2
        assert f"--data-root {typo} does not exist" in capsys.readouterr().err
        assert not typo.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "cifar100-lt", "--data-root", str(empty)]) == 2
    assert "--download" in capsys.readouterr().err and calls == []  # not found, and not fetched unasked
    assert list(empty.iterdir()) == []
    assert main(["data", "cifar100-lt", "--data-root", str(empty), "--download"]) == 2  # asked: fetched
    assert calls and calls[0][1]["download"] is True and calls[0][0][0] == str(empty)


def test_stage_times_add_up_across_resumes(catalog, tmp_path):
    toy.SlowStage2.armed = True
    with pytest.raises(KeyboardInterrupt):
        run_methods(catalog, ["slow-stage2"], tmp_path)
    (rec,) = run_methods(catalog, ["slow-stage2"], tmp_path)
    assert rec["status"] == "completed"
    assert rec["stage_wall_time_s"]["stage2"] >= 0.6  # three sleeps of 0.2 s, one of them checkpointed before the interruption


# -- one worker per run: real processes --------------------------------------------------------------------------


def _start(tmp_path: Path, *args: str, name: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ltbench.cli", "run", "--datasets", "synthetic-lt", "--budget", "smoke",
           "--output", str(tmp_path / "runs"), *args]
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, text=True)


def _wait_for(path: Path, text: str, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}:\n{path.read_text() if path.exists() else ''}")


@pytest.mark.slow
def test_two_processes_asking_for_one_run_train_it_once(tmp_path):
    first = _start(tmp_path, "--methods", "ce", "--epochs", "80", name="first")
    _wait_for(tmp_path / "first.log", "stage 1 epoch 1/80")
    second = _start(tmp_path, "--methods", "ce", "--epochs", "80", name="second")
    assert first.wait(300) == 0 and second.wait(300) == 0
    one, two = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    assert "stage 1 epoch 80/80" in one
    assert "in use by another process" in two and "already completed, skipped" in two
    assert "stage 1 epoch" not in two
    assert len(_records(tmp_path / "runs")) == 1


@pytest.mark.slow
def test_two_processes_wanting_one_shared_stage1_train_it_once(tmp_path):
    first = _start(tmp_path, "--methods", "crt", "--epochs", "80", name="first")
    _wait_for(tmp_path / "first.log", "stage 1 epoch 1/80")
    second = _start(tmp_path, "--methods", "tau-norm", "--epochs", "80", name="second")
    assert first.wait(300) == 0 and second.wait(300) == 0
    two = (tmp_path / "second.log").read_text()
    assert "stage 1 epoch" not in two and "shared stage 1" in two and "stage 1 reused" in two
    recs = {r["method"]: r for r in _records(tmp_path / "runs")}
    assert recs["tau-norm"]["stage1"]["reused"] and recs["tau-norm"]["stage1"]["source"] == recs["crt"]["stage1"]["source"]


@pytest.mark.slow
def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    first = _start(tmp_path, "--methods", "ce", "--epochs", "80", name="first")
    _wait_for(tmp_path / "first.log", "stage 1 epoch 2/80")
    first.send_signal(signal.SIGKILL)
    first.wait(60)
    second = _start(tmp_path, "--methods", "ce", "--epochs", "80", name="second")
    assert second.wait(300) == 0
    two = (tmp_path / "second.log").read_text()
    assert "in use by another process" not in two and "resuming stage 1" in two
    (rec,) = _records(tmp_path / "runs")
    assert rec["status"] == "completed"


def test_a_record_names_the_commit_checked_out_when_its_run_started_not_when_it_ended(catalog, tmp_path,
                                                                                       monkeypatch):
    from ltbench.results import records
    from ltbench.grid import runner

    head = {"commit": "a" * 40}
    real_run, real_train = subprocess.run, runner.train_stage1

    def git(argv, **kwargs):
        if argv[:2] == ["git", "rev-parse"]:
            return subprocess.CompletedProcess(argv, 0, head["commit"] + "\n", "")
        if argv[:2] == ["git", "status"]:
            return subprocess.CompletedProcess(argv, 0, "", "")
        return real_run(argv, **kwargs)

    def train_while_someone_commits(*args, **kwargs):
        head["commit"] = "b" * 40
        return real_train(*args, **kwargs)

    monkeypatch.setattr(records.subprocess, "run", git)
    monkeypatch.setattr(runner, "train_stage1", train_while_someone_commits)
    records.git_commit.cache_clear()
    try:
        (record,) = run_methods(catalog, ["ce"], tmp_path)
    finally:
        records.git_commit.cache_clear()
    assert head["commit"] == "b" * 40  # (the commit did happen during the run)
    assert record["versions"]["git_commit"] == "a" * 40 and record["versions"]["git_dirty"] is False


def test_another_copy_of_a_dataset_never_returns_the_first_copys_record(tmp_path, monkeypatch, capsys):
    """Two image-folder-lt roots used in turn with one --output: the second is not 'already completed'."""
    monkeypatch.chdir(tmp_path)
    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second):
        assert main(["data", "export", "synthetic-lt", "--format", "imagenet-lt-list", "--out", str(root)]) == 0
    train = next(second.glob("*_train.txt"))
    train.write_text("".join(train.read_text().splitlines(keepends=True)[:-1]))  # one training image fewer
    grid = ["run", "--methods", "ce", "--datasets", "image-folder-lt", "--budget", "smoke", "--output", "runs",
            "--quiet"]
    assert main([*grid, "--data-root", str(first)]) == 0
    [record] = list((tmp_path / "runs").rglob("result.json"))
    before = record.read_text()
    capsys.readouterr()
    assert main([*grid, "--data-root", str(second)]) != 0
    out = capsys.readouterr()
    said = out.out + out.err
    assert "trained on other data" in said and "already completed" not in said and "--rerun" in said
    assert record.read_text() == before  # the first copy's record is kept as it was
    # and with its own output, the second copy trains a run of its own
    assert main([*grid, "--data-root", str(second), "--output", "runs-second"]) == 0


# -- sandboxed board builds: records are untrusted input -----------------------------------------------------------


@pytest.fixture
def one_good_run(catalog, tmp_path):
    runs = tmp_path / "runs"
    run_methods(catalog, ["ce"], runs)
    [path] = list(runs.rglob("result.json"))
    return runs, path


def _plant(runs: Path, name: str, record) -> Path:
    path = runs / "planted" / name / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return path


MARKUP = '<b id="planted" onclick="alert(1)">x</b>'


def test_a_build_never_writes_outside_out_nor_follows_a_linked_file(one_good_run, tmp_path, capsys):
    from ltbench.results.leaderboard import build

    runs, good = one_good_run
    rec = json.loads(good.read_text())
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    escapes = {"dataset": str(tmp_path / "abs"), "budget": "../../../../escaped", "method": "a/../../b",
               "config_id": "..", "seed": -1}
    for field, value in escapes.items():
        _plant(runs, f"bad-{field}", {**rec, field: value})
    linked = _plant(runs, "linked", {**rec, "config_id": "linked0001", "variant": "linked"})
    (linked.parent / "predictions.npz").symlink_to(secret)
    out = tmp_path / "board"
    before = {p for p in tmp_path.rglob("*")}
    build(runs, out)
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == out or out in p.parents for p in created), sorted(map(str, created))[:5]
    copied = list((out / "records").rglob("predictions.npz"))
    assert all(p.read_bytes() != b"private" for p in copied)
    err = capsys.readouterr().err
    for field in escapes:
        assert f"bad-{field}" in err and f"{field}:" in err  # each named by file and field


def test_no_markup_from_a_record_reaches_the_site_or_the_markdown_unescaped(one_good_run, tmp_path, toy_cli):
    from ltbench.results.leaderboard import build

    runs, good = one_good_run
    rec = json.loads(good.read_text())
    crafted = {**rec, "variant": MARKUP, "config_id": "crafted0001",
               "device_model": MARKUP, "device": MARKUP}
    crafted["method_metadata"] = {"ce": {**rec["method_metadata"]["ce"], "reference_results": {
        rec["dataset"]: {"overall": 50.0, "source": MARKUP}}}}
    _plant(runs, "markup", crafted)
    out = tmp_path / "board"
    build(runs, out)
    page = (out / "site" / "index.html").read_text()
    markdown = "".join(p.read_text() for p in out.glob("*.md"))
    assert "planted" in page and "<b id=" not in page  # present, and only as text
    assert "planted" in markdown and "<b id=" not in markdown


def test_a_build_over_malformed_records_builds_from_the_good_ones_and_names_each_bad_file(one_good_run, tmp_path,
                                                                                        capsys):
    from ltbench.results.leaderboard import build

    runs, good = one_good_run
    rec = json.loads(good.read_text())
    bad = {"not-json": "{", "a-list": "[1, 2]", "no-metrics": {**rec, "metrics": None},
           "nan-overall": json.dumps({**rec, "metrics": {**rec["metrics"], "overall": float("nan")}}),
           "seed-string": {**rec, "seed": "0"}, "seed-bool": {**rec, "seed": True},
           "no-config": {k: v for k, v in rec.items() if k != "config"}, "history-dict": {**rec, "history": {}},
           "metadata-list": {**rec, "method_metadata": []}}
    for name, value in bad.items():
        _plant(runs, name, value)
    fifo = runs / "planted" / "fifo" / "result.json"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    out = tmp_path / "board"
    build(runs, out)  # no traceback, and it does not block on the FIFO
    err = capsys.readouterr().err
    for name in [*bad, "fifo"]:
        assert f"planted/{name}/result.json" in err, name
    assert (out / "site" / "index.html").exists()
    [copied] = list((out / "records").rglob("result.json"))  # the good record, and only it
    assert json.loads(copied.read_text())["config_id"] == rec["config_id"]
    assert main(["show", str(runs)]) == 0  # show, compare and plot read records the same way
    capsys.readouterr()
    for name in bad:  # and status, for run directories that hold one
        planted = runs / "planted" / name
        status_dir = runs / "d" / "b" / name / "cfg" / "seed0"
        status_dir.mkdir(parents=True)
        (status_dir / "config.json").write_text("{}")
        (status_dir / "result.json").write_text((planted / "result.json").read_text())
    main(["status", str(runs), "--all"])
    said = capsys.readouterr().out
    assert all(name in said for name in bad) and said.count("malformed result.json") == len(bad)


def test_a_finished_run_whose_method_code_changed_is_named_not_silently_skipped(toy_cli, tmp_path, monkeypatch,
                                                                                 capsys):
    from ltbench.results import records

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "ce", *SMOKE, "--seeds", "0"]) == 0
    [rec] = _records(tmp_path / "runs")
    digest = rec["versions"]["plugins"]["ce"]["source_sha256"]
    assert len(digest) == 16 and digest == records.source_digest(ltbench.plugins.catalog.get_catalog().method("ce").cls)
    capsys.readouterr()
    assert main(["run", "--methods", "ce", *SMOKE, "--seeds", "0"]) == 0  # unchanged: a plain skip
    assert "code changed" not in capsys.readouterr().err
    real = records.source_digest
    monkeypatch.setattr(records, "source_digest", lambda cls: "f" * 16 if cls.name == "ce" else real(cls))
    assert main(["run", "--methods", "ce", *SMOKE, "--seeds", "0"]) == 0  # kept: retraining is the user's call
    err = capsys.readouterr().err
    assert f"its code changed since it ran: method 'ce'" in err and f"source {digest[:8]}) -> " in err
    assert "ffffffff" in err and "--rerun" in err
    assert main(["status", "runs"]) == 0
    assert "code changed since: method 'ce'" in capsys.readouterr().out


def test_the_source_digest_follows_the_file_that_defines_the_method(tmp_path, monkeypatch):
    import importlib

    from ltbench.results import records

    module = tmp_path / "digest_probe.py"
    module.write_text("class M:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = records.source_digest(importlib.import_module("digest_probe").M)
    module.write_text("class M:\n    x = 1\n")
    assert records.source_digest(importlib.import_module("digest_probe").M) != first


def test_under_torchrun_per_rank_batch_norm_is_another_run_and_sync_bn_is_the_same_run(catalog, monkeypatch):
    from ltbench.grid.plan import plan_grid

    def cell(ranks, **settings):
        if ranks > 1:
            monkeypatch.setenv("WORLD_SIZE", str(ranks))
        else:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        (c,) = plan_grid(["ce"], ["synthetic-lt"], [0], "smoke", settings=settings, catalog=catalog)
        return c

    one, two = cell(1), cell(2)
    assert one.config_id != two.config_id and "world_size=2" in two.label  # batch statistics of 1/2 the batch
    assert "world_size" not in one.config  # single-process identities (the committed board's) do not move
    assert cell(1, sync_bn="true").config_id == cell(2, sync_bn="true").config_id  # global statistics: the same
