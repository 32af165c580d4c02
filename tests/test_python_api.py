"""``ltbench.run(...)``: the command line's grid from Python, returning the records it wrote."""

import json
from pathlib import Path

import pytest

import ltbench
from ltbench.cli import main
from ltbench.errors import ConfigError, UnknownNameError


def _on_disk(output: Path) -> dict[tuple[str, int], dict]:
    found = {}
    for path in output.rglob("result.json"):
        record = json.loads(path.read_text())
        found[(record["variant"], record["seed"])] = record
    return found


def test_run_returns_the_records_it_wrote_and_the_command_line_finds_them_done(tmp_path, capsys):
    out = tmp_path / "runs"
    records = ltbench.run(methods="ce,cb-sampling", datasets=["synthetic-lt"], budget="smoke", seeds=[0, 1],
                          output=out, quiet=True)
    assert [(r["variant"], r["seed"]) for r in records] == [("ce", 0), ("ce", 1), ("cb-sampling", 0),
                                                           ("cb-sampling", 1)]
    assert all(r["status"] == "completed" for r in records)
    assert {(r["variant"], r["seed"]): r for r in records} == _on_disk(out)  # exactly the result.json files

    # the same grid from the command line trains nothing: the Python runs are the same runs
    capsys.readouterr()
    assert main(["run", "--methods", "ce,cb-sampling", "--datasets", "synthetic-lt", "--budget", "smoke",
                 "--seeds", "0,1", "--output", str(out)]) == 0
    assert capsys.readouterr().err.count("already completed, skipped") == 4
    assert _on_disk(out) == {(r["variant"], r["seed"]): r for r in records}


def test_set_is_a_dict_of_settings_and_makes_another_run(tmp_path):
    out = tmp_path / "runs"
    plain = ltbench.run(methods=["ce"], datasets="synthetic-lt", budget="smoke", output=str(out), quiet=True)[0]
    tuned = ltbench.run(methods=["ce"], datasets="synthetic-lt", budget="smoke", output=str(out), quiet=True,
                        set={"lr": 0.02, "lr_milestones": [0.5]})[0]
    assert tuned["config"]["lr"] == 0.02 and tuned["config"]["lr_milestones"] == [0.5]
    assert plain["config"]["lr"] != 0.02 and tuned["config_id"] != plain["config_id"]
    assert set(_on_disk(out)) == {("ce", 0), (tuned["variant"], 0)} and tuned["variant"] != "ce"


def test_an_experiment_file_is_the_starting_point_and_options_override_it(tmp_path):
    exp = tmp_path / "exp" / "grid.toml"
    exp.parent.mkdir()
    exp.write_text('methods = ["ce"]\ndatasets = ["synthetic-lt"]\nseeds = [0]\nbudget = "smoke"\n'
                   'output = "records"\nquiet = true\n\n[variants.ce-slow]\nmethod = "ce"\nset = { lr = 0.01 }\n')
    records = ltbench.run(exp, seeds=[3])
    assert [(r["variant"], r["seed"]) for r in records] == [("ce", 3), ("ce [lr=0.01]", 3)]
    assert len(list((tmp_path / "exp" / "records").rglob("result.json"))) == 2  # next to the file, as the CLI


def test_bad_options_fail_before_anything_trains_and_name_the_valid_ones(tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(ConfigError, match=r"unknown option 'epoch'.*epochs"):
        ltbench.run(methods="ce", epoch=3, output=out)
    with pytest.raises(ConfigError, match="seeds must be integers"):
        ltbench.run(methods="ce", seeds=["0"], output=out)
    with pytest.raises(ConfigError, match="ltbench run --launcher"):
        ltbench.run(methods="ce", launcher="slurm", output=out)
    with pytest.raises(UnknownNameError, match="no-such-method"):
        ltbench.run(methods="ce,no-such-method", datasets="synthetic-lt", budget="smoke", output=out)
    assert not list(out.rglob("result.json"))


@pytest.mark.parametrize("args, options, message", [
    ((123,), {}, "ltbench.run(): experiment must be the path of an experiment file (a string or a Path), got 123"),
    ((["ce"],), {}, "ltbench.run(): experiment must be the path of an experiment file"),
    ((), {"methods": 123}, "ltbench.run(): methods must be a list or a string, got 123"),
    ((), {"methods": ["ce", 1]}, "ltbench.run(): methods must be a list of strings or a comma-separated string, "
                                 "got ['ce', 1]"),
    ((), {"methods": "ce", "datasets": [None]}, "ltbench.run(): datasets must be a list of strings"),
    ((), {"methods": "ce", "seeds": "x"}, "ltbench.run(): seeds must be integers (a list, or a comma-separated "
                                          "string), got 'x'"),
    ((), {"methods": "ce", "seeds": 1.5}, "ltbench.run(): seeds must be a list or a string or an integer, got 1.5"),
    ((), {"methods": "ce", "epochs": "3"}, "ltbench.run(): epochs must be an integer, got '3'"),
])
def test_ltbench_run_123_is_a_config_error_naming_the_argument(args, options, message, tmp_path, monkeypatch):
    """Flawed: ``ltbench.run(123)`` (and other wrongly typed arguments) raised a raw TypeError, or an error
    about a ``--flag`` Python has not got. Each is a ConfigError naming the argument, the value and the type."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        ltbench.run(*args, **{"datasets": "synthetic-lt", "budget": "smoke", "output": tmp_path / "runs", **options})
    assert message in str(info.value)
    assert not list(tmp_path.iterdir())


def test_output_empty_string_is_refused_from_python_and_from_an_experiment_file(tmp_path, monkeypatch):
    """Flawed: ``ltbench.run(output="")`` trained into the working directory (and ``output = ""`` in an
    experiment file, into the file's folder). Both are errors naming the key; nothing is planned or written."""
    from ltbench.grid import orchestrate

    def planned(*args, **kwargs):
        raise AssertionError("the grid was planned: an empty output was taken as a directory")

    monkeypatch.setattr(orchestrate, "plan_cells", planned)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"ltbench.run\(\): output is empty, which would write into the working "
                                          r"directory; give a directory"):
        ltbench.run(methods="ce", datasets="synthetic-lt", budget="smoke", output="")
    exp = tmp_path / "exp.toml"
    exp.write_text('methods = ["ce"]\ndatasets = ["synthetic-lt"]\nbudget = "smoke"\noutput = ""\n')
    with pytest.raises(ConfigError, match=r"exp.toml: output is empty; give a directory"):
        ltbench.run(exp)
    assert [p.name for p in tmp_path.iterdir()] == ["exp.toml"]
