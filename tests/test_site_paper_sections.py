"""The web board's paper sections and the small fixes of issue 39 (item 4, and item 6's broken link, stray escape and
wrapping): built from the committed paper-budget records, read as HTML and, where Debian's chromium is installed, in a
browser serving the published layout (the site folder at the root, the docs under ``docs/``)."""

from __future__ import annotations

import copy
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ltbench.results import leaderboard, site
from ltbench.results.references import reference_description, reference_result
from ltbench.results.records import RESULT_FILE

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "leaderboards" / "records"
#: a second setting, made from the committed ce record: ce's CIFAR-100-LT IF50 number was measured in the paper
#: budget's setting (ResNet-32, 200 epochs), so this row has an "ours − paper"
OTHER_SETTING, OTHER_OVERALL = "cifar100-lt-if50", 45.0
#: rows of the cpu budget (3 seeds each: spreads to show), a board with no paper section
CPU_ROWS = ("ce", "cb-sampling", "focal", "ldam-drw")
#: where cam-fusion's code link leads (issue 39: the page linked ".../Long-Tailed-Data (unofficial)")
CAM_FUSION_CODE = "https://github.com/SSRSGJYD/Feature-Space-Augmentation-for-Long-Tailed-Data"


# -- a small DOM from the standard library's parser --------------------------------------------------------------

VOID = {"meta", "link", "input", "br", "img", "hr", "source", "col", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if child.tag == tag and all(_has(child, k, v) for k, v in attrs.items()):
                    found.append(child)
                found += child.find_all(tag, **attrs)
        return found

    def find(self, tag: str, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}>"
        return found[0]


def _has(node: Node, key: str, value: str) -> bool:
    key = key.rstrip("_")
    return value in node.attrs.get(key, "").split() if key == "class" else node.attrs.get(key) == value


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.here = Node("#root", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.here)
        self.here.children.append(node)
        if tag not in VOID:
            self.here = node

    def handle_startendtag(self, tag, attrs):
        self.here.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.here))

    def handle_endtag(self, tag):
        node = self.here
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.here = node.parent

    def handle_data(self, data):
        self.here.children.append(data)


def parse(path: Path) -> Node:
    builder = _Builder()
    builder.feed(path.read_text())
    return builder.root


def table(node: Node) -> tuple[list[str], list[list[Node]]]:
    """A table's headers and its body rows' cells."""
    return [th.text() for th in node.find("thead").find_all("th")], [tr.find_all("td") for tr in
                                                                    node.find("tbody").find_all("tr")]


# -- the site, built once from the committed records ---------------------------------------------------------------


def _committed() -> list[dict]:
    return leaderboard.load_records(RECORDS, [])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The site of the committed paper-budget records, a second setting made from the committed ce record, and the
    cpu budget's rows of CPU_ROWS (a board without a paper section); with the markdown board of the same records."""
    committed = _committed()
    paper = [r for r in committed if r["budget"] == "paper"]
    if not any(r["variant"] == "ce" and r["dataset"] == "cifar100-lt-if100" for r in paper):
        pytest.skip("no committed paper-budget ce record on cifar100-lt-if100")
    tmp = tmp_path_factory.mktemp("paper-sections")
    ce = next(r for r in paper if r["variant"] == "ce" and r["dataset"] == "cifar100-lt-if100")
    other = copy.deepcopy({k: v for k, v in ce.items() if k != "_path"})
    other["dataset"] = OTHER_SETTING
    other["metrics"]["overall"] = OTHER_OVERALL
    path = tmp / "records" / OTHER_SETTING / "paper" / "ce" / other["config_id"] / "seed0" / RESULT_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(other))
    other["_path"] = str(path)
    cpu = [r for r in committed if r["budget"] == "cpu" and r["variant"] in CPU_ROWS]
    records = paper + [other] + cpu
    site.build(records, tmp / "site")
    return {"records": records, "paper": paper + [other], "site": tmp / "site", "index": parse(tmp / "site" /
            "index.html"), "markdown": leaderboard.render(records)}


def _boards(built: dict) -> dict[str, Node]:
    return {s.attrs["id"].removeprefix("board-"): s for s in built["index"].find_all("section", class_="board")}


def _paper_rows(section: Node) -> dict[str, dict[str, Node]]:
    headers, rows = table(section.find("table", class_="paper"))
    return {cells[0].text(): dict(zip(headers, cells)) for cells in rows}


def _markdown_paper_table(markdown: str) -> dict[str, dict[str, str]]:
    """The markdown board's paper section: {method: {header: cell}}."""
    section = markdown.split("## budget `paper`", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(headers, cells)) for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}


def test_every_setting_has_a_paper_section_and_a_board_that_does_not_compare_has_none(built):
    boards = _boards(built)
    settings = {r["dataset"] for r in built["paper"]}
    assert len(settings) >= 2
    for dataset in settings:
        key = f"{dataset}-paper"
        sections = boards[key].find_all("section", class_="paper")
        assert len(sections) == 1 and sections[0].attrs["id"] == f"paper-{key}"
        heading = sections[0].find("h3").text()
        assert heading.startswith(f"Against the papers: {dataset} · budget paper · resnet32")
        assert "200 epochs" in heading
        rows = _paper_rows(sections[0])
        assert set(rows) == {r["variant"] for r in built["paper"] if r["dataset"] == dataset}  # every row, once
    assert boards["cifar100-lt-if100-cpu"].find_all("section", class_="paper") == []  # resnet8: no paper's setting


def test_ours_minus_paper_is_the_markdown_boards_signed_difference(built):
    boards, seen = _boards(built), 0
    for dataset in {r["dataset"] for r in built["paper"]}:
        rows = _paper_rows(boards[f"{dataset}-paper"].find("section", class_="paper"))
        markdown = _markdown_paper_table(built["markdown"][f"{dataset}.md"])
        for method, cells in rows.items():
            recs = [r for r in built["paper"] if r["dataset"] == dataset and r["variant"] == method]
            ours = sum(r["metrics"]["overall"] for r in recs) / len(recs)
            assert cells["ours overall"].text() == f"{ours:.2f}"
            gap = cells["ours − paper"].text()
            assert gap == markdown[method]["ours − paper"]  # the same as the committed markdown shows
            ref = reference_result(recs[0])
            if re.fullmatch(r"[+-]\d+\.\d\d", gap):
                assert gap == f"{ours - ref['overall']:+.2f}"
                assert cells["paper overall"].text() == f"{ref['overall']:.2f}"
                assert float(cells["ours − paper"].attrs["data-value"]) == pytest.approx(float(gap), abs=0.005)
                seen += 1
            else:  # another setting, or none published: said instead of a difference
                assert gap == "no published number" or gap.startswith("other setting: ")
    assert seen >= 2
    ce_if50 = _paper_rows(boards[f"{OTHER_SETTING}-paper"].find("section", class_="paper"))["ce"]
    paper = reference_result(next(r for r in built["paper"] if r["dataset"] == OTHER_SETTING))["overall"]
    assert ce_if50["ours − paper"].text() == f"{OTHER_OVERALL - paper:+.2f}"
    if paper == 43.85:  # the committed reference: the difference is the one a reader computes
        assert ce_if50["ours − paper"].text() == "+1.15"


def test_each_paper_number_states_its_setting_and_source_as_the_markdown_does(built):
    boards, seen = _boards(built), 0
    for dataset in {r["dataset"] for r in built["paper"]}:
        rows = _paper_rows(boards[f"{dataset}-paper"].find("section", class_="paper"))
        markdown = built["markdown"][f"{dataset}.md"]
        for method, cells in rows.items():
            rec = next(r for r in built["paper"] if r["dataset"] == dataset and r["variant"] == method)
            ref = reference_result(rec)
            if not ref or ref.get("overall") is None:
                assert cells["paper's setting"].text() == "–"
                continue
            setting, source = cells["paper's setting"].text(), cells["source"].text()
            assert setting == reference_description(ref) and source == (ref.get("source") or "not stated")
            line = (f"- `{leaderboard._md(method)}`: {ref['overall']:.2f} ({leaderboard._md(setting)}); source: "
                    f"{leaderboard._md(source)}")
            assert line in markdown.splitlines()  # the text the markdown board lists under its paper section
            seen += 1
    assert seen >= 3


def test_each_row_states_its_seeds_and_no_heading_claims_a_spread_over_seeds_it_does_not_have(built):
    boards = _boards(built)
    for dataset in {r["dataset"] for r in built["paper"]}:
        section, counts = boards[f"{dataset}-paper"], set()
        for method, cells in _paper_rows(section.find("section", class_="paper")).items():
            n = len([r for r in built["paper"] if r["dataset"] == dataset and r["variant"] == method])
            assert cells["seeds"].text() == str(n)
            counts.add(n)
        note = section.find("p", class_="seeds").text()
        said = section.find("section", class_="paper").find("p", class_="note").text()
        if counts == {1}:  # today's paper budget: one seed per row
            assert note.startswith("Every row is a single run (seed 0)") and "no spread" in note and note in said
        else:
            assert note.startswith("Each row is the mean over its seeds") and note in said
    cpu_note = boards["cifar100-lt-if100-cpu"].find("p", class_="seeds").text()
    assert cpu_note.startswith("Each row is the mean over its seeds (3;")
    index = built["index"]
    top = index.find("p", class_="note").text()
    assert "mean ± std over seeds" not in top and "± their standard deviation where it has two or more" in top
    headers = {th.text(): th.attrs["title"] for th in index.find_all("th")}
    assert "mean ± std over seeds" not in headers["overall"]


def test_the_paper_section_links_the_paper_budget_page_where_the_docs_are_published(built):
    import yaml

    for dataset in {r["dataset"] for r in built["paper"]}:
        links = _boards(built)[f"{dataset}-paper"].find("section", class_="paper").find_all("a", class_="docs")
        assert [a.attrs["href"] for a in links] == ["docs/paper-budget/"] and "paper budget" in links[0].text()
    # the board is published at the root of the pages, the docs (mkdocs, one folder per page) under docs/
    workflow = yaml.safe_load((REPO / ".github/workflows/leaderboard.yml").read_text())
    runs = " ".join(s.get("run", "") for s in workflow["jobs"]["build"]["steps"])
    assert "cp -r leaderboards/site/. _pages/" in runs and "--site-dir _pages/docs" in runs
    mkdocs = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert mkdocs.get("use_directory_urls", True) and "paper-budget.md" in json.dumps(mkdocs["nav"])
    assert (REPO / "docs" / "paper-budget.md").exists()


def test_the_index_links_the_docs_board_page(built):
    links = [a for a in built["index"].find_all("a", class_="docs") if "Reading the board" in a.text()]
    assert [a.attrs["href"] for a in links] == ["docs/board/"]  # docs/board.md where the docs are published
    assert (REPO / "docs" / "board.md").exists()


def test_a_value_and_its_spread_stay_on_one_line(built):
    spreads = [td for td in built["index"].find_all("td") if "±" in td.text()]
    assert len(spreads) >= 4 * len(CPU_ROWS)  # every accuracy column of the 3-seed rows
    for td in spreads:
        assert re.fullmatch(r"\d+\.\d\d\xa0±\xa0\d+\.\d\d(\xa0[★≈])?", td.text()), repr(td.text())
    css = (built["site"] / "style.css").read_text()
    assert re.search(r"td:not\(\.text\)[^{]*\{\s*white-space:\s*nowrap", css)


def test_code_links_are_urls_and_a_note_after_one_stays_outside_the_link(built):
    from ltbench.plugins.catalog import get_catalog

    for name, entry in get_catalog().methods.items():  # a code_url is a link, nothing else
        code = entry.cls.metadata.code_url
        assert code == "" or re.fullmatch(r"https://\S+", code), (name, code)
    page = parse(built["site"] / "methods" / "cifar100-lt-if100-paper" / "cam-fusion.html")
    links = [a for a in page.find_all("a") if a.text() == "code"]
    assert [a.attrs["href"] for a in links] == [CAM_FUSION_CODE]
    assert "unofficial" in page.text()
    # a record of a method that is not installed keeps its own metadata, perhaps with words after the URL
    link = site._code_link(f"{CAM_FUSION_CODE} (unofficial)")
    assert link == f' · <a href="{CAM_FUSION_CODE}">code</a> (unofficial)'


def test_the_quickstart_shows_no_escaped_pipe():
    markdown = pytest.importorskip("markdown")
    text = (REPO / "docs" / "quickstart.md").read_text()
    assert "\\|" not in markdown.markdown(text, extensions=["tables"])
    assert "--budget {paper,cpu,smoke}" in text  # the alternatives, as --help writes them


# -- in a browser ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_in_a_browser_the_paper_section_reads_and_links_and_spreads_do_not_wrap(built, tmp_path):
    from test_reporting import _browser, _resolves, _serve  # tests/ is on the path, as for toy_methods

    served = tmp_path / "pages"  # the published layout: the site folder at the root, the docs under docs/
    shutil.copytree(built["site"], served)
    pytest.importorskip("material", reason="mkdocs-material builds the docs")
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(served / "docs")],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    browser = _browser()  # skips, saying why, without selenium or chromium
    from selenium.webdriver.support.ui import Select

    server, base = _serve(served)
    try:
        browser.set_window_size(900, 900)
        browser.get(base + "index.html")
        Select(browser.find_element("id", "board-switch")).select_by_value("cifar100-lt-if100-paper")
        section = browser.find_element("id", "paper-cifar100-lt-if100-paper")
        assert section.is_displayed()
        headers = [h.text for h in section.find_elements("css selector", "th")]
        assert headers[:5] == ["method", "seeds", "ours overall", "paper overall", "ours − paper"]
        markdown = _markdown_paper_table(built["markdown"]["cifar100-lt-if100.md"])
        for tr in section.find_elements("css selector", "tbody tr"):
            cells = [td.text for td in tr.find_elements("css selector", "td")]
            assert cells[4] == markdown[cells[0]]["ours − paper"] and cells[1] == "1"
        # sorting by the difference puts the largest first
        section.find_elements("css selector", "th")[4].click()
        gaps = [float(v) for v in browser.execute_script(
            "return Array.from(arguments[0].querySelectorAll('tbody tr')).map(r => r.cells[4].dataset.value)"
            ".filter(v => v !== '')", section)]
        assert len(gaps) >= 2 and gaps == sorted(gaps, reverse=True)
        docs = section.find_element("css selector", "a.docs").get_attribute("href")
        assert docs == base + "docs/paper-budget/" and _resolves(docs)
        # every link of the index resolves where the pages are published
        urls = browser.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
        local = [u for u in urls if u.startswith(base)]
        assert len(local) > 10 and all(_resolves(u) for u in local), [u for u in local if not _resolves(u)]
        # a narrow window: each value and its ± spread keep one line
        Select(browser.find_element("id", "board-switch")).select_by_value("cifar100-lt-if100-cpu")
        browser.set_window_size(700, 900)
        one_line = browser.execute_script("""  // the text's boxes share a horizontal band: one line (sizes differ)
            return Array.from(document.querySelectorAll('#board-cifar100-lt-if100-cpu td')).filter(
              td => td.textContent.includes('±')).map(td => { const r = document.createRange();
              r.selectNodeContents(td); const boxes = Array.from(r.getClientRects()).filter(b => b.width > 0);
              return Math.max(...boxes.map(b => b.top)) < Math.min(...boxes.map(b => b.bottom)); });""")
        assert len(one_line) >= 4 * len(CPU_ROWS) and all(one_line), one_line
        # the cam-fusion page's code link leads to the repository itself
        browser.get(base + "methods/cifar100-lt-if100-paper/cam-fusion.html")
        code = browser.find_element("link text", "code").get_attribute("href")
        assert code == CAM_FUSION_CODE
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert errors == []
    finally:
        browser.quit()
        server.shutdown()
