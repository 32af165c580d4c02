"""``ltbench eval RUN --imbalance-factor F`` evaluates a model trained in one setting on another setting's test
set: the record states both settings, and ``show``, ``compare`` and the markdown board label its row as a model
trained elsewhere, never as one trained on the key it is listed under. And ``ltbench ls methods`` shows each
method's paper."""

import json
import shutil
from pathlib import Path

import pytest

import ltbench
from ltbench.cli import main
from ltbench.grid.evaluation import evaluate_run
from ltbench.results import summary

SMOKE = {"methods": ["ce"], "datasets": "synthetic-lt", "budget": "smoke", "quiet": True}
LABEL = "ce (trained on synthetic-lt-if30)"


def _only(out: Path) -> Path:
    (found,) = out.rglob("result.json")
    return found.parent


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> Path:
    """``runs/``: ce trained on the default IF30 and on IF10; ``evals/``: the IF30 model evaluated on IF10."""
    root = tmp_path_factory.mktemp("other-setting")
    trained = ltbench.run(output=root / "if30", **SMOKE)
    on_if10 = ltbench.run(output=root / "runs", imbalance_factor=10, **SMOKE)
    assert [r["status"] for r in trained + on_if10] == ["completed", "completed"]
    evaluate_run(_only(root / "if30"), imbalance_factor=10, output=root / "evals", log=lambda m: None)
    shutil.copytree(root / "if30", root / "runs", dirs_exist_ok=True)
    return root


def test_the_record_states_the_training_and_the_evaluation_setting(setting):
    source = json.loads((_only(setting / "if30") / "result.json").read_text())
    record = json.loads((_only(setting / "evals") / "result.json").read_text())
    assert source["dataset"] == "synthetic-lt-if30" and source["imbalance_factor"] == 30
    assert record["trained_on"] == {"dataset": "synthetic-lt-if30", "dataset_name": "synthetic-lt",
                                    "imbalance_factor": 30, "split_fingerprint": source["split_fingerprint"],
                                    "variant": "ce"}
    assert record["evaluated_on"]["dataset"] == record["dataset"] == "synthetic-lt-if10"
    assert record["evaluated_on"]["imbalance_factor"] == record["imbalance_factor"] == 10
    assert record["evaluated_on"]["split_fingerprint"] == record["evaluation"]["split_fingerprint"]
    assert record["evaluated_on"]["split_fingerprint"] != source["split_fingerprint"]
    assert record["variant"] == LABEL  # every table, board and plot names a row by its variant
    assert record["evaluation"]["trained_on"] == "synthetic-lt-if30"


def test_show_lists_it_apart_from_the_model_trained_on_that_setting(setting, capsys):
    shutil.copytree(setting / "evals", setting / "runs" / "evals", dirs_exist_ok=True)
    assert main(["show", str(setting / "runs"), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    on_if10 = sorted(r["method"] for r in rows if r["dataset"] == "synthetic-lt-if10")
    assert on_if10 == ["ce", LABEL] and all(r["seeds"] == 1 for r in rows)
    assert main(["show", str(setting / "runs")]) == 0
    assert LABEL in capsys.readouterr().out
    # compare names the two apart as well: the model trained on IF10 against the IF30 one on the same test set
    result = summary.compare(summary.load_records(setting / "runs"), "ce", LABEL, dataset="synthetic-lt-if10",
                             n_boot=200)
    assert result["dataset"] == "synthetic-lt-if10" and result["seeds"] == [0]


def test_the_markdown_board_labels_it(setting):
    from ltbench.results import leaderboard

    records = [r for r in summary.load_records(setting / "evals")]
    pages = leaderboard.render(records)
    assert LABEL in pages["synthetic-lt-if10.md"]


def test_an_older_evaluation_record_is_labelled_from_its_evaluation_entry(setting, tmp_path, capsys):
    older = tmp_path / "older"
    shutil.copytree(setting / "evals", older)
    path = older.rglob("result.json").__next__()
    record = json.loads(path.read_text())
    for key in ("trained_on", "evaluated_on"):
        del record[key]
    record["variant"] = "ce"  # as ltbench eval wrote it before: the training key only under "evaluation"
    path.write_text(json.dumps(record))
    assert main(["show", str(older), "--format", "csv"]) == 0
    assert LABEL in capsys.readouterr().out


def test_on_its_own_setting_the_row_is_the_runs(setting, tmp_path):
    record = evaluate_run(_only(setting / "if30"), output=tmp_path / "evals", log=lambda m: None)
    assert record["variant"] == "ce" and record["dataset"] == record["trained_on"]["dataset"] == "synthetic-lt-if30"
    assert record["evaluated_on"]["imbalance_factor"] == record["trained_on"]["imbalance_factor"] == 30
    assert summary.label(record) == "ce"


def test_ls_methods_shows_each_methods_paper(capsys):
    from ltbench.plugins.catalog import get_catalog

    assert main(["ls", "methods"]) == 0
    table = capsys.readouterr().out
    for name, entry in get_catalog().methods.items():
        meta = entry.cls.metadata
        (line,) = [row for row in table.splitlines() if row.split(" ", 1)[0] == name]
        assert (meta.paper or meta.title) in line, name
        if meta.venue and meta.year:
            assert f"({meta.venue} {meta.year})" in line, name
    assert main(["ls", "methods", "ce", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["paper"].startswith("Cao et al.") and row["venue"] == "NeurIPS" and row["year"] == 2019
