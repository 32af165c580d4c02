"""Every number docs/board.md's findings ("Reading the board") quote is printed by ``ci/board_findings.py`` from the
committed records, as quoted (issue 37, item 8).

The section runs from its heading to the end of the page and is split at its headings: a heading per finding
(``### Breadcrumb trails cRT by 1.2 points, all of it many-shot``), grouped under a heading per kind of method
(``## Losses``); a finding is its heading and its text down to the next heading. Each number a finding quotes
(its heading's included) must appear among the numbers the script prints, with the same digits: a sign the page
writes must be the printed sign (an unsigned quote, "5.29 below", matches either), an interval ``[a, b]`` must be
printed as one, ``d,ddd`` is ``dddd``. A number that the records do not hold (a paper's length or value, a setting
the page names without a committed record behind it) is listed in ``NOT_IN_RECORDS`` under its finding (keyed by
the start of its heading) with why; a heading that rounds a printed number ("trails cRT by 1.2 points") is listed
in ``ROUNDED`` with the printed number it rounds, which must itself be printed. So the test goes red when a quoted number changes, when the script stops
printing a comparison the page quotes, and when an exemption no longer matches the page.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "board.md"
SECTION = "## Reading the board"

#: names that contain digits but quote no measurement; removed before numbers are read
NAMES = re.compile(r"`[^`]*`|ResNet-\d+|CIFAR-\d+(?:-LT)?|\bIF ?\d+|Table \d+|Eq\. \d+|Sec\. [\d.]+|K_max|n_B|"
                   r"h_r|Phase I+|[Ss]tage[- ]\d|Algorithm-\d|−log\(\(1 − π\)/π\)|1/C|π|\bs = 30\b")
#: an interval [a, b]
INTERVAL = re.compile(r"\[([+−-]?\d[\d,]*(?:\.\d+)?), ([+−-]?\d[\d,]*(?:\.\d+)?)\]")
#: a number: a sign only where it starts a token (not the hyphen of a range "0.89-1.02"), a fraction "3/4", an
#: exponent "1e-6", thousands "25,164"
NUMBER = re.compile(r"(?<![\w.])([+−-](?=\d))?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:(/\d+)|(e[+-]?\d+))?(?![\w])")

#: numbers a finding quotes that the committed records do not hold, by the start of the finding's heading
NOT_IN_RECORDS: dict[str, dict[str, str]] = {
    "Breadcrumb leads cRT": {"12": "a 12-epoch budget, whose records are not committed"},
    "On LDAM-DRW, SAFA": {"50": "the supplement's other imbalance factor (IF 200 and 50)"},
    "MiSLAS beats ce": {"200": "the papers' 200 epochs"},
    "The mixing rows": {"200": "the papers' 200 epochs or more"},
    "RIDE's lead": {"200": "RIDE's 200 epochs", "-0.2": "a diversity factor whose records are not committed",
                    "30.75": "the mean of those uncommitted records"},
    "cb-focal trails ce": {"0.01": "Cui et al.'s prior 1/C on CIFAR-100 (their code: -log(C - 1))",
                           "0.5": "a sigmoid's output at a zero bias",
                           "0": "cb-focal.prior=0, the option that keeps PyTorch's default bias"},
    "LDAM alone trails ce": {"200": "LDAM's paper's 200 epochs", "+1.3": "LDAM's paper: 39.60 - 38.32, Table 2"},
    "SAM trails ce": {"200": "Rangwani et al.'s 200 epochs"},
    "LDAM-DRW with SAM": {"200": "Rangwani et al.'s 200 epochs"},
    "BCL trails logit": {"200": "the paper's 200 epochs"},
    "PaCo is level": {"400": "the paper's 400 epochs"},
}

#: a headline's number rounded from a printed one: {finding: {quoted: the printed number it rounds}}; the quote must
#: be the printed number at the quote's decimals (to within the printed number's own rounding)
ROUNDED: dict[str, dict[str, str]] = {
    "Breadcrumb leads cRT": {"1.2": "-1.22"},
    "CAM fusion leads cRT": {"1.3": "+1.26", "+1.9": "+1.88", "-1.6": "-1.61", "-2.2": "-2.23", "-2.6": "-2.59"},
    "SAFA barely moves ce": {"+8.1": "+8.13"},
    "On LDAM-DRW, SAFA": {"0.8": "-0.80"},
    "LDAM-DRW with SAM": {"13": "-13.10"},
    "BCL trails logit": {"6.9": "-6.85", "21": "-21.43", "13": "+13.31"},
    "PaCo is level": {"5.6": "-5.60"},
}


def _norm(token: str) -> str:
    return token.replace("−", "-").replace(",", "")


def numbers(text: str) -> tuple[list[str], list[str]]:
    """The intervals ("[-1.82, -0.61]") and the other numbers of ``text``, normalised (ASCII minus, no thousands
    separator; an exponent as Python writes the float)."""
    text = NAMES.sub(" ", text)
    intervals = [f"[{_norm(a)}, {_norm(b)}]" for a, b in INTERVAL.findall(text)]
    text = INTERVAL.sub(" ", text)
    found = []
    for sign, whole, frac, over, exponent in NUMBER.findall(text):
        token = _norm(sign + whole + frac + over)
        found.append(repr(float(token + exponent)) if exponent else token)
    return intervals, found


#: a heading of the section: "## " a kind of method, "### " a finding
HEADING = re.compile(r"^(#{2,3}) (.+)$", re.M)


def findings(page: str) -> dict[str, str]:
    """The parts of the page's "Reading the board" section, which runs to the end of the page: {heading: the
    heading and its text down to the next heading}, every heading of the section (the section's own, the kinds of
    method and the findings) with its text, so that no number of the section goes unread."""
    section = SECTION + page.split(SECTION, 1)[1]
    starts = [m.start() for m in HEADING.finditer(section)]
    out = {}
    for start, end in zip(starts, starts[1:] + [len(section)]):
        part = section[start:end]
        heading = " ".join(HEADING.match(part).group(2).split())
        assert heading not in out, f"two headings {heading!r}: the second's numbers would go unread"
        out[heading] = part
    return out


def exemptions(table: dict[str, dict[str, str]], heading: str) -> dict[str, str]:
    keys = [k for k in table if heading.startswith(k)]
    assert len(keys) <= 1, f"{heading!r} matches several exemption keys {keys}"
    return table[keys[0]] if keys else {}


def unprinted(page: str, output: str) -> list[str]:
    """What a finding quotes that ``output`` does not print (empty when every quoted number is printed)."""
    printed_intervals, printed = numbers(output)
    printed_intervals, printed = set(printed_intervals), set(printed)
    unsigned = {p.lstrip("+-") for p in printed}
    missing = []
    for heading, text in findings(page).items():
        skip, rounded = exemptions(NOT_IN_RECORDS, heading), exemptions(ROUNDED, heading)
        intervals, quoted = numbers(text)
        for interval in intervals:
            if interval not in printed_intervals:
                missing.append(f"{heading}: interval {interval} is not printed")
        for q in quoted:
            if q in skip:
                continue
            if q in rounded:
                full = rounded[q]
                digits, printed_digits = len(q.partition(".")[2]), len(full.partition(".")[2])
                off = abs(abs(float(full)) - abs(float(q)))
                if full not in printed:
                    missing.append(f"{heading}: {q} rounds {full}, which is not printed")
                elif off > 0.5 * 10 ** -digits + 0.5 * 10 ** -printed_digits or (q[0] in "+-" and q[0] != full[0]):
                    missing.append(f"{heading}: {q} does not round the printed {full}")
                continue
            if q not in (printed if q[0] in "+-" else unsigned):
                missing.append(f"{heading}: {q} is not printed")
        for table, name in ((skip, "NOT_IN_RECORDS"), (rounded, "ROUNDED")):
            stale = set(table) - set(quoted)
            if stale:
                missing.append(f"{heading}: {name} lists {sorted(stale)}, which the finding no longer quotes")
    return missing


def _load_script():
    spec = importlib.util.spec_from_file_location("board_findings", ROOT / "ci" / "board_findings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def printed() -> str:
    """What ``python ci/board_findings.py`` prints from the committed records (run in the repository root)."""
    module = _load_script()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.chdir(ROOT):
        assert module.main([]) == 0
    return out.getvalue()


def test_every_number_the_findings_quote_is_printed_by_board_findings(printed):
    missing = unprinted(PAGE.read_text(), printed)
    assert not missing, "docs/board.md quotes what ci/board_findings.py does not print:\n" + "\n".join(missing)


def test_the_findings_are_read_whole():
    """The split reads the whole section, heading by heading: each finding is a "### " heading under a "## " kind
    of method (no bold lead left, whose finding would have no heading of its own), the parts put together are the
    section, and each exemption names a finding."""
    page = PAGE.read_text()
    found = findings(page)
    section = SECTION + page.split(SECTION, 1)[1]
    assert "".join(found.values()) == section
    headings = HEADING.findall(section)
    assert len(found) == len(headings) and headings[0][0] == "##" and headings[1][0] == "##"
    assert sum(level == "###" for level, _ in headings) >= 14  # the findings
    assert not re.search(r"(?:^|\n\n)\*\*", section), "a finding with a bold lead instead of a heading"
    assert sum(len(numbers(text)[1]) + len(numbers(text)[0]) for text in found.values()) > 250
    for key in {**NOT_IN_RECORDS, **ROUNDED}:
        assert any(f.startswith(key) for f in found), f"exemption key {key!r} names no finding"


def test_a_changed_quote_or_a_dropped_comparison_goes_red(printed):
    """The check itself: a quoted number changed by one in its last digit, and the output without one comparison the
    page quotes (sam vs ce), each make it report the number."""
    page = PAGE.read_text()
    assert not unprinted(page, printed)
    quote = "sam − ce: −3.32 [−3.79, −2.84] overall"
    changed = page.replace(quote, quote.replace("−3.32", "−3.33"))
    assert changed != page
    assert any("-3.33 is not printed" in m for m in unprinted(changed, printed))
    interval = page.replace("[−3.79, −2.84]", "[−3.79, −2.85]")
    assert any("[-3.79, -2.85]" in m for m in unprinted(interval, printed))
    block = re.search(r"\nSAM \(rho 0\.2\) on ce's loss\n.*?\n\n.*?\n\n", printed, re.S)  # heading, table
    assert block, "the sam vs ce comparison is not printed"
    dropped = printed.replace(block.group(0), "\n")
    missing = unprinted(page, dropped)
    assert any("SAM trails ce" in m and "-3.83" in m for m in missing), missing
    headline = page.replace("on cached features, by 1.2 points", "on cached features, by 1.3 points")
    assert headline != page
    assert any(m.startswith("Breadcrumb leads cRT") for m in unprinted(headline, printed))
