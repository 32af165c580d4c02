"""Reading the board (issue 39, items 2, 3 and 5): cost only as a ratio to ce measured on the same machine, with the
hardware line; references from the installed methods' current metadata; and on the web table a rank, Δ vs ce with
its paired interval, ★ among rows of the same backbone epochs (more marked ▲), identical computations merged, a
search box, CSV and JSON downloads, ECE and a last-updated line. Built into a temporary folder from synthetic
records (nothing trains), read as HTML, CSV and JSON and, where Debian's chromium is installed, in a browser
serving the site folder alone."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ltbench.results import downloads, leaderboard, reading, site, summary
from ltbench.results.records import RESULT_FILE
from test_site_paper_sections import parse, table  # tests/ is on the path, as for toy_methods

DATASET, BUDGET = "toy-lt-if50", "cpu"
KEY = f"{DATASET}-{BUDGET}"
#: training images per class: many-shot above 100 (3 classes), few-shot under 20 (4), medium the rest (3)
COUNTS = [200, 150, 120, 80, 50, 30, 15, 10, 6, 4]
BASE = [70.0, 65.0, 60.0, 45.0, 40.0, 30.0, 20.0, 15.0, 10.0, 5.0]
MACHINE, OTHER, THIRD = "AMD EPYC, 2 threads", "Intel(R) Xeon(R) Processor, 2 threads", "AMD EPYC, 1 threads"
COMMIT = "0123456789ab"


def _record(row: str, seed: int, shift: float, *, machine: str = MACHINE, wall: float = 100.0, ips: float = 500.0,
            epochs: int = 30, ece: float | None = 10.0, noise: float = 1.0, day: int = 1) -> dict:
    """A completed record of ``row`` at ``seed``: ``BASE`` moved by ``shift`` (and by ``noise`` times a per-seed
    wobble), measured on ``machine`` in ``wall`` seconds at ``ips`` stage-1 images per second."""
    per_class = [a + shift + noise * (0.0, 0.6, -0.4, 0.2)[seed % 4] for a in BASE]
    groups = {"many": per_class[:3], "medium": per_class[3:6], "few": per_class[6:]}
    rec = {"status": "completed", "method": row, "methods": [row], "variant": row, "dataset": DATASET,
           "dataset_name": "toy-lt", "budget": BUDGET, "seed": seed, "config_id": f"{row}-{epochs}",
           "config": {"backbone": "resnet8", "epochs": epochs, "methods": {row: {}}},
           "metrics": {"overall": float(np.mean(per_class)), **{g: float(np.mean(v)) for g, v in groups.items()}},
           "per_class_accuracy": per_class, "train_counts": COUNTS, "class_names": [f"c{i}" for i in range(10)],
           "group_thresholds": {"many_above": 100, "few_below": 20}, "group_sizes": {"many": 3, "medium": 3, "few": 4},
           "wall_time_s": wall, "stage_wall_time_s": {"stage1": wall}, "throughput_img_per_s": {"stage1": ips},
           "device": "cpu", "device_model": machine, "finished_at": f"2026-11-{day:02d}T10:00:00+00:00",
           "method_metadata": {row: {"title": "a copy frozen when it ran", "reference_results": {
               DATASET: {"overall": 99.99, "backbone": "resnet8", "epochs": 30, "source": "the frozen copy"}}}}}
    if ece is not None:
        rec["calibration"] = {"bins": 15, "ece": ece + seed, "nll": 1.0}
    return rec


def _board_records() -> list[dict]:
    """ce; focal, better on every class (and slower: 1.5 × ce's wall time on the same machine); blt, better still
    but with 40 backbone epochs; balanced-softmax and logit-adjust, one computation (logit-adjust's runs on a
    machine where no ce ran); ldam on that machine only, without calibration; cb-sampling at a seed ce lacks."""
    records = []
    for seed in (0, 1, 2):
        records += [_record("ce", seed, 0.0),
                    _record("focal", seed, 3.0, wall=150.0, ips=250.0, ece=8.0, noise=2.0),
                    _record("blt", seed, 6.0, wall=140.0, epochs=40, noise=1.5, day=3),
                    _record("balanced-softmax", seed, 1.0, wall=200.0, noise=0.5),
                    _record("logit-adjust", seed, 1.0, machine=OTHER, wall=50.0, noise=0.5),
                    _record("ldam", seed, -2.0, machine=OTHER, wall=60.0, ece=None, noise=0.3)]
    return records + [_record("cb-sampling", 7, -1.0, machine=THIRD, day=2)]


def _write(records: list[dict], root: Path) -> list[dict]:
    """Lay ``records`` out as a board's records folder and read them back as the build does."""
    for rec in records:
        path = root / rec["dataset"] / rec["budget"] / rec["method"] / rec["config_id"] / f"seed{rec['seed']}"
        path.mkdir(parents=True)
        (path / RESULT_FILE).write_text(json.dumps(rec))
    problems: list[str] = []
    loaded = leaderboard.load_records(root, problems)
    assert problems == [] and len(loaded) == len(records)
    return loaded


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("reading")
    records = _write(_board_records(), tmp / "records")
    with pytest.MonkeyPatch.context() as patch:  # the commit a build in a repository states
        patch.setattr(downloads, "build_commit", lambda folder: COMMIT)
        site.build(records, tmp / "site")
    board = parse(tmp / "site" / "index.html").find("section", id=f"board-{KEY}")
    headers, cells = table(board.find("table", class_="board"))
    rows = {_names(c[headers.index("method")]): dict(zip(headers, c)) for c in cells}
    return {"records": records, "site": tmp / "site", "board": board, "headers": headers, "rows": rows,
            "markdown": leaderboard.render(records)[f"{DATASET}.md"]}


def _names(cell) -> str:
    return " = ".join(a.text() for a in cell.find_all("a"))


def _markdown_rows(markdown: str) -> dict[str, dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(headers, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


# -- item 2: cost that compares --------------------------------------------------------------------------------------


def test_markdown_cost_is_a_ratio_to_ce_on_the_same_machine_never_raw_seconds(built):
    rows = _markdown_rows(built["markdown"])
    assert "wall (s)" not in rows["ce"] and "stage 1 img/s" not in rows["ce"]
    assert rows["ce"]["wall × ce"] == "1.00" and rows["ce"]["stage 1 img/s × ce"] == "1.00"
    assert rows["focal"]["wall × ce"] == "1.50" and rows["focal"]["stage 1 img/s × ce"] == "0.50"
    assert rows["blt"]["wall × ce"] == "1.40"
    # logit-adjust and ldam ran only where no ce did: a dash, and a note that says why, not their 50 and 60 s
    for row in ("logit-adjust", "ldam", "cb-sampling"):
        assert rows[row]["wall × ce"] == "–" and rows[row]["stage 1 img/s × ce"] == "–", row
    assert not any(cell in ("50", "60", "100", "150") for row in rows.values() for cell in row.values())
    note = next(line for line in built["markdown"].splitlines() if line.startswith("– in the cost ratios"))
    assert f"{OTHER} (ldam, logit-adjust)" in note and f"{THIRD} (cb-sampling)" in note
    assert f"Measured on: {THIRD} (1 runs); {MACHINE} (12 runs); {OTHER} (6 runs)" in built["markdown"]


def test_a_run_trained_on_several_machines_has_no_cost_ratio_and_is_never_a_baseline():
    """A paper-budget run carried between sessions sums seconds from several machines: set beside ce on its last
    machine (or, as a ce run, set under others) its ratio would compare nothing."""
    carried = [{"stage": 1, "first_epoch": 1, "last_epoch": 10, "device_model": OTHER},
               {"stage": 1, "first_epoch": 11, "last_epoch": 30, "device_model": MACHINE}]
    ce, row = _record("ce", 0, 0.0), _record("focal", 0, 1.0, wall=150.0)
    moved_row, moved_ce = dict(row, machines=carried), dict(_record("ce", 1, 0.0, wall=1.0), machines=carried)
    stayed = dict(row, machines=carried[1:])  # one machine throughout: a ratio as before
    base = reading.baselines([ce, moved_ce, moved_row, stayed])
    assert base == {MACHINE: {"wall": 100.0, "ips1": 500.0}}  # the carried ce is left out
    assert reading.relative_cost(stayed, base)["wall"] == 1.5
    assert reading.machine(moved_row) == reading.SEVERAL
    assert reading.relative_cost(moved_row, base) == {"wall": None, "stage2": None, "ips1": None, "ips2": None}
    unstated = dict(row, machines=[dict(carried[0], device_model=None), carried[1]])  # a part ran before they were noted
    assert reading.relative_cost(unstated, base)["wall"] is None
    elsewhere = dict(row, machines=carried[:1])  # all its epochs on another machine than the one it finished on
    assert reading.machine(elsewhere) == reading.SEVERAL
    note = reading.cost_note([ce, moved_row], base)
    assert "the runs of focal trained on several machines" in note and "measured on" not in note


def test_web_cost_is_a_ratio_to_ce_on_the_same_machine_with_the_hardware_line(built):
    rows = built["rows"]
    assert "wall (s)" not in built["headers"]
    assert rows["ce"]["wall × ce"].text() == "1.00" and rows["focal"]["wall × ce"].text() == "1.50"
    assert rows["focal"]["img/s × ce"].text() == "0.50"
    assert float(rows["focal"]["wall × ce"].attrs["data-value"]) == pytest.approx(1.5)
    # the merged row: balanced-softmax's runs have a same-machine ce (200 s against 100 s); logit-adjust's none
    assert rows["balanced-softmax = logit-adjust"]["wall × ce"].text() == "2.00"
    assert rows["ldam"]["wall × ce"].text() == "–" and rows["ldam"]["wall × ce"].attrs["data-value"] == ""
    board = built["board"]
    assert board.find("p", class_="cost").text() == reading.cost_note(built["records"], reading.baselines(
        built["records"]))
    hardware = board.find("p", class_="hardware").text()
    assert hardware == f"Measured on: {THIRD} (1 runs); {MACHINE} (12 runs); {OTHER} (6 runs)"
    assert hardware in built["markdown"]  # the markdown board's line, on the web too


# -- item 3: references from the installed methods -------------------------------------------------------------------


def _set_reference(monkeypatch, method: str, refs: dict) -> None:
    from ltbench.plugins.catalog import get_catalog

    entry = get_catalog().methods[method]
    monkeypatch.setattr(entry.cls, "metadata", dataclasses.replace(entry.cls.metadata, reference_results=refs))


def test_a_changed_reference_of_the_installed_method_reaches_the_markdown_and_the_site(built, monkeypatch, tmp_path):
    records = [r for r in built["records"] if r["variant"] in ("ce", "focal")]
    for number, source in ((12.34, "Table 1 as corrected"), (23.45, "Table 2, a later correction")):
        _set_reference(monkeypatch, "ce", {DATASET: {"overall": number, "many": number + 1, "backbone": "resnet8",
                                                     "epochs": 30, "source": source}})
        ours = np.mean([r["metrics"]["overall"] for r in records if r["variant"] == "ce"])
        rows = _markdown_rows(leaderboard.render(records)[f"{DATASET}.md"])
        assert rows["ce"]["paper overall"] == f"{number:.2f}"  # never the record's frozen 99.99
        assert rows["ce"]["ours − paper"] == f"{ours - number:+.2f}"
        out = tmp_path / str(number)
        site.build(records, out)
        board = parse(out / "index.html").find("section", id=f"board-{KEY}")
        headers, cells = table(board.find("table", class_="board"))
        ce = dict(zip(headers, next(c for c in cells if _names(c[1]) == "ce")))
        assert ce["paper overall"].text() == f"{number:.2f}" and ce["paper many"].text() == f"{number + 1:.2f}"
        headers, cells = table(board.find("section", class_="paper").find("table"))
        paper = dict(zip(headers, next(c for c in cells if c[0].text() == "ce")))
        assert paper["paper overall"].text() == f"{number:.2f}" and paper["source"].text() == source
        assert paper["ours − paper"].text() == rows["ce"]["ours − paper"]
        page = (out / "methods" / KEY / "ce.html").read_text()
        assert source in page and "the frozen copy" not in page and "99.99" not in page
        download = json.loads((out / "tables" / "papers" / f"{KEY}.json").read_text())
        assert next(r for r in download["rows"] if r["method"] == "ce")["paper_overall"] == number


# -- item 5: reading the table ---------------------------------------------------------------------------------------


def test_the_rank_is_the_place_by_overall_with_merged_rows_counted_once(built):
    ranks = {name: row["rank"].text() for name, row in built["rows"].items()}
    means = {name: float(row["overall"].attrs["data-value"]) for name, row in built["rows"].items()}
    order = sorted(means, key=means.get, reverse=True)
    assert [ranks[name] for name in order] == [str(i) for i in range(1, len(order) + 1)]
    assert order[0] == "blt" and built["headers"][0] == "rank"
    assert reading.ranks([3.0, 2.0, 2.0, None, 1.0]) == [1, 2, 2, None, 4]  # equal means share a place


def test_delta_vs_ce_is_the_paired_bootstrap_comparison_and_a_rebuild_prints_the_same(built, tmp_path):
    rows, seen = built["rows"], 0
    assert rows["ce"]["Δ vs ce"].text() == "baseline"
    for name in ("focal", "blt", "ldam", "balanced-softmax = logit-adjust"):
        first = name.split(" = ")[0]
        verdict = summary.compare(built["records"], first, "ce", dataset=DATASET, budget=BUDGET,
                                  n_boot=site.NOISE_DRAWS)["groups"]["overall"]
        low, high = verdict["ci95"]
        shown = rows[name]["Δ vs ce"].text()
        assert shown == f"{verdict['difference']:+.2f}\xa0[{low:+.2f},\xa0{high:+.2f}]", (name, shown)
        assert low < verdict["difference"] < high  # a real interval: the seeds differ
        seen += 1
    assert seen == 4
    assert rows["cb-sampling"]["Δ vs ce"].text() == "–"  # no seed in common with ce: nothing to pair
    records = _write(_board_records(), tmp_path / "records")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(downloads, "build_commit", lambda folder: COMMIT)
        site.build(records, tmp_path / "site")
    assert (tmp_path / "site" / "index.html").read_text() == (built["site"] / "index.html").read_text()


def test_the_markdown_board_prints_the_same_delta_vs_ce_as_the_web(built):
    """The markdown board (what the README links) has the web's Δ vs ce column: the same paired comparison."""
    markdown = _markdown_rows(built["markdown"])
    assert markdown["ce"]["Δ vs ce [95 %]"] == "baseline" and markdown["cb-sampling"]["Δ vs ce [95 %]"] == "–"
    for name in ("focal", "blt", "ldam"):
        verdict = summary.compare(built["records"], name, "ce", dataset=DATASET, budget=BUDGET,
                                  n_boot=leaderboard.DELTA_DRAWS)["groups"]["overall"]
        low, high = verdict["ci95"]
        assert markdown[name]["Δ vs ce [95 %]"] == f"{verdict['difference']:+.2f} [{low:+.2f}, {high:+.2f}]"
        assert markdown[name]["Δ vs ce [95 %]"] == built["rows"][name]["Δ vs ce"].text().replace("\xa0", " ")


def test_the_star_goes_to_the_best_of_the_same_backbone_epochs_and_more_epochs_are_marked(built):
    rows = built["rows"]
    assert float(rows["blt"]["overall"].attrs["data-value"]) > float(rows["focal"]["overall"].attrs["data-value"])
    assert "★" not in rows["blt"]["overall"].text()  # alone with its 40 epochs: the best of nothing
    assert "★" in rows["focal"]["overall"].text()  # the best of the 30-epoch rows, ce's compute
    assert sum("★" in row["overall"].text() for row in rows.values()) == 1
    assert "▲" in rows["blt"]["backbone epochs"].text()
    assert not any("▲" in row["backbone epochs"].text() for name, row in rows.items() if name != "blt")


def test_identical_computations_are_one_row_with_both_names_by_the_markdown_boards_rule(built):
    rows = built["rows"]
    assert "balanced-softmax = logit-adjust" in rows and "balanced-softmax" not in rows and "logit-adjust" not in rows
    cell = rows["balanced-softmax = logit-adjust"]["method"]
    assert [a.attrs["href"] for a in cell.find_all("a")] == [f"methods/{KEY}/balanced-softmax.html",
                                                             f"methods/{KEY}/logit-adjust.html"]
    assert "one computation under 2 names" in cell.attrs["title"]
    assert ("Identical results: `balanced-softmax` and `logit-adjust` score the same accuracy on every class at "
            "every seed") in built["markdown"]  # the markdown board's note, from the same rule
    assert (built["site"] / "methods" / KEY / "logit-adjust.html").exists()  # each name keeps its page


def test_the_ece_column_is_the_mean_over_seeds_and_a_dash_where_a_record_has_none(built):
    rows = built["rows"]
    assert rows["ce"]["ECE (%)"].text() == "11.00"  # 10, 11 and 12 over the seeds
    assert rows["focal"]["ECE (%)"].text() == "9.00"
    assert rows["ldam"]["ECE (%)"].text() == "–"


def test_the_last_updated_line_gives_the_newest_record_the_commit_and_the_version(built):
    from ltbench.hookspecs import installed_version

    line = parse(built["site"] / "index.html").find("p", class_="updated").text()
    assert line == f"Last updated: newest record 2026-11-03 · commit {COMMIT} · ltbench {installed_version()}"
    assert downloads.last_updated(built["records"], None) == (f"Last updated: newest record 2026-11-03 · ltbench "
                                                              f"{installed_version()}")


def test_every_table_downloads_as_csv_and_json_beside_the_html(built):
    links = [a.attrs["href"] for a in built["board"].find("p", class_="downloads").find_all("a")]
    assert links == [f"tables/{KEY}.csv", f"tables/{KEY}.json"]
    with open(built["site"] / links[0], newline="") as f:
        lines = list(csv.DictReader(f))
    data = json.loads((built["site"] / links[1]).read_text())
    assert data["board"] == KEY and data["measured_on"] in built["board"].find("p", class_="hardware").text()
    assert [r["method"] for r in lines] == [r["method"] for r in data["rows"]] == list(built["rows"])
    for line, row in zip(lines, data["rows"]):
        cells = built["rows"][row["method"]]
        assert line["rank"] == str(row["rank"]) == cells["rank"].text()
        assert float(line["overall"]) == pytest.approx(row["overall"]) == pytest.approx(
            float(cells["overall"].attrs["data-value"]), abs=1e-6)
        assert row["ece"] is None or f"{row['ece']:.2f}" == cells["ECE (%)"].text()
    ce = next(r for r in data["rows"] if r["method"] == "ce")
    focal = next(r for r in data["rows"] if r["method"] == "focal")
    assert ce["wall_x_ce"] == 1.0 and focal["wall_x_ce"] == pytest.approx(1.5) and focal["delta_vs_ce"] > 0
    assert next(r for r in data["rows"] if r["method"] == "blt")["more_backbone_epochs_than_ce"] is True


def test_the_search_box_is_inline_script_that_filters_rows_by_name(built):
    index = (built["site"] / "index.html").read_text()
    assert 'id="search"' in index and "http" not in index  # nothing fetched: the site works offline
    assert "getElementById('search')" in index and "dataset.name" in index
    body = built["board"].find("table", class_="board").find("tbody")
    assert [tr.attrs.get("data-name") for tr in body.find_all("tr")] == list(built["rows"])


@pytest.mark.slow
def test_in_a_browser_the_search_box_filters_rows_and_charts_and_the_downloads_resolve(built, tmp_path):
    from test_reporting import _browser, _resolves, _serve

    served = tmp_path / "served"
    shutil.copytree(built["site"], served)  # the folder alone, as the workflow publishes it
    browser = _browser()  # skips, saying why, without selenium or chromium
    server, base = _serve(served)
    try:
        browser.get(base + "index.html")
        board = browser.find_element("id", f"board-{KEY}")

        def shown(selector: str) -> list:
            return [e for e in board.find_elements("css selector", selector) if e.is_displayed()]

        assert len(shown("table.board tbody tr")) == len(built["rows"])
        browser.find_element("id", "search").send_keys("SOFT")  # case does not matter
        assert [r.find_elements("css selector", "td")[1].text for r in shown("table.board tbody tr")] == [
            "balanced-softmax = logit-adjust"]
        assert [p.get_attribute("data-method") for p in shown("svg.pareto .point")] == ["balanced-softmax"]
        browser.find_element("id", "search").clear()
        browser.find_element("id", "search").send_keys("l")
        assert [r.get_attribute("data-name") for r in shown("table.board tbody tr")] == [
            name for name in built["rows"] if "l" in name]  # blt, focal, balanced-softmax = logit-adjust, ...
        for a in board.find_elements("css selector", "p.downloads a"):
            url = a.get_attribute("href")
            assert url.startswith(base) and _resolves(url), url
        with __import__("urllib.request").request.urlopen(base + f"tables/{KEY}.csv") as answer:
            assert next(csv.reader(io.StringIO(answer.read().decode())))[:2] == ["rank", "method"]
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
    finally:
        browser.quit()
        server.shutdown()



# -- item 1 on the web: the training compute column -------------------------------------------------------------------


def test_the_web_table_shows_each_rows_counted_training_compute_and_marks_an_estimate(tmp_path):
    """The web table has the markdown board's training compute: the FLOPs counted on the training steps (here sam's
    are twice ce's per image), ``~`` before an estimate for records that predate counting (6 × MACs × images)."""
    def counted(row: str, seed: int, per_image: float | None) -> dict:
        rec = _record(row, seed, {"ce": 0.0, "sam": 1.0, "focal": 2.0}[row])
        rec["config"]["epochs"] = 2
        rec["history"] = [{"stage": 1, "epoch": e, "images": 1000, "train_flops_per_image": per_image}
                          for e in range(2)]
        rec["cost"] = {"parameters": 80_000, "inference_macs_per_image": 10_000_000}
        return rec
    records = [counted("ce", s, 6e10) for s in (0, 1)] + [counted("sam", s, 1.2e11) for s in (0, 1)]
    records += [counted("focal", s, None) for s in (0, 1)]  # predates counting: estimated
    site.build(_write(records, tmp_path / "records"), tmp_path / "site")
    board = parse(tmp_path / "site" / "index.html").find("section", id=f"board-{KEY}")
    headers, cells = table(board.find("table", class_="board"))
    column = {_names(c[headers.index("method")]): c[headers.index("training PFLOPs")].text() for c in cells}
    # 2 epochs of 1000 images: 6e10 x 2000 = 0.12 PFLOPs; the estimate 6 x 1e7 MACs x 2000 images
    assert column == {"ce": "0.12", "sam": "0.24", "focal": "~0.00012"}
    data = json.loads((tmp_path / "site" / "tables" / f"{KEY}.json").read_text())
    flops = {r["method"]: (r["training_pflops"], r["training_flops_estimated"]) for r in data["rows"]}
    assert flops["sam"][0] == pytest.approx(2 * flops["ce"][0]) and flops["focal"][1] and not flops["sam"][1]
