import pytest
import torch

from ltbench.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--methods", "cee", "--budget", "smoke"], "unknown method 'cee'. Did you mean 'ce'?"),
        (["run", "--methods", "ce+cb-samplin", "--budget", "smoke"], "Did you mean 'cb-sampling'?"),
        (["run", "--methods", "ce", "--datasets", "cifar100", "--budget", "smoke"],
         "unknown dataset 'cifar100'. Did you mean 'cifar100-lt'?"),
        (["run", "--methods", "ce", "--budget", "fast"], "unknown budget for fashion-mnist-lt 'fast'"),
        (["run", "--methods", "ce", "--budget", "smoke", "--set", "learning_rate=0.1"],
         "unknown --set key 'learning_rate'"),
        (["run", "--methods", "ce", "--budget", "smoke", "--set", "lr=fast"], "lr: expected float, got 'fast'"),
        (["run", "--methods", "ce", "--budget", "smoke", "--set", "epochs=2.5"], "epochs: expected int"),
        (["run", "--methods", "ce", "--budget", "smoke", "--set", "lr=-1"], "lr must be > 0"),
        (["run", "--methods", "ce", "--budget", "smoke", "--set", "backbone=resnet1000"],
         "unknown backbone 'resnet1000'"),
        (["run", "--methods", "ce", "--datasets", "synthetic-lt", "--budget", "smoke", "--imbalance-factor", "-10"],
         "imbalance_factor must be >= 1"),
        (["run", "--methods", "ce", "--budget", "smoke", "--seeds", "a,b"], "--seeds expects comma-separated"),
        (["run", "--methods", "ce", "--budget", "smoke", "--device", "tpu"], "--device must be auto, cpu or cuda"),
        (["data", "cifar10-lt", "--data-root", "/nonexistent-ltbench"], "--data-root /nonexistent-ltbench does not exist"),
        pytest.param(["run", "--methods", "ce", "--budget", "smoke", "--device", "cuda"], "no CUDA device",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
        (["ls", "methods", "--json"], None),
        (["ls", "methods", "zzz*"], "no methods match 'zzz*'; `ltbench ls methods` lists all"),
    ],
)
def test_bad_input_fails_before_training_with_a_message_naming_it(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if message is None:
        assert main(argv) == 0
        return
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_ls_and_list_methods_filter_names_by_glob(capsys):
    from ltbench.api import list_methods

    assert list_methods("ldam*") == ["ldam", "ldam-drw"]
    assert list_methods("*-sampling,crt") == ["cb-sampling", "crt", "progressive-sampling", "sqrt-sampling"]
    assert {"ce", "breadcrumb", "blt"} <= set(list_methods()) and list_methods("nothing-like-this") == []
    assert main(["ls", "methods", "ldam*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert names == ["ldam", "ldam-drw"]
    assert main(["ls", "datasets", "cifar*"]) == 0
    assert all(line.split()[0].startswith("cifar") for line in capsys.readouterr().out.splitlines()[2:])


def test_a_method_option_is_set_by_name_and_typed(tmp_path, monkeypatch):
    from ltbench.grid.config import resolve
    from ltbench.errors import ConfigError
    from ltbench.plugins.testing import catalog_with

    import toy_methods as toy

    catalog = catalog_with(toy.Counter)
    spec = catalog.dataset("synthetic-lt")
    cfg = resolve(spec, "smoke", [toy.Counter], {"scale": "2.5"})
    assert cfg["methods"] == {"counter": {"scale": 2.5}}
    cfg = resolve(spec, "smoke", [toy.Counter], {"counter.scale": "3"})
    assert cfg["methods"]["counter"]["scale"] == 3.0
    with pytest.raises(ConfigError, match="counter.scale: expected float"):
        resolve(spec, "smoke", [toy.Counter], {"counter.scale": "big"})


def test_run_then_leaderboard_build_and_check(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "ce,cb-sampling", "--datasets", "synthetic-lt", "--budget", "smoke",
                 "--seeds", "0,1", "--quiet"]) == 0
    assert "4 of 4 runs completed" in capsys.readouterr().out
    assert main(["leaderboard", "build", "runs", "--out", "lb"]) == 0
    page = (tmp_path / "lb" / "synthetic-lt-if30.md").read_text()
    assert "## budget `smoke`" in page and "| cb-sampling" in page and "| ce " in page
    records = sorted((tmp_path / "lb" / "records").rglob("*"))
    assert sum(p.name == "result.json" for p in records) == 4
    assert not any(p.suffix == ".pt" for p in records)  # records only, never checkpoints
    assert main(["leaderboard", "check", "--out", "lb"]) == 0
    (tmp_path / "lb" / "synthetic-lt-if30.md").write_text(page.replace("cb-sampling", "cb-sampl1ng"))
    capsys.readouterr()
    assert main(["leaderboard", "check", "--out", "lb"]) == 1
    assert "differs" in capsys.readouterr().out


def test_leaderboard_shows_mean_and_std_over_seeds(tmp_path):
    from ltbench.results.leaderboard import render

    def rec(seed, overall):
        return {"dataset": "d-if1", "budget": "cpu", "method": "m", "methods": ["m"], "seed": seed,
                "variant": "m", "config_id": "c0",
                "metrics": {"overall": overall, "many": overall, "medium": None, "few": 1.0},
                "wall_time_s": 10.0, "stage_wall_time_s": {"stage1": 10.0}, "config": {"backbone": "b", "epochs": 1},
                "group_sizes": {"many": 1, "medium": 0, "few": 1}, "group_thresholds": {"few_below": 20, "many_above": 100},
                "method_metadata": {"m": {"reference_results": {"d-if1": {"overall": 42.0, "source": "Table 9"}}}},
                "status": "completed"}

    page = render([rec(0, 10.0), rec(1, 20.0), rec(2, 30.0)])["d-if1.md"]
    row = next(line for line in page.splitlines() if line.startswith("| m "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "20.00 ± 10.00" and cells[3] == "–" and cells[4] == "1.00 ± 0.00"
    assert cells[5] == "3" and cells[14] == "–" and cells[15] == "42.00" and "Table 9" in page  # no ce: no Δ
    assert cells[7:10] == ["–", "–", "–"]  # no cost in these records (nor a training-compute estimate)
    assert cells[6] == str(rec(0, 1.0)["config"]["epochs"])  # backbone epochs: stage 1 only


LONG = "a" * 300  # a name longer than the 255 bytes a file name may have


@pytest.mark.parametrize("argv, message", [
    (["run", "--methods", LONG, "--budget", "smoke"], f"unknown method '{LONG}'"),
    (["run", "--methods", f"ce+{LONG}", "--budget", "smoke"], f"unknown method '{LONG}'"),
    (["new-plugin", LONG], "a method name is at most 100 characters"),
])
def test_a_300_character_method_name_is_a_named_error_not_enametoolong(argv, message, capsys, tmp_path, monkeypatch):
    """Flawed: a 300-character method name crashed with OSError ENAMETOOLONG (``new-plugin`` made a folder of it);
    every command names it as an error before anything touches the file system."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, flag", [
    (["run", "--methods", "ce", "--datasets", "synthetic-lt", "--budget", "smoke", "--output", ""], "--output"),
    (["run", "--methods", "ce", "--datasets", "synthetic-lt", "--budget", "smoke", "--output", "  "], "--output"),
    (["eval", "runs/synthetic-lt-if100/smoke/ce/0123456789/seed0", "--output", ""], "--output"),
    (["plot", "runs", "--out", ""], "--out"),
])
def test_output_empty_string_is_refused_not_the_working_directory(argv, flag, capsys, tmp_path, monkeypatch):
    """Flawed: ``--output ""`` wrote the run's records (or the evaluation's, or the plots) into the working
    directory. It is an error naming the flag and what to give instead; nothing is planned or written."""
    from ltbench.grid import orchestrate

    def planned(*args, **kwargs):
        raise AssertionError("the grid was planned: --output '' was taken as the working directory")

    monkeypatch.setattr(orchestrate, "plan_cells", planned)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{flag} is empty, which would write into the working directory" in err, err
    assert "give a directory" in err
    assert [p.name for p in tmp_path.iterdir()] == ["runs"] and not list((tmp_path / "runs").iterdir())
