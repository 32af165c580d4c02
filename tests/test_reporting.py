"""Experiments as files, and results people can read (issue 12): experiment files, summaries, show and
compare, richer records, plots, the web leaderboard in a real browser, and the leaderboard workflow."""

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ltbench.cli import build_parser, main
from ltbench.results import summary
from ltbench.results.records import PREDICTIONS_FILE, RESULT_FILE

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar100.npz"


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.rglob(RESULT_FILE))]


@pytest.fixture(scope="module")
def small_grid(tmp_path_factory) -> Path:
    """ce and cb-sampling, two seeds each, on synthetic-lt: real records with predictions and history."""
    out = tmp_path_factory.mktemp("grid")
    assert main(["run", "--methods", "ce,cb-sampling", "--datasets", "synthetic-lt", "--seeds", "0,1",
                 "--budget", "smoke", "--output", str(out), "--quiet"]) == 0
    return out


# ---------------------------------------------------------------------------------------------------------------
# experiment files


def test_an_experiment_file_runs_its_grid_and_its_named_variants(tmp_path, capsys):
    exp = tmp_path / "exp.toml"
    exp.write_text(f"""
methods = ["ce"]
datasets = ["synthetic-lt"]
seeds = [0, 1]
budget = "smoke"
output = "{tmp_path / 'runs'}"
quiet = true

[set]
eval_batch_size = 64

[variants.focal-g05]
method = "focal"
set = {{ gamma = 0.5 }}
""")
    assert main(["run", "--config", str(exp), "--seeds", "3"]) == 0  # the flag overrides the file's seeds
    said = capsys.readouterr().out
    recs = _records(tmp_path / "runs")
    assert sorted((r["variant"], r["seed"]) for r in recs) == [
        ("ce [eval_batch_size=64]", 3), ("focal [eval_batch_size=64, gamma=0.5]", 3)]
    assert all(r["config"]["eval_batch_size"] == 64 for r in recs)  # [set] reaches the variants too
    # the summary, printed with --quiet too: one row per method or variant, and the smoke warning
    assert "focal [eval_batch_size=64, gamma=0.5]" in said and "smoke-budget numbers only show that the runs work" in said


def test_methods_on_the_command_line_narrow_an_experiment_files_variants_too(tmp_path):
    """``--config paper.toml --methods crt`` runs crt alone, not the file's variants as well; a variant's name
    runs that variant (not the plain method of the same name)."""
    from ltbench.grid.orchestrate import plan_cells, run_options

    exp = tmp_path / "exp.toml"
    exp.write_text('''
methods = ["ce", "crt"]
datasets = ["synthetic-lt"]
budget = "smoke"

[variants.focal]
method = "focal"
set = { gamma = 0.5 }
''')

    def planned(*flags):
        args = run_options(build_parser().parse_args(["run", "--config", str(exp), *flags]))
        return sorted((c.label, c.seed) for c in plan_cells(args))

    assert planned("--methods", "crt") == [("crt", 0)]
    assert planned("--methods", "focal,ce") == [("ce", 0), ("focal [gamma=0.5]", 0)]
    assert planned() == [("ce", 0), ("crt", 0), ("focal [gamma=0.5]", 0)]


@pytest.mark.parametrize("text, message", [
    ('methods = ["ce"]\nmethds = ["x"]', "unknown experiment-file key 'methds'. Did you mean 'methods'?"),
    ('methods = "ce"\nepochs = "ten"', "epochs must be an integer, got 'ten'"),
    ('methods = ["ce"]\n[variants.v]\nmethod = "ce"\nsett = {}', "unknown variant key 'sett'"),
    ('methods = ["ce"]\n[slurm]\npartiton = "gpu"', "unknown [slurm] key 'partiton'"),
    ('methods = ["ce"\n', "not valid TOML"),
    ('datasets = ["synthetic-lt"]', "--methods: give at least one method"),
    ('methods = ["ce"]\n[set]\nlearning_rate = 0.1', "unknown --set key 'learning_rate'"),
])
def test_a_bad_experiment_file_is_refused_naming_the_key(text, message, tmp_path, capsys):
    exp = tmp_path / "bad.toml"
    exp.write_text(text)
    assert main(["run", "--config", str(exp), "--datasets", "synthetic-lt", "--budget", "smoke",
                 "--output", str(tmp_path / "runs")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob(RESULT_FILE))


#: cpu rows whose defaults changed with a fidelity fix; their committed records hold the old configuration
AWAITING_RETRAIN: dict[str, str] = {}


@pytest.mark.skipif(not CIFAR.exists(), reason=f"needs CIFAR-100 at {CIFAR}")
def test_the_board_file_plans_exactly_the_committed_records():
    from ltbench.grid.orchestrate import plan_cells, run_options

    def plan(board: str):
        args = run_options(build_parser().parse_args(["run", "--config", str(REPO / "leaderboards" / board),
                                                       "--data-root", str(CIFAR.parent)]))
        return args, plan_cells(args)

    args, cells = plan("cifar100-lt-if100.toml")
    planned = {(c.method, c.config_id, c.seed) for c in cells}
    paper_cells = []  # the paper-budget rows, landing over sessions: a file per imbalance factor
    for board in sorted(p.name for p in (REPO / "leaderboards").glob("*-paper*.toml")):  # seeds files too
        paper_args, cells_of_board = plan(board)
        assert paper_args.output == args.output and paper_args.budget == "paper"
        paper_cells += cells_of_board
    records = _records(REPO / "leaderboards/records")
    committed = {(r["method"], r["config_id"], r["seed"]) for r in records if r["budget"] == "cpu"}
    # a row whose defaults a fidelity fix changed: on the board at its old configuration until its retrain lands,
    # and planned at its new one (named here, so that it is never silently stale)
    for method in AWAITING_RETRAIN:
        assert any(m == method for m, _, _ in committed) and any(m == method for m, _, _ in planned), method
    committed_now = {key for key in committed if key[0] not in AWAITING_RETRAIN}
    planned = {key for key in planned if key[0] not in AWAITING_RETRAIN}
    committed = committed_now
    assert committed and committed <= planned  # running the file skips every committed run
    paper = {(r["method"], r["config_id"], r["seed"]) for r in records if r["budget"] == "paper"}
    paper_planned = {(c.method, c.config_id, c.seed) for c in paper_cells}
    for method in AWAITING_RETRAIN:  # the paper rows of a changed method too, where it has one
        if any(m == method for m, _, _ in paper):
            assert any(m == method for m, _, _ in paper_planned), method
    paper = {key for key in paper if key[0] not in AWAITING_RETRAIN}
    assert paper <= paper_planned
    assert {r["budget"] for r in records} <= {"cpu", "paper"}
    # and the board is complete: every planned run (each row's 3 seeds) is committed
    assert planned <= committed, sorted(planned - committed)[:10]
    assert Path(args.output).resolve() == REPO / "leaderboards" / "records"  # relative to the file's folder
    # every built-in method has a row (alone or in a composition), at 3 seeds, on the budget
    from ltbench.plugins.catalog import get_catalog

    builtin = {name for name, entry in get_catalog().methods.items() if entry.plugin.distribution == "ltbench"}
    on_board = {part for c in cells for part in c.method.split("+")}
    assert builtin <= on_board, sorted(builtin - on_board)
    assert {c.seed for c in cells} == {0, 1, 2} and args.budget == "cpu"


# ---------------------------------------------------------------------------------------------------------------
# records, summaries, comparisons


def test_records_carry_predictions_class_names_history_and_validation_curves(small_grid):
    for rec in _records(small_grid):
        run_dir = next(small_grid.rglob(f"{rec['method']}/{rec['config_id']}/seed{rec['seed']}"))
        with np.load(run_dir / PREDICTIONS_FILE) as data:
            labels, preds, confusion = data["labels"], data["predictions"], data["confusion"]
        per_class = [100.0 * np.mean(preds[labels == c] == c) for c in range(len(rec["train_counts"]))]
        assert rec["per_class_accuracy"] == pytest.approx(per_class)
        assert np.array_equal(np.diag(confusion), [np.sum((preds == c) & (labels == c)) for c in range(10)])
        assert rec["class_names"] and len(rec["class_names"]) == 10
        assert [e["epoch"] for e in rec["history"]] == [1, 2, 3]  # the smoke budget's 3 epochs
        # validation every val_every (2) epochs, and at the last
        assert [e["epoch"] for e in rec["history"] if "val_overall" in e] == [2, 3]


def test_show_gives_the_mean_and_std_over_seeds_in_every_format(small_grid, capsys):
    recs = _records(small_grid)
    ce = [r["metrics"]["overall"] for r in recs if r["method"] == "ce"]
    assert main(["show", str(small_grid), "--format", "csv"]) == 0
    table = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    row = table[table["method"] == "ce"].iloc[0]
    assert row["overall"] == pytest.approx(np.mean(ce)) and row["overall_std"] == pytest.approx(np.std(ce, ddof=1))
    assert row["seeds"] == 2 and row["failed"] == 0
    assert main(["show", str(small_grid), "--format", "json"]) == 0
    assert {r["method"] for r in json.loads(capsys.readouterr().out)} == {"ce", "cb-sampling"}
    assert main(["show", str(small_grid), "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("| dataset") and f"{np.mean(ce):.2f} ± {np.std(ce, ddof=1):.2f}" in text


def test_show_and_compare_refuse_bad_input(small_grid, tmp_path, capsys):
    assert main(["show", str(tmp_path)]) == 2
    assert "no run records (result.json) under" in capsys.readouterr().err
    assert main(["show", str(small_grid), "--format", "xml"]) == 2
    assert "unknown format 'xml'" in capsys.readouterr().err
    assert main(["compare", str(small_grid), "ce", "cb-sampln"]) == 2
    assert "unknown method 'cb-sampln'. Did you mean 'cb-sampling'?" in capsys.readouterr().err


def test_compare_on_smoke_records_says_they_mean_nothing_as_show_does(small_grid, capsys):
    from ltbench.results.summary import SMOKE_NOTE

    assert main(["compare", str(small_grid), "cb-sampling", "ce"]) == 0
    assert f"Note: {SMOKE_NOTE}." in capsys.readouterr().out


def test_compare_pairs_seeds_and_test_images(small_grid, capsys):
    assert main(["compare", str(small_grid), "cb-sampling", "ce", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    recs = {(r["method"], r["seed"]): r for r in _records(small_grid)}
    expected = np.mean([recs[("cb-sampling", s)]["metrics"]["overall"] - recs[("ce", s)]["metrics"]["overall"]
                        for s in (0, 1)])
    assert result["resampled"] == "seeds and test images" and result["seeds"] == [0, 1]
    assert result["groups"]["overall"]["difference"] == pytest.approx(expected)
    low, high = result["groups"]["overall"]["ci95"]
    assert low <= expected <= high
    # a method against itself: no difference, and not distinguishable from noise
    same = summary.compare(summary.load_records(small_grid), "ce", "ce", n_boot=200)
    assert same["groups"]["overall"]["difference"] == 0 and not same["groups"]["overall"]["distinguishable"]


def _fake(method, seed, preds, labels, tmp):
    d = tmp / method / f"seed{seed}"
    d.mkdir(parents=True)
    np.savez(d / PREDICTIONS_FILE, labels=labels, predictions=preds, confusion=np.zeros((2, 2)))
    acc = [100.0 * np.mean(preds[labels == c] == c) for c in (0, 1)]
    rec = {"status": "completed", "method": method, "variant": method, "dataset": "d", "budget": "b", "seed": seed,
           "metrics": {"overall": float(np.mean(acc)), "many": None, "medium": None, "few": None},
           "per_class_accuracy": acc, "train_counts": [500, 500], "files": {"predictions": PREDICTIONS_FILE},
           "group_thresholds": {"few_below": 20, "many_above": 100}, "config_id": "fake", "methods": [method],
           "config": {"backbone": "none", "epochs": 1}, "wall_time_s": 1.0}
    (d / RESULT_FILE).write_text(json.dumps(rec))


def test_the_bootstrap_interval_separates_a_real_gap_and_straddles_a_coin_flip(tmp_path):
    """Two classes of 200 test images: A is right on 80 %, B on 50 %, C on 50 % of other images."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    for seed in (0, 1, 2):
        right = lambda p: np.where(rng.random(400) < p, labels, 1 - labels)  # noqa: E731
        _fake("a", seed, right(0.8), labels, tmp_path)
        _fake("b", seed, right(0.5), labels, tmp_path)
        _fake("c", seed, right(0.5), labels, tmp_path)
    records = summary.load_records(tmp_path)
    gap = summary.compare(records, "a", "b", n_boot=500)["groups"]["overall"]
    assert gap["distinguishable"] and 15 < gap["ci95"][0] < 30 < gap["ci95"][1]
    noise = summary.compare(records, "b", "c", n_boot=500)["groups"]["overall"]
    assert not noise["distinguishable"] and noise["ci95"][0] < 0 < noise["ci95"][1]


# ---------------------------------------------------------------------------------------------------------------
# plots and the web leaderboard


def test_plot_writes_every_plot_as_png_and_svg(small_grid, tmp_path):
    assert main(["plot", str(small_grid), "--out", str(tmp_path / "plots")]) == 0
    names = sorted(p.name for p in (tmp_path / "plots").iterdir())
    key = "synthetic-lt-if30-smoke"
    assert names == sorted(f"{key}-{kind}.{ext}" for kind in ("groups", "learning", "per-class")
                           for ext in ("png", "svg"))
    assert all((tmp_path / "plots" / n).stat().st_size > 5000 for n in names)


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no Debian chromium + chromium-driver on this machine (apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def _serve(folder: Path):
    """An HTTP server on 127.0.0.1 whose web root is ``folder`` alone: a link out of it is a 404."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/"


def _resolves(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.split("#")[0], timeout=10) as answer:
            return answer.status == 200
    except urllib.error.URLError:
        return False


@pytest.mark.slow
def test_the_web_leaderboard_served_alone_switches_boards_marks_noise_and_filters_its_charts(small_grid, tmp_path):
    from ltbench.results import leaderboard, site

    grid = tmp_path / "runs"
    shutil.copytree(small_grid, grid)
    assert main(["run", "--methods", "ce", "--datasets", "synthetic-lt", "--imbalance-factor", "10", "--budget",
                 "smoke", "--output", str(grid), "--quiet"]) == 0  # a second board
    out = tmp_path / "board"
    assert leaderboard.build(grid, out)
    served = tmp_path / "served"
    shutil.copytree(out / "site", served)  # the folder alone, as the workflow publishes it
    assert "http" not in (served / "index.html").read_text()  # nothing loaded from elsewhere
    browser = _browser()  # skips, saying why, without selenium or chromium
    from selenium.webdriver.support.ui import Select

    server, base = _serve(served)
    try:
        browser.get(base + "index.html")
        boards = browser.find_elements("css selector", "section.board")
        assert len(boards) == 2 and [b.is_displayed() for b in boards] == [True, False]
        Select(browser.find_element("id", "board-switch")).select_by_value("synthetic-lt-if30-smoke")
        assert [b.is_displayed() for b in boards] == [False, True]
        board = boards[1]
        records = [r for r in summary.load_records(out / "records") if r["dataset"] == "synthetic-lt-if30"]
        heading = board.find_element("css selector", "h2").text
        assert heading.startswith("synthetic-lt-if30 · budget smoke · ") and records[0]["config"]["backbone"] in heading
        assert heading.endswith(f"{records[0]['config']['epochs']} backbone epochs")
        headers = board.find_elements("css selector", "th")
        names = [h.text for h in headers]
        assert {"backbone epochs", "params (M)", "MACs (M)", "wall × ce", "paper many"} <= set(names)
        assert all(h.get_attribute("title") for h in headers)  # each column says what it means

        # the best of each accuracy column, and whether the other row is within noise of it, as `compare` says
        def cell(method, column):
            row = board.find_element("xpath", f".//tbody/tr[td[2]/a[text()='{method}']]")
            return row.find_elements("css selector", "td")[names.index(column)].text

        for g in ("overall", "many", "medium", "few"):
            means = {m: np.mean([r["metrics"][g] for r in records if r["variant"] == m]) for m in ("ce", "cb-sampling")}
            best, other = sorted(means, key=means.get, reverse=True)
            assert "★" in cell(best, g) and "★" not in cell(other, g)
            verdict = summary.compare(records, other, best, n_boot=site.NOISE_DRAWS)["groups"][g]
            assert ("≈" in cell(other, g)) == (not verdict["distinguishable"])

        def drawn(selector):
            return [e for e in board.find_elements("css selector", selector) if e.is_displayed()]

        assert len(drawn("svg.pareto .point")) == 2 and len(drawn("svg.bars g.method")) == 2
        assert len(board.find_element("css selector", "svg.pareto .front").get_attribute("points").split()) >= 1
        # the filters apply to the rows and to both charts; the front is drawn again over what is shown
        browser.find_element("css selector", '.filters input[value="re-sampling"]').click()
        shown = [r.find_elements("css selector", "td")[1].text for r in board.find_elements("css selector", "tbody tr")
                 if r.is_displayed()]
        assert shown == ["ce"]  # the rank comes first, then the name
        assert len(drawn("svg.pareto .point")) == 1 and len(drawn("svg.bars g.method")) == 1
        assert len(board.find_element("css selector", "svg.pareto .front").get_attribute("points").split()) == 1
        # every link and image of the index resolves with the site folder as the web root, but for the links to
        # the docs, published beside the site (test_site_paper_sections serves both as the workflow publishes them)
        urls = browser.execute_script("return Array.from(document.querySelectorAll('a[href]:not(.docs)'))"
                                      ".map(a => a.href).concat(Array.from(document.images).map(i => i.src))")
        assert len(urls) > 10 and all(_resolves(u) for u in urls), [u for u in urls if not _resolves(u)]
        docs = browser.execute_script("return Array.from(document.querySelectorAll('a.docs')).map(a => a.href)")
        assert base + "docs/board/" in docs
        # the figures of every row at once are a page of their own: nothing on the index ignores the filters
        figures = board.find_element("partial link text", "Every row in one figure each").get_attribute("href")
        browser.get(figures)
        images = browser.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert len(images) == 3 and all(images)
        browser.back()
        Select(browser.find_element("id", "board-switch")).select_by_value("synthetic-lt-if30-smoke")
        # one method's page: per-class accuracy (a point per class), learning curves, its links
        browser.find_element("xpath", "//section[@id='board-synthetic-lt-if30-smoke']//a[text()='ce']").click()
        assert browser.find_element("css selector", "h1").text == "ce"
        assert len(browser.find_elements("css selector", "svg.per-class .point")) == len(records[0]["train_counts"])
        assert browser.find_elements("css selector", "svg.learning polyline")
        urls = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
        local = [u for u in urls if u.startswith(base)]
        assert len(local) >= 3 and all(_resolves(u) for u in local)
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
    finally:
        browser.quit()
        server.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# the leaderboard workflow


def _ltbench_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("ltbench ")]


def test_the_leaderboard_workflow_is_valid_and_runs_only_commands_that_exist():
    import yaml

    workflow = yaml.safe_load((REPO / ".github/workflows/leaderboard.yml").read_text())
    steps = workflow["jobs"]["build"]["steps"]
    runs = [s["run"] for s in steps if "run" in s]
    assert any("ci/leaderboard.sh" in r for r in runs)
    assert workflow["jobs"]["deploy"]["needs"] == "build"
    # the board at the root of the published folder, the docs site (built strictly) under docs/
    assert any(s.get("uses", "").startswith("actions/upload-pages-artifact") and s["with"]["path"] == "_pages"
               for s in steps)
    assert any("cp -r leaderboards/site/. _pages/" in r and "mkdocs build --strict --site-dir _pages/docs" in r
               for r in runs)
    commands = [c for r in runs for c in _ltbench_lines(r)]
    for script in {word for r in runs for word in r.split() if word.startswith("ci/")}:
        commands += _ltbench_lines((REPO / script).read_text())
    assert len(commands) >= 4
    parser = build_parser()
    for command in commands:
        words = [w for w in shlex.split(command)[1:] if w != "$@"]  # "$@": the flags the script was given
        argv = ["value-of-a-shell-variable" if "$" in w else w for w in words]
        parser.parse_args(argv)  # SystemExit on an unknown command or flag


# ---------------------------------------------------------------------------------------------------------------
# progress


def test_a_log_without_a_terminal_gets_phases_heartbeats_and_the_grids_eta(tmp_path, monkeypatch):
    import torch

    from ltbench.training import progress
    from ltbench.grid.plan import plan_grid
    from ltbench.grid.runner import run_grid

    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.0)  # every step and every batch: a line
    lines: list[str] = []
    cells = plan_grid(["crt", "ce"], ["synthetic-lt"], [0], "smoke", settings={"crt.stage2": "cached"},
                      log=lines.append)
    run_grid(cells, tmp_path, torch.device("cpu"), log=lines.append)
    text = "\n".join(lines)
    assert "loading synthetic-lt-if30" in lines[0] and "loaded synthetic-lt-if30" in lines[1]
    assert "stage 1 epoch 1 steps: 1/" in text  # a heartbeat inside an epoch
    assert "extracting the features of" in text and "evaluating: 100 validation and 500 test images" in text
    progress = [line for line in lines if line.startswith("== ") and "runs done" in line]
    assert len(progress) == 2 and "left" in progress[0] and progress[1].endswith("done")
