"""``ci/wiring_mutants.py`` breaks each method's wiring on purpose and checks that a test goes red. Running it
takes minutes, so the suite checks only that it has not rotted: every mutant still applies to the code, and its
selection names tests that exist."""

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _mutants():
    spec = importlib.util.spec_from_file_location("wiring_mutants", ROOT / "ci" / "wiring_mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.MUTANTS


def test_every_mutant_applies_once_to_its_module_and_selects_tests_that_exist():
    mutants = _mutants()
    assert len(mutants) >= 30
    for m in mutants:
        spec = importlib.util.find_spec(m.module)
        source = Path(spec.origin).read_text()
        assert source.count(m.old) == 1, f"{m.name}: {m.old!r} occurs {source.count(m.old)} times in {m.module}"
        assert m.old != m.new
        tests = re.findall(r"^def (test_\w+)", (ROOT / m.tests).read_text(), flags=re.M)
        assert any(m.select in t for t in tests), f"{m.name}: no test in {m.tests} matches -k {m.select}"
