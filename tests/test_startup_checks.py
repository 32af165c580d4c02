"""Start-up checks and recording failures: ``ltbench run`` and ``ltbench eval`` check that torchvision (built for the
installed torch) and timm import and work before anything trains, and name the fix; and whatever raises while a
run is being recorded, after it trained, is that run's failure: its record says so and the grid goes on."""

import sys
from pathlib import Path

import pytest

import ltbench
from ltbench import cli
from ltbench.results.reader import read_record

SMOKE = {"methods": ["ce"], "seeds": [0, 1], "datasets": "synthetic-lt", "budget": "smoke", "quiet": True}
RUN = ["run", "--methods", "ce", "--datasets", "synthetic-lt", "--budget", "smoke", "--quiet"]


# ---------------------------------------------------------------------------------------------------------------
# start-up checks


def test_the_check_passes_here_and_costs_no_more_than_the_imports_a_run_makes():
    cli.check_core_imports()
    assert {"torchvision", "timm"} <= set(sys.modules)


def test_help_and_version_do_not_run_the_check(monkeypatch, capsys):
    monkeypatch.setattr(cli, "check_core_imports", lambda: pytest.fail("--help ran the start-up check"))
    for flag in ("--help", "--version"):
        with pytest.raises(SystemExit) as stop:
            cli.main([flag])
        assert stop.value.code == 0
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])


@pytest.mark.parametrize("command", ["run", "eval"])
def test_a_torchvision_that_does_not_import_is_named_before_anything_trains(command, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` raises, as a broken install does
    argv = [*RUN, "--output", str(tmp_path / "runs")] if command == "run" else ["eval", str(tmp_path / "no-run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "torchvision" in err and "pip install" in err and "nothing was run" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing planned, nothing trained


def test_a_torchvision_built_for_another_torch_is_named_with_the_pip_command(monkeypatch, tmp_path, capsys):
    import torch
    import torchvision.extension

    # what a torchvision built for another torch does: its compiled operators do not load, so its first op raises
    # "Couldn't load custom C++ ops. This can happen if your PyTorch and torchvision versions are incompatible ..."
    monkeypatch.setattr(torchvision.extension, "_has_ops", lambda: False)
    assert cli.main([*RUN, "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    release, _, local = torch.__version__.partition("+")
    minor, patch = release.split(".")[1:3]
    wanted = f'pip install --force-reinstall --no-deps "torchvision==0.{int(minor) + 15}.{patch}"'
    assert f"torchvision {torchvision.__version__} does not work with torch {torch.__version__}" in err
    assert "Couldn't load custom C++ ops" in err and wanted in err
    assert (f"--index-url https://download.pytorch.org/whl/{local}" in err) == bool(local)
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in err  # README's line
    assert not (tmp_path / "runs").exists()


def test_the_fix_names_the_torchvision_built_for_the_installed_torch():
    said = cli._torchvision_fix("2.14.1+cpu", "0.28.0+cu130")
    assert "torchvision 0.28.0+cu130 is built for torch 2.13.0, not 2.14.1+cpu" in said
    assert '"torchvision==0.29.1" --index-url https://download.pytorch.org/whl/cpu' in said
    assert "--index-url" not in cli._torchvision_fix("2.5.1", "0.20.1").split(" (on a CPU-only")[0]
    assert "is built for" not in cli._torchvision_fix("2.5.1", "0.20.1")


def test_a_timm_that_does_not_import_is_named_before_anything_trains(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    assert cli.main([*RUN, "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and 'pip install --force-reinstall "timm>=0.9"' in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------------------
# a failure while recording a run fails that run only


def _records(out: Path) -> list[dict]:
    found = []
    for path in sorted(out.rglob("result.json")):
        record, problem = read_record(path)
        assert problem is None, problem  # a failed run's record reads as any record
        found.append(record)
    return found


def test_timm_failing_in_the_record_writer_fails_each_run_and_the_grid_goes_on(monkeypatch, tmp_path):
    # the start-up check is the command line's; from Python (or after it) the record writer meets the broken timm
    # when it states the libraries' versions, after the run trained
    monkeypatch.setitem(sys.modules, "timm", None)
    records = ltbench.run(output=tmp_path / "runs", **SMOKE)
    assert [r["status"] for r in records] == ["failed", "failed"]  # both runs: the grid did not stop at the first
    for record in records:
        assert record["error"].startswith("recording the run failed: ") and "timm" in record["error"].splitlines()[0]
    written = _records(tmp_path / "runs")
    assert [(r["seed"], r["status"]) for r in written] == [(0, "failed"), (1, "failed")]
    assert all(r["variant"] == "ce" and "timm" in r["error"] for r in written)


def test_a_record_that_cannot_be_written_fails_its_run_only(monkeypatch, tmp_path):
    from ltbench.grid import runner

    real = runner.atomic_write_json

    def refuse_seed0(path, data):
        if path.name == "result.json" and path.parent.name == "seed0":
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(runner, "atomic_write_json", refuse_seed0)
    records = ltbench.run(output=tmp_path / "runs", **SMOKE)
    assert [r["status"] for r in records] == ["failed", "completed"]
    assert "No space left on device" in records[0]["error"]
    assert [(r["seed"], r["status"]) for r in _records(tmp_path / "runs")] == [(1, "completed")]


def test_a_failure_making_the_reporters_plots_fails_its_run_and_the_record_says_so(monkeypatch, tmp_path):
    from ltbench.results import plots

    calls = []

    def broken(out, record, tag=""):
        calls.append(record["seed"])
        if record["seed"] == 0:
            raise RuntimeError("matplotlib backend exploded")
        return []

    monkeypatch.setattr(plots, "run_plots", broken)
    records = ltbench.run(output=tmp_path / "runs", report="jsonl", **SMOKE)
    assert calls == [0, 1] and [r["status"] for r in records] == ["failed", "completed"]
    (seed0,) = [r for r in _records(tmp_path / "runs") if r["seed"] == 0]
    assert seed0["status"] == "failed" and "matplotlib backend exploded" in seed0["error"]
    assert seed0["metrics"] is not None  # what was measured stays in the record


def test_the_command_line_reports_the_failed_runs_and_exits_non_zero(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "check_core_imports", lambda: None)  # the check passed; timm breaks after it
    monkeypatch.setitem(sys.modules, "timm", None)
    assert cli.main([*RUN, "--seeds", "0,1", "--output", str(tmp_path / "runs")]) == 1
    out = capsys.readouterr().out
    assert "0 of 2 runs completed" in out and out.count("failed: recording the run failed") == 2
    assert [r["status"] for r in _records(tmp_path / "runs")] == ["failed", "failed"]
