"""`ltbench leaderboard add`: records made elsewhere are checked (schema, metrics recomputed from their
predictions, the canonical split, the code they state) before they are copied to the board, and the pull-request
workflow runs the same check (docs/submitting.md)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ltbench.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def made_elsewhere(tmp_path_factory) -> Path:
    """One tiny completed run of ce on synthetic-lt (smoke budget): its run folder."""
    from ltbench.plugins.testing import catalog_with, run_methods

    runs = tmp_path_factory.mktemp("elsewhere")
    [rec] = run_methods(catalog_with(), ["ce"], runs)
    assert rec["status"] == "completed"
    [path] = list(runs.rglob("result.json"))
    return path.parent


def _submission(made_elsewhere: Path, where: Path, change=None, predictions: bool = True) -> Path:
    """A copy of the run folder (result.json and predictions.npz) under ``where``, its record changed by
    ``change(record)``."""
    folder = where / "submission" / made_elsewhere.name
    folder.mkdir(parents=True)
    rec = json.loads((made_elsewhere / "result.json").read_text())
    if change is not None:
        change(rec)
    (folder / "result.json").write_text(json.dumps(rec, indent=2))
    if predictions:
        shutil.copyfile(made_elsewhere / "predictions.npz", folder / "predictions.npz")
    return folder


def _add(capsys, *args) -> tuple[int, str]:
    code = main(["leaderboard", "add", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out + out.err


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _refused(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("refused ")]


# ---------------------------------------------------------------------------------------------------------------
# a valid record


def test_a_valid_record_is_copied_to_the_board_as_the_board_lays_it_out(made_elsewhere, tmp_path, capsys):
    folder = _submission(made_elsewhere, tmp_path)
    board = tmp_path / "lb" / "records"
    code, out = _add(capsys, folder, "--to", board)
    assert code == 0, out
    rec = json.loads((folder / "result.json").read_text())
    dest = board / rec["dataset"] / rec["budget"] / rec["method"] / rec["config_id"] / f"seed{rec['seed']}"
    assert _files(board) == [dest / "predictions.npz", dest / "result.json"]
    for name in ("result.json", "predictions.npz"):
        assert (dest / name).read_bytes() == (folder / name).read_bytes()
    assert "added " in out and "split checked against the synthetic-lt-if30 data" in out
    assert "1 added, 0 replaced, 0 already there, 0 refused" in out
    # and the board builds from it
    assert main(["leaderboard", "build", "--out", str(board.parent)]) == 0
    assert (board.parent / "synthetic-lt-if30.md").is_file()


def test_adding_the_same_record_again_changes_nothing(made_elsewhere, tmp_path, capsys):
    folder = _submission(made_elsewhere, tmp_path)
    board = tmp_path / "records"
    assert _add(capsys, folder, "--to", board)[0] == 0
    stamps = {p: p.stat().st_mtime_ns for p in _files(board)}
    code, out = _add(capsys, folder / "result.json", "--to", board)  # a result.json names its run too
    assert code == 0 and "unchanged " in out and "already at" in out, out
    assert {p: p.stat().st_mtime_ns for p in _files(board)} == stamps


def test_check_only_checks_and_copies_nothing(made_elsewhere, tmp_path, capsys):
    folder = _submission(made_elsewhere, tmp_path)
    board = tmp_path / "records"
    code, out = _add(capsys, "--check-only", folder, "--to", board)
    assert code == 0 and "valid " in out and "nothing copied" in out, out
    assert _files(board) == []


def test_the_records_a_pull_request_brings_are_checked_where_they_lie(made_elsewhere, tmp_path, capsys):
    """The workflow's case: the records are already under --to; they pass, and are not their own reference."""
    board = tmp_path / "records"
    assert _add(capsys, _submission(made_elsewhere, tmp_path), "--to", board)[0] == 0
    [placed] = list(board.rglob("result.json"))
    code, out = _add(capsys, "--check-only", placed.parent, "--to", board)
    assert code == 0 and "valid " in out, out


# ---------------------------------------------------------------------------------------------------------------
# what is refused: one line each, naming the file and why, and nothing copied


def _refuses(capsys, folder: Path, board: Path, *why: str, extra: tuple = ()) -> str:
    code, out = _add(capsys, folder, "--to", board, *extra)
    assert code == 1, out
    [line] = _refused(out)
    assert str(folder) in line, line
    for part in why:
        assert part in line, line
    assert _files(board) == [], "a refused record was copied"
    return line


def _overall_plus_one(rec):
    rec["metrics"]["overall"] += 1.0


def test_a_tampered_metric_is_refused(made_elsewhere, tmp_path, capsys):
    folder = _submission(made_elsewhere, tmp_path, _overall_plus_one)
    _refuses(capsys, folder, tmp_path / "records", "metrics.overall: the record says", "predictions.npz gives")


@pytest.mark.parametrize("field", ["many", "few"])
def test_a_tampered_group_accuracy_is_refused(made_elsewhere, tmp_path, capsys, field):
    def change(rec):
        rec["metrics"][field] = min(100.0, rec["metrics"][field] + 0.5)

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", f"metrics.{field}: the record says")


def test_a_tampered_per_class_accuracy_is_refused(made_elsewhere, tmp_path, capsys):
    def change(rec):
        acc = rec["per_class_accuracy"]
        acc[3] = 100.0 - acc[3] if acc[3] != 50.0 else 0.0  # the means stay as they were: only this class differs

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", "per_class_accuracy: 1 class(es) differ", "class 3")


def test_a_tampered_calibration_is_refused(made_elsewhere, tmp_path, capsys):
    def change(rec):
        rec["calibration"]["ece"] = rec["calibration"]["ece"] / 2

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", "calibration.ece: the record says")


def test_a_tampered_group_size_is_refused(made_elsewhere, tmp_path, capsys):
    def change(rec):
        rec["group_sizes"]["few"] += 1

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", "group_sizes:")


def test_a_record_of_a_foreign_split_is_refused(made_elsewhere, tmp_path, capsys):
    """Trained on other data: the record states the split it trained on, which is not the canonical one."""
    from ltbench.data.split import load_checked
    from ltbench.plugins.catalog import get_catalog

    foreign = load_checked(get_catalog().dataset("synthetic-lt"), None, 10).fingerprint

    def change(rec):
        assert rec["split_fingerprint"] != foreign
        rec["split_fingerprint"] = foreign

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", f"split_fingerprint: {foreign}, not the",
             "canonical synthetic-lt-if30 split", "trained on other data")


def test_other_training_counts_than_the_canonical_ones_are_refused(made_elsewhere, tmp_path, capsys):
    def change(rec):  # two medium-shot classes swapped: the metrics and the stated fingerprint are unchanged
        counts = rec["train_counts"]
        counts[2], counts[3] = counts[3], counts[2]

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", "train_counts: not those of the canonical")


def test_predictions_on_another_test_set_are_refused(made_elsewhere, tmp_path, capsys):
    """The labels and predictions shuffled together: every accuracy recomputes, but the test set is not the
    canonical one (its images in its order)."""
    folder = _submission(made_elsewhere, tmp_path)
    with np.load(folder / "predictions.npz") as saved:
        arrays = dict(saved)
    order = np.random.default_rng(0).permutation(len(arrays["labels"]))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: (v[order] if v.ndim == 1 else v) for k, v in arrays.items()})
    (folder / "predictions.npz").write_bytes(buffer.getvalue())
    _refuses(capsys, folder, tmp_path / "records", "predictions.npz: its labels are not the test set")


def test_a_record_without_its_prediction_file_is_refused(made_elsewhere, tmp_path, capsys):
    folder = _submission(made_elsewhere, tmp_path, predictions=False)
    _refuses(capsys, folder, tmp_path / "records", "predictions.npz: missing beside it")


def test_a_record_that_names_no_prediction_file_is_refused(made_elsewhere, tmp_path, capsys):
    def change(rec):
        del rec["files"]

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", "files.predictions: the record names no predictions.npz")


@pytest.mark.parametrize("missing", ["distribution", "version", "source_sha256"])
def test_a_record_must_state_each_methods_distribution_version_and_code_digest(made_elsewhere, tmp_path, capsys,
                                                                                missing):
    def change(rec):
        del rec["versions"]["plugins"]["ce"][missing]

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", f"versions.plugins.ce: no {missing}")


def test_a_record_must_state_the_ltbench_version(made_elsewhere, tmp_path, capsys):
    def change(rec):
        del rec["versions"]["ltbench"]

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", "versions.ltbench: missing")


def test_a_malformed_record_is_refused_by_the_record_reader(made_elsewhere, tmp_path, capsys):
    def change(rec):
        rec["metrics"]["overall"] = 140.0

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", "metrics.overall: expected a finite number in [0, 100]")


def test_a_failed_run_is_refused(made_elsewhere, tmp_path, capsys):
    def change(rec):
        rec["status"] = "failed"

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", "status failed")


def test_an_evaluation_of_a_model_trained_on_another_key_is_refused(made_elsewhere, tmp_path, capsys):
    def change(rec):
        rec["evaluation"] = {"trained_on": "synthetic-lt-if100"}

    folder = _submission(made_elsewhere, tmp_path, change)
    _refuses(capsys, folder, tmp_path / "records", "evaluation.trained_on")


def test_a_folder_of_records_adds_those_that_pass_and_names_each_refused_one(made_elsewhere, tmp_path, capsys):
    good = _submission(made_elsewhere, tmp_path / "a")
    tampered = _submission(made_elsewhere, tmp_path / "b", _overall_plus_one)
    bare = _submission(made_elsewhere, tmp_path / "c", predictions=False)
    both = tmp_path / "all"
    for name, folder in (("good", good), ("tampered", tampered), ("bare", bare)):
        shutil.copytree(folder, both / name)
    board = tmp_path / "records"
    code, out = _add(capsys, both, "--to", board)
    assert code == 1
    refused = _refused(out)
    assert len(refused) == 2 and any("tampered" in r and "metrics.overall" in r for r in refused) \
        and any("bare" in r and "predictions.npz: missing" in r for r in refused), out
    assert [p.name for p in _files(board)] == ["predictions.npz", "result.json"]
    assert (next(board.rglob("result.json"))).read_bytes() == (both / "good" / "result.json").read_bytes()


def test_a_path_without_records_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out = _add(capsys, tmp_path / "empty", tmp_path / "nowhere", "--to", tmp_path / "records")
    assert code == 1
    assert f"refused {tmp_path / 'empty'}: holds no result.json" in out
    assert f"refused {tmp_path / 'nowhere'}: does not exist" in out


# ---------------------------------------------------------------------------------------------------------------
# copying: never over a different record silently, never outside --to


def test_a_different_record_of_the_same_run_is_never_replaced_silently(made_elsewhere, tmp_path, capsys):
    board = tmp_path / "records"
    assert _add(capsys, _submission(made_elsewhere, tmp_path / "first"), "--to", board)[0] == 0
    [there] = list(board.rglob("result.json"))
    before = there.read_bytes()

    def change(rec):
        rec["wall_time_s"] += 1.0  # the same run, another record of it

    second = _submission(made_elsewhere, tmp_path / "second", change)
    code, out = _add(capsys, second, "--to", board)
    assert code == 1 and "a different record of the same run is already at" in out and "--replace" in out, out
    assert there.read_bytes() == before
    code, out = _add(capsys, second, "--to", board, "--replace")
    assert code == 0 and "replaced " in out, out
    assert there.read_bytes() == (second / "result.json").read_bytes()


def test_the_same_run_given_twice_is_added_once(made_elsewhere, tmp_path, capsys):
    one = _submission(made_elsewhere, tmp_path / "one")
    two = _submission(made_elsewhere, tmp_path / "two", lambda rec: rec.update(wall_time_s=rec["wall_time_s"] + 1))
    code, out = _add(capsys, one, two, "--to", tmp_path / "records")
    assert code == 1 and "given twice" in " ".join(_refused(out)), out
    assert len(list((tmp_path / "records").rglob("result.json"))) == 1


def test_a_record_is_never_copied_outside_the_board(made_elsewhere, tmp_path, capsys):
    """A folder of the board that links elsewhere: the record's place would resolve outside --to."""
    board, outside = tmp_path / "records", tmp_path / "outside"
    board.mkdir()
    outside.mkdir()
    (board / "synthetic-lt-if30").symlink_to(outside, target_is_directory=True)
    folder = _submission(made_elsewhere, tmp_path)
    code, out = _add(capsys, folder, "--to", board)
    assert code == 1 and "would lie outside" in out, out
    assert _files(outside) == []


def test_a_place_that_cannot_be_written_is_named_not_a_traceback(made_elsewhere, tmp_path, capsys):
    board = tmp_path / "records"
    board.mkdir()
    (board / "synthetic-lt-if30").write_text("a file where the dataset's folder goes")
    code, out = _add(capsys, _submission(made_elsewhere, tmp_path), "--to", board)
    assert code == 1 and "cannot be written to" in " ".join(_refused(out)), out
    assert "0 added" in out


def test_a_second_configuration_in_one_board_row_is_refused(made_elsewhere, tmp_path, capsys):
    board = tmp_path / "records"
    assert _add(capsys, _submission(made_elsewhere, tmp_path / "first"), "--to", board)[0] == 0
    before = _files(board)
    other = _submission(made_elsewhere, tmp_path / "other", lambda rec: rec.update(config_id="0123456789"))
    code, out = _add(capsys, other, "--to", board)
    assert code == 1 and "config_id: 0123456789, where the row 'ce'" in out, out
    assert _files(board) == before


# ---------------------------------------------------------------------------------------------------------------
# datasets whose data is not here: the board's records of the key are the reference, else refused


def _as_cifar(rec):
    """The record filed under cifar100-lt-if100, whose data these tests do not have."""
    rec.update(dataset="cifar100-lt-if100", dataset_name="cifar100-lt", imbalance_factor=100.0)
    rec["config"]["imbalance_factor"] = 100.0


def test_without_the_data_nor_a_board_record_of_the_key_the_split_cannot_be_checked(made_elsewhere, tmp_path,
                                                                                      capsys):
    folder = _submission(made_elsewhere, tmp_path, _as_cifar)
    _refuses(capsys, folder, tmp_path / "records", "cannot check its split", "no data of cifar100-lt found",
             "no record of cifar100-lt-if100 is on the board", "give --data-root")


def test_without_the_data_the_board_records_of_the_key_give_the_split(made_elsewhere, tmp_path, capsys):
    board = tmp_path / "records"
    committed = _submission(made_elsewhere, tmp_path / "committed", _as_cifar)
    rec = json.loads((committed / "result.json").read_text())
    place = board / "cifar100-lt-if100" / "smoke" / "ce" / rec["config_id"] / "seed1"
    shutil.copytree(committed, place)  # a committed record of the key (another seed)
    (place / "result.json").write_text(json.dumps({**rec, "seed": 1}))

    folder = _submission(made_elsewhere, tmp_path, _as_cifar)
    code, out = _add(capsys, folder, "--to", board)
    assert code == 0 and "split checked against 1 record(s) of cifar100-lt-if100 on the board" in out, out

    def foreign(rec):
        _as_cifar(rec)
        rec["split_fingerprint"] = "0000000000000000"

    folder = _submission(made_elsewhere, tmp_path / "foreign", foreign)
    code, out = _add(capsys, folder, "--to", board)
    assert code == 1 and "split_fingerprint: 0000000000000000, not the" in " ".join(_refused(out)), out


def test_records_checked_where_they_lie_are_never_their_own_reference(made_elsewhere, tmp_path, capsys):
    """A pull request that brings every record of a key cannot vouch for its own split."""
    board = tmp_path / "records"
    folder = _submission(made_elsewhere, tmp_path, _as_cifar)
    rec = json.loads((folder / "result.json").read_text())
    place = board / "cifar100-lt-if100" / "smoke" / "ce" / rec["config_id"] / "seed0"
    shutil.copytree(folder, place)
    code, out = _add(capsys, "--check-only", place, "--to", board)
    assert code == 1 and "no record of cifar100-lt-if100 is on the board" in out, out


def test_the_data_when_given_is_the_canonical_split(made_elsewhere, tmp_path, capsys, cifar_root):
    """With --data-root, the canonical split is the data's, whatever the board holds: here the synthetic record
    filed as cifar100-lt-if100 is not CIFAR-100-LT's split."""
    folder = _submission(made_elsewhere, tmp_path, _as_cifar)
    _refuses(capsys, folder, tmp_path / "records", "split_fingerprint:", "the cifar100-lt-if100 data",
             extra=("--data-root", cifar_root))


# ---------------------------------------------------------------------------------------------------------------
# the pull-request workflow runs the same check


def test_the_pull_request_workflow_runs_the_check_on_the_changed_records():
    import yaml

    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "submissions.yml").read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as true
    assert "pull_request" in triggers
    assert any("leaderboards/records" in p for p in triggers["pull_request"]["paths"])
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert any("ltbench leaderboard add --check-only" in run and "--to leaderboards/records" in run
               for run in steps), steps
    assert any("git diff" in run and "result.json" in run and "predictions.npz" in run for run in steps)


def test_the_submission_guide_documents_the_command():
    text = (REPO / "docs" / "submitting.md").read_text()
    for needed in ("ltbench leaderboard add", "--check-only", "--data-root", "--replace", "predictions.npz",
                   "split_fingerprint", "source_sha256"):
        assert needed in text, needed
