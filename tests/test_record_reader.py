"""Records that cannot fool their readers (issue 40): every command that reads records (show, compare, plot,
status, leaderboard build, eval) reads them through one reader, which refuses by name what is not a
well-formed record (a FIFO, a link, a directory, JSON nested too deep, a field of the wrong type, range or
length) and never lets a record's fields steer a path outside the output. A command either works or prints one
named line: never a traceback, never a hang. Labels reach matplotlib as text, and the plot made for reporters
cannot end the grid.

The records are those of two real (tiny) runs, altered here; the last tests alter them at random (Hypothesis).
"""

import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from filelock import FileLock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ltbench
from ltbench import Method, MethodMetadata
from ltbench.cli import main

SMOKE = {"datasets": "synthetic-lt", "budget": "smoke", "quiet": True}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A runs directory with two completed runs (ce, focal), their predictions, models and grid manifest."""
    runs = tmp_path_factory.mktemp("reader") / "runs"
    records = ltbench.run(methods=["ce", "focal"], output=runs, **SMOKE)
    assert [r["status"] for r in records] == ["completed", "completed"]
    return runs


def _copy(trained: Path, where: Path) -> tuple[Path, Path]:
    """A copy of the runs, and the ce run's directory in it."""
    runs = where / "runs"
    shutil.copytree(trained, runs, symlinks=True)
    (ce,) = [p.parent for p in runs.glob("*/*/ce/*/seed0/result.json")]
    return runs, ce


class Hung(BaseException):
    """A command still running past its deadline (a BaseException: no ``except Exception`` in it can hide it)."""


@contextlib.contextmanager
def _deadline(seconds: int, what: str):
    """Fail (:class:`Hung`) when the block is still running after ``seconds``: a read that blocks on a FIFO."""
    def hung(signum, frame):
        raise Hung(f"{what} still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _cli(*argv: str, timeout: int = 120) -> tuple[int, str, str]:
    """``ltbench ARGV`` in this process: (exit status, stdout, stderr). An exception is the test's failure (a
    traceback for the user), and so is a command still running after ``timeout`` seconds (a hang)."""
    out, err = io.StringIO(), io.StringIO()
    with _deadline(timeout, f"ltbench {' '.join(argv)}"), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def _commands(runs: Path, ce: Path, out: Path) -> dict[str, list[str]]:
    return {"show": ["show", str(runs)], "compare": ["compare", str(runs), "ce", "focal", "--bootstrap", "200"],
            "status": ["status", str(runs), "--all"], "plot": ["plot", str(runs), "--out", str(out / "plots")],
            "build": ["leaderboard", "build", str(runs), "--out", str(out / "board")],
            "eval": ["eval", str(ce), "--output", str(out / "evals")]}


def _every_command_works_or_names_it(runs: Path, ce: Path, out: Path, planted: Path) -> dict[str, tuple]:
    """Run every command over ``runs``; each must end with status 0, 1 or 2 (no exception, no hang), and a
    command that refuses the planted record names its file on one line."""
    from ltbench.results.reader import read_record

    refused = read_record(planted)[1] is not None if os.path.lexists(planted) else False
    results = {}
    for name, argv in _commands(runs, ce, out).items():
        status, stdout, stderr = _cli(*argv)
        assert status in (0, 1, 2), (name, status, stderr[-2000:])
        if status == 2:  # a named error: one line, never a traceback
            assert stderr.strip().splitlines()[-1].startswith("error: "), (name, stderr[-2000:])
        if refused and name in ("show", "plot", "build"):  # skipped, on one line naming the file
            assert len([line for line in stderr.splitlines() if str(planted) in line]) == 1, (name, stderr[-2000:])
        if refused and name == "status":
            assert f"malformed result.json: {planted}" in stdout, stdout
        results[name] = (status, stdout, stderr)
    return results


# -- badly 3: a record's field of the wrong type, range or length crashed build, compare and plot ----------------

CRAFTED = {  # the review's cases and those the property tests below found, each as the fields it changes
    "per-class-text": {"per_class_accuracy": "abc"},
    "per-class-too-short": {"per_class_accuracy": [1.0]},
    "per-class-null": {"per_class_accuracy": None},
    "cost-list": {"cost": [1, 2]},
    "second-stage-epochs-text": {"second_stage": {"epochs": "x", "train_backbone": True}},
    "device-model-object": {"device_model": {"a": 1}},
    "predictions-naming-another-file": {"files": {"predictions": "model.pt"}},
    "seed-of-301-digits": {"seed": 10**300},
    "dataset-of-300-letters": {"dataset": "d" * 300},
    "train-counts-text": {"train_counts": "abc"},
    "metrics-without-a-group": {"metrics": {"overall": 10.0}},
    "history-images-text": {"history": [{"stage": 1, "images": "many"}]},
    "metadata-interpretations-number": {"method_metadata": {"ce": {"interpretations": 5}}},
    "versions-plugins-list": {"versions": {"plugins": [1]}},
    "variant-lone-surrogate": {"variant": "\ud800"},
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_unchecked_record_fields_are_skipped_by_name_in_every_command(case, trained, tmp_path):
    runs, ce = _copy(trained, tmp_path)
    rec = json.loads((ce / "result.json").read_text())
    (ce / "result.json").write_text(json.dumps({**rec, **CRAFTED[case]}))
    results = _every_command_works_or_names_it(runs, ce, tmp_path, ce / "result.json")
    field = next(iter(CRAFTED[case]))
    assert field in results["show"][2], results["show"][2]  # the line names the field
    assert results["eval"][0] == 2 and f"{ce / 'result.json'}: " in results["eval"][2]
    assert results["build"][0] == 0 and (tmp_path / "board" / "site" / "index.html").exists()  # from focal


def test_a_dataset_whose_records_disagree_on_its_classes_leaves_the_odd_one_out(trained, tmp_path):
    runs, ce = _copy(trained, tmp_path)
    rec = json.loads((ce / "result.json").read_text())
    odd = ce.parent / "seed1" / "result.json"  # ce's seed 1, with 3 classes where the dataset has 10
    odd.parent.mkdir()
    odd.write_text(json.dumps({**rec, "seed": 1, "train_counts": rec["train_counts"][:3],
                               "per_class_accuracy": rec["per_class_accuracy"][:3], "class_names": None}))
    for argv in (["plot", str(runs), "--out", str(tmp_path / "plots")],
                 ["leaderboard", "build", str(runs), "--out", str(tmp_path / "board")],
                 ["compare", str(runs), "ce", "focal", "--bootstrap", "200"]):
        status, _, err = _cli(*argv)  # (the board names its copy of the record)
        assert status == 0 and "seed1/result.json: train_counts: 3 classes, where the other records of" in err, err


def test_the_same_record_in_two_folders_counts_as_one_seed(trained, tmp_path):
    """Flawed: a run's folder copied elsewhere under the runs directory (a backup, a second download) counted
    as a second seed in show, compare and the board. It is now read once, with one line naming both files."""
    from ltbench.results import leaderboard, summary

    runs, ce = _copy(trained, tmp_path)
    copy = runs / "backup" / ce.relative_to(runs)
    shutil.copytree(ce, copy)
    first, second = sorted([str(ce / "result.json"), str(copy / "result.json")])
    for load in (summary.load_records, leaderboard.load_records):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            records = load(runs)
        ce_records = [r for r in records if r["method"] == "ce"]
        assert len(ce_records) == 1, [r["_path"] for r in ce_records]
        lines = [line for line in err.getvalue().splitlines() if "the same run" in line]
        assert len(lines) == 1 and first in lines[0] and second in lines[0], err.getvalue()
    with contextlib.redirect_stderr(io.StringIO()):
        row = summary.summarise(summary.load_records(runs)).set_index("method").loc["ce"]
    assert row["seeds"] == 1, row
    status, _, err = _cli("show", str(runs))
    assert status == 0 and err.count("the same run") == 1, err


# -- badly 2: eval wrote its record wherever the record's names pointed ---------------------------------------------


@pytest.mark.parametrize("field, value", [("budget", "../../../escaped"), ("method", "/tmp/abs-method")])
def test_eval_never_writes_outside_output_whatever_the_record_says(field, value, trained, tmp_path):
    runs, ce = _copy(trained, tmp_path / "inside")
    rec = json.loads((ce / "result.json").read_text())
    value = value.replace("/tmp", str(tmp_path))
    (ce / "result.json").write_text(json.dumps({**rec, field: value}))
    before = set(tmp_path.rglob("*"))
    status, _, err = _cli("eval", str(ce), "--output", str(tmp_path / "inside" / "evals"))
    assert status == 2 and f"{field}:" in err and str(ce / "result.json") in err
    assert set(tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "abs-method").exists()


def _craft_run(ce: Path, config_change=None, state_change=None) -> None:
    """Alter a run's config.json and model.pt and keep the three files agreeing on the run's identity, as a
    crafted run folder would."""
    from ltbench.grid.config import config_id

    config = json.loads((ce / "config.json").read_text())
    if config_change:
        config_change(config)
    identity = config_id(config)
    (ce / "config.json").write_text(json.dumps(config))
    rec = json.loads((ce / "result.json").read_text())
    (ce / "result.json").write_text(json.dumps({**rec, "config_id": identity}))
    state = torch.load(ce / "model.pt", weights_only=True)
    state["config_id"] = identity
    if state_change:
        state_change(state)
    torch.save(state, ce / "model.pt")


CRAFTED_RUNS = {
    "seed-too-large-for-numpy": ({"seed": 2**40}, None, None),
    "seed-negative": ({"seed": -5}, None, None),
    "dataset-name-number": ({"dataset_name": 5}, None, None),
    "val-metrics-text": ({"val_metrics": "x"}, None, None),
    "config-epochs-text": ({}, lambda c: c.update(epochs="3"), None),
    "config-imbalance-text": ({}, lambda c: c.update(imbalance_factor="x"), None),
    "config-milestones-text": ({}, lambda c: c.update(lr_milestones=["a"]), None),
    "config-batch-negative": ({}, lambda c: c.update(eval_batch_size=-1), None),
    "model-of-another-shape": ({}, None, lambda s: s["model"].update({"classifier.weight": torch.zeros(3, 3)})),
    "model-weight-text": ({}, None, lambda s: s["model"].update({"classifier.weight": "x"})),
    "model-a-list": ({}, None, lambda s: s.update(model=[1, 2])),
    "model-of-three-stages": ({}, None, lambda s: s.update(stages=3)),
}


@pytest.mark.parametrize("case", sorted(CRAFTED_RUNS))
def test_eval_of_a_crafted_run_is_a_named_error_not_a_traceback(case, trained, tmp_path):
    runs, ce = _copy(trained, tmp_path)
    fields, config_change, state_change = CRAFTED_RUNS[case]
    _craft_run(ce, config_change, state_change)
    rec = json.loads((ce / "result.json").read_text())
    (ce / "result.json").write_text(json.dumps({**rec, **fields}))
    status, _, err = _cli("eval", str(ce), "--output", str(tmp_path / "evals"))
    assert status == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err[-2000:]
    assert not list((tmp_path / "evals").rglob("result.json"))


# -- FIFOs named by records, runs and manifests hung compare, build, status and eval --------------------------------


@pytest.mark.parametrize("where", ["result.json", "predictions.npz", "config.json", "model.pt", "metrics.jsonl",
                                   "manifest", "board-markdown"])
def test_a_fifo_where_a_file_should_be_never_hangs_a_command(where, trained, tmp_path):
    runs, ce = _copy(trained, tmp_path)
    if where == "manifest":
        (manifest,) = (runs / "_grids").glob("*.json")
        manifest.unlink()
        os.mkfifo(manifest)
        fifo = manifest
    elif where == "board-markdown":
        fifo = tmp_path / "board" / "stale.md"
        fifo.parent.mkdir()
        os.mkfifo(fifo)
    else:
        fifo = ce / where
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    lock = FileLock(f"{ce}.lock")
    if where == "metrics.jsonl":  # status reads a run's history while another process holds its lock
        lock.acquire()
    try:
        results = _every_command_works_or_names_it(runs, ce, tmp_path, ce / "result.json")
    finally:
        lock.release()
    if where in ("result.json", "config.json", "model.pt"):
        assert results["eval"][0] == 2 and f"{fifo}: not a regular file (a FIFO)" in results["eval"][2]
    if where == "predictions.npz":
        assert results["compare"][0] == 0 and f"{fifo}: not a regular file" in results["compare"][2]
        assert f"{fifo}: not a regular file" in results["build"][2]
    if where == "manifest":
        assert f"skipped grid manifest {fifo}: not a regular file" in results["status"][2]
    assert _cli("leaderboard", "check", "--out", str(tmp_path / "board"))[0] in (0, 1)


def test_a_bad_grid_manifest_or_an_odd_seed_folder_leaves_status_working(trained, tmp_path):
    runs, ce = _copy(trained, tmp_path)
    (runs / "_grids" / "bad.json").write_text(json.dumps({"runs": [{"run_dir": 5}]}))
    (runs / "_grids" / "list.json").write_text("[1, 2]")
    odd = ce.parent / "seedX"
    odd.mkdir()
    (odd / "config.json").write_text("{}")
    status, out, err = _cli("status", str(runs), "--all", "--json")
    assert status == 1 and [r for r in json.loads(out)["runs"] if r["run_dir"].endswith("seedX")]
    assert "skipped grid manifest" in err and "bad.json: manifest.runs[0]." in err and "list.json" in err


# -- badly 5: a deeply nested record killed every reader with a RecursionError --------------------------------------


def test_a_deeply_nested_record_is_skipped_by_name_and_a_run_does_not_crash_on_it(trained, tmp_path):
    from ltbench.results.records import load_result

    runs, ce = _copy(trained, tmp_path)
    text = (ce / "result.json").read_text().rstrip()
    (ce / "result.json").write_text(text[:-1] + ', "extra": ' + "[" * 200_000 + "]" * 200_000 + "}")
    results = _every_command_works_or_names_it(runs, ce, tmp_path, ce / "result.json")
    assert "nested deeper than" in results["show"][2]
    assert load_result(ce / "result.json") is None  # `ltbench run` reruns it rather than crash


# -- badly 4: a `$...$` in a label was parsed as mathtext: plot and build crashed, and a reporter's plot the grid ----


def test_a_dollar_label_is_plotted_as_text(trained, tmp_path):
    runs, ce = _copy(trained, tmp_path)
    rec = json.loads((ce / "result.json").read_text())
    (ce / "result.json").write_text(json.dumps({**rec, "variant": "ce [tag=$x^$]"}))
    for argv in (["plot", str(runs), "--out", str(tmp_path / "plots")],
                 ["leaderboard", "build", str(runs), "--out", str(tmp_path / "board")],
                 ["leaderboard", "build", "--out", str(tmp_path / "board")]):  # and the next build, from the copies
        status, _, err = _cli(*argv)
        assert status == 0, err
    assert "ce [tag=$x^$]" in (tmp_path / "board" / "site" / "index.html").read_text()


def test_a_label_with_dollars_is_literal_text_in_the_figure():
    from ltbench.results import plots

    record = {"status": "completed", "variant": "a $x^$ b", "method": "a", "seed": 0, "dataset": "d", "budget": "b",
              "train_counts": [50, 5], "per_class_accuracy": [90.0, 10.0], "history": [],
              "metrics": {"overall": 50.0, "many": None, "medium": 90.0, "few": 10.0}}
    fig = plots.per_class_figure(record)
    fig.canvas.draw()  # mathtext is parsed when drawn
    assert fig.axes[0].title.get_text().replace("\\$", "$").startswith("a $x^$ b")
    plots._pyplot().close(fig)


class Tagged(Method):
    """A method with a string option: its value is part of the variant's label."""

    name = "tagged"
    metadata = MethodMetadata(title="test method")
    options = {"tag": "plain"}


def _reported_grid(tmp_path: Path):
    from ltbench.grid.plan import plan_grid
    from ltbench.grid.runner import run_grid
    from ltbench.plugins.reporting import Reporting
    from ltbench.plugins.testing import catalog_with

    catalog = catalog_with(Tagged)
    reporting = Reporting(["jsonl"], tmp_path, catalog, warn=lambda m: None)
    cells = plan_grid(["tagged", "ce"], ["synthetic-lt"], [0], "smoke", catalog=catalog,
                      settings={"tagged.tag": "$x^$"}, epochs=1)
    records = run_grid(cells, tmp_path, torch.device("cpu"), log=lambda m: None, catalog=catalog,
                       reporting=reporting)
    (stream,) = (tmp_path / "_reports").glob("*.jsonl")
    ends = [json.loads(line) for line in stream.read_text().splitlines() if '"run_end"' in line]
    return records, ends


def test_a_dollar_label_in_a_run_with_a_reporter_is_plotted_and_the_grid_goes_on(tmp_path):
    records, ends = _reported_grid(tmp_path)
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert records[0]["variant"] == "tagged [epochs=1, tag=$x^$]"
    assert len(ends) == 2 and all(e["plots"] and Path(e["plots"][0]).is_file() for e in ends)


def test_a_plot_for_the_reporters_that_fails_never_ends_the_grid(tmp_path, capsys):
    def broken(record):
        raise ValueError("no plot today")

    with mock.patch("ltbench.results.plots.per_class_figure", broken):
        records, ends = _reported_grid(tmp_path)
    assert [r["status"] for r in records] == ["completed", "completed"]
    assert [e["plots"] for e in ends] == [[], []]
    assert capsys.readouterr().err.count("no plot today") == 2


# -- the reader itself ------------------------------------------------------------------------------------------


def test_nesting_is_counted_on_the_text_without_counting_brackets_in_strings():
    from ltbench.results.reader import nesting_depth

    assert nesting_depth('{"a": [1, {"b": "[[[[{{{{"}], "c": "\\"]]"}') == 3
    assert nesting_depth("[" * 10_000 + "]" * 10_000) == 33  # counting stops past the limit
    assert nesting_depth('"unterminated [[[[' + "\\" * 3) == 0
    assert nesting_depth("[]" * 1000) == 1


def test_links_directories_and_fifos_are_refused_before_they_are_opened(tmp_path):
    from ltbench.results.reader import Unreadable, read_bytes

    good = tmp_path / "good.json"
    good.write_text("{}")
    (tmp_path / "link.json").symlink_to(good)
    (tmp_path / "dir.json").mkdir()
    os.mkfifo(tmp_path / "fifo.json")
    assert read_bytes(good) == b"{}"
    for name, kind in (("link.json", "a link"), ("dir.json", "a directory"), ("fifo.json", "a FIFO")):
        with pytest.raises(Unreadable, match=f"{name}: not a regular file \\({kind}"):
            read_bytes(tmp_path / name)
    with pytest.raises(Unreadable, match="more than"):
        read_bytes(good, limit=1)


def test_every_committed_record_reads():
    """The schema refuses nothing a run writes: the records of the committed boards all pass it."""
    from ltbench.results.reader import read_record

    paths = sorted((Path(__file__).resolve().parents[1] / "leaderboards" / "records").rglob("result.json"))
    assert paths
    problems = [problem for problem in (read_record(p)[1] for p in paths) if problem]
    assert not problems, problems[:3]


def test_a_failed_and_a_diverged_record_read(tmp_path):
    from ltbench.plugins.testing import catalog_with, run_methods
    from ltbench.results.reader import record_problems

    import toy_methods as toy

    catalog = catalog_with(toy.RaisesInConfigure, toy.NanAtEpoch2)
    records = run_methods(catalog, ["raises-in-configure", "nan-at-epoch-2"], tmp_path)
    assert [r["status"] for r in records] == ["failed", "diverged"]
    for path in tmp_path.rglob("result.json"):
        assert record_problems(json.loads(path.read_text())) == [], path


# -- item 5: records altered at random ---------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(["$x^$", "../../x", "/abs/path", "a" * 300, "\ud800", "\x1b[2J", "predictions.npz",
                            "model.pt", ".", "", "ce", "completed", "nan"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([10**300, -1, 0, 2**32, 2**63]) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30) | ODD_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | ODD_TEXT, inner, max_size=4),
    max_leaves=10)


def _paths(value: Any, prefix: tuple = (), depth: int = 3) -> list[tuple]:
    """Where a value may be put in a record: every key, and the first item of every list, 3 levels deep."""
    found = [prefix] if prefix else []
    if depth and isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*prefix, key), depth - 1)
    elif depth and isinstance(value, list) and value:
        found += _paths(value[0], (*prefix, 0), depth - 1)
    return found


def _put(rec: Any, path: tuple, value: Any, delete: bool) -> Any:
    rec = json.loads(json.dumps(rec))
    target = rec
    for key in path[:-1]:
        target = target[key]
    if delete and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return rec


def _template(trained: Path) -> dict:
    (path,) = trained.glob("*/*/ce/*/seed0/result.json")
    return json.loads(path.read_text())


ALTERATIONS = st.one_of(
    st.tuples(st.just("value"), st.integers(0, 10**6), JSON_VALUES, st.booleans()),  # (kind, which path, value, delete)
    st.tuples(st.just("deep"), st.integers(20, 100_000)),
    st.tuples(st.just("file"), st.sampled_from(["fifo", "directory", "link", "empty", "bytes", "predictions-fifo",
                                                "predictions-garbage", "config-fifo", "model-fifo", "manifest-fifo"])),
)


def _alter(runs: Path, ce: Path, template: dict, alteration: tuple) -> None:
    kind, *args = alteration
    record = ce / "result.json"
    if kind == "value":
        which, value, delete = args
        paths = _paths(template)
        record.write_text(json.dumps(_put(template, paths[which % len(paths)], value, delete)))
    elif kind == "deep":
        (depth,) = args
        record.write_text(json.dumps(template)[:-1] + ', "extra": ' + "[" * depth + "]" * depth + "}")
    else:
        (what,) = args
        target = {"predictions-fifo": ce / "predictions.npz", "predictions-garbage": ce / "predictions.npz",
                  "config-fifo": ce / "config.json", "model-fifo": ce / "model.pt"}.get(what, record)
        if what == "manifest-fifo":
            (target,) = (runs / "_grids").glob("*.json")
        target.unlink()
        if what.endswith("fifo"):
            os.mkfifo(target)
        elif what == "directory":
            target.mkdir()
        elif what == "link":
            target.symlink_to(next(p for p in runs.rglob("result.json") if "focal" in p.parts))
        elif what == "bytes":
            target.write_bytes(b"\xff\xfe{[" * 100)
        elif what == "predictions-garbage":
            target.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
        else:
            target.write_text("")


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(alteration=ALTERATIONS.filter(lambda a: a != ("file", "manifest-fifo")))
def test_a_record_altered_at_random_is_read_or_refused_by_name_and_renders(trained, alteration):
    """Many alterations, through the reader and everything that renders records without matplotlib: the
    tables of `show`, the markdown board, the site's pages and charts, the paired comparison."""
    from ltbench.results import leaderboard, plots, site, summary
    from ltbench.results.reader import read_record

    template = _template(trained)
    with tempfile.TemporaryDirectory(dir=trained.parent) as scratch:
        runs = Path(scratch) / "records"
        for method in ("ce", "focal"):
            (run,) = trained.glob(f"*/*/{method}/*/seed0")
            shutil.copytree(run, runs / method / "seed0")
        ce = runs / "ce" / "seed0"
        _alter(runs, ce, template, alteration)
        refused = read_record(ce / "result.json")[1]
        err = io.StringIO()
        with _deadline(60, "reading the records"), contextlib.redirect_stderr(err):
            records = summary.load_records(runs)
            summary.render(summary.summarise(records), "table")
            leaderboard.render(leaderboard.load_records(runs))
            variants = {r.get("variant", r["method"]) for r in records if r["status"] == "completed"}
            for name in variants - {"focal"}:
                try:
                    summary.compare(records, name, "focal", n_boot=100)
                except ltbench.LtbenchError:
                    pass
            with mock.patch.object(plots, "plot_records", lambda records, out: []):
                site.build(leaderboard.load_records(runs), Path(scratch) / "site")
        if refused:  # one line for each of the three readings (show's, the board's and the site's)
            assert refused.startswith(str(ce / "result.json"))
            assert err.getvalue().count(f"skipped {ce / 'result.json'}: ") == 3, err.getvalue()


@pytest.mark.slow
@settings(max_examples=8, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(alteration=ALTERATIONS)
def test_every_command_works_or_names_the_record_whatever_is_done_to_it(trained, alteration):
    """The commands themselves (show, compare, status, plot, leaderboard build, eval) over a runs directory
    whose ce record is altered at random, deeply nested, or not a file at all: each works or prints one named
    error, never a traceback, never a hang (each command has 120 s)."""
    template = _template(trained)
    with tempfile.TemporaryDirectory(dir=trained.parent) as scratch:
        runs, ce = _copy(trained, Path(scratch))
        _alter(runs, ce, template, alteration)
        _every_command_works_or_names_it(runs, ce, Path(scratch), ce / "result.json")
