"""Every number docs/board.md's findings ("Reading the board") quote is printed by ``ci/board_findings.py`` from the
committed records, as quoted (issue 37, item 8).

The page is split into its findings (a bold lead and what follows it, down to the next bold lead); each number a
finding quotes must appear among the numbers the script prints, with the same digits: a sign the page writes must be
the printed sign (an unsigned quote, "5.29 below", matches either), an interval ``[a, b]`` must be printed as one,
``d,ddd`` is ``dddd``. A number that the records do not hold (a paper's length or value, a setting the page names
without a record behind it, a row no longer committed) is listed in ``NOT_IN_RECORDS`` under its finding with why; a
headline that rounds a printed number ("trails cRT by 1.2 points") is listed in ``ROUNDED`` with the printed number
it rounds, which must itself be printed. So the test goes red when a quoted number changes, when the script stops
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

#: numbers a finding quotes that the committed records do not hold, by the start of the finding's bold lead
NOT_IN_RECORDS: dict[str, dict[str, str]] = {
    "Breadcrumb trails cRT": {"12": "the earlier 12-epoch budget, whose records were removed"},
    "On LDAM-DRW, SAFA": {"50": "the supplement's other imbalance factor (IF 200 and 50)"},
    "MiSLAS beats ce": {"200": "the papers' 200 epochs"},
    "The mixing rows": {"200": "the papers' 200 epochs or more"},
    "RIDE's lead": {"200": "RIDE's 200 epochs", "-0.2": "the earlier diversity factor, rows no longer committed",
                    "30.75": "the earlier rows' mean, records no longer committed"},
    "cb-focal trails ce": {"0.01": "Cui et al.'s prior 1/C on CIFAR-100 (their code: -log(C - 1))",
                           "0.5": "a sigmoid's output at a zero bias",
                           "0": "cb-focal.prior=0, the option that keeps PyTorch's default bias"},
    "LDAM alone trails ce": {"200": "LDAM's paper's 200 epochs", "+1.3": "LDAM's paper: 39.60 - 38.32, Table 2"},
    "SAM trails ce": {"200": "Rangwani et al.'s 200 epochs"},
    "LDAM-DRW with SAM": {"200": "Rangwani et al.'s 200 epochs"},
    "BCL trails logit": {"200": "the paper's 200 epochs"},
    "PaCo is level": {"400": "the paper's 400 epochs"},
    "closing": {"12": "the earlier 12-epoch board, whose records were removed"},
}

#: a headline's number rounded from a printed one: {finding: {quoted: the printed number it rounds}}; the quote must
#: be the printed number at the quote's decimals (to within the printed number's own rounding)
ROUNDED: dict[str, dict[str, str]] = {
    "Breadcrumb trails cRT": {"1.2": "-1.22"},
    "CAM fusion trails cRT": {"1.2": "-1.21", "+1.9": "+1.88", "-1.6": "-1.61", "-2.2": "-2.23", "-2.6": "-2.59"},
    "SAFA barely moves ce": {"+8.1": "+8.13"},
    "On LDAM-DRW, SAFA": {"0.8": "-0.80"},
    "LDAM-DRW with SAM": {"13": "-13.10"},
    "BCL trails logit": {"6.9": "-6.85", "21": "-21.43", "13": "+13.31"},
    "PaCo is level": {"5.4": "-5.41"},
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


#: the section's closing paragraph, which follows the last finding without a lead of its own
CLOSING = "Every row of the board"


def findings(page: str) -> dict[str, str]:
    """The findings of the page's "Reading the board" section: {bold lead: its text down to the next bold lead}; the
    text before the first lead is "intro", the closing paragraph "closing"."""
    section = page.split(SECTION, 1)[1].split("\n## ", 1)[0]
    parts = re.split(rf"\n\n(?=\*\*|{CLOSING})", section)
    out = {"intro": parts[0]}
    for part in parts[1:]:
        if part.startswith(CLOSING):
            out["closing"] = part
            continue
        lead = re.match(r"\*\*(.+?)\*\*", part, re.S).group(1)
        out[" ".join(lead.split())] = part
    return out


def exemptions(table: dict[str, dict[str, str]], lead: str) -> dict[str, str]:
    keys = [k for k in table if lead.startswith(k)]
    assert len(keys) <= 1, f"{lead!r} matches several exemption keys {keys}"
    return table[keys[0]] if keys else {}


def unprinted(page: str, output: str) -> list[str]:
    """What a finding quotes that ``output`` does not print (empty when every quoted number is printed)."""
    printed_intervals, printed = numbers(output)
    printed_intervals, printed = set(printed_intervals), set(printed)
    unsigned = {p.lstrip("+-") for p in printed}
    missing = []
    for lead, text in findings(page).items():
        skip, rounded = exemptions(NOT_IN_RECORDS, lead), exemptions(ROUNDED, lead)
        intervals, quoted = numbers(text)
        for interval in intervals:
            if interval not in printed_intervals:
                missing.append(f"{lead}: interval {interval} is not printed")
        for q in quoted:
            if q in skip:
                continue
            if q in rounded:
                full = rounded[q]
                digits, printed_digits = len(q.partition(".")[2]), len(full.partition(".")[2])
                off = abs(abs(float(full)) - abs(float(q)))
                if full not in printed:
                    missing.append(f"{lead}: {q} rounds {full}, which is not printed")
                elif off > 0.5 * 10 ** -digits + 0.5 * 10 ** -printed_digits or (q[0] in "+-" and q[0] != full[0]):
                    missing.append(f"{lead}: {q} does not round the printed {full}")
                continue
            if q not in (printed if q[0] in "+-" else unsigned):
                missing.append(f"{lead}: {q} is not printed")
        for table, name in ((skip, "NOT_IN_RECORDS"), (rounded, "ROUNDED")):
            stale = set(table) - set(quoted)
            if stale:
                missing.append(f"{lead}: {name} lists {sorted(stale)}, which the finding no longer quotes")
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
    """The split finds every finding the page has (a lead the split misses would go unchecked)."""
    page = PAGE.read_text()
    found = findings(page)
    section = page.split(SECTION, 1)[1].split("\n## ", 1)[0]
    assert "closing" in found
    assert len(found) - 2 == len(re.findall(r"(?:^|\n\n)\*\*", section))
    assert sum(len(numbers(text)[1]) + len(numbers(text)[0]) for text in found.values()) > 250
    for lead in {**NOT_IN_RECORDS, **ROUNDED}:
        assert any(f.startswith(lead) for f in found), f"exemption key {lead!r} names no finding"


def test_a_changed_quote_or_a_dropped_comparison_goes_red(printed):
    """The check itself: a quoted number changed by one in its last digit, and the output without one comparison the
    page quotes (sam vs ce), each make it report the number."""
    page = PAGE.read_text()
    assert not unprinted(page, printed)
    quote = "(sam − ce: −3.32 [−3.79, −2.84] overall"
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
    headline = page.replace("Breadcrumb trails cRT by 1.2 points", "Breadcrumb trails cRT by 1.3 points")
    assert headline != page
    assert any(m.startswith("Breadcrumb trails cRT") for m in unprinted(headline, printed))
