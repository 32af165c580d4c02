"""The plugin documentation cannot go stale: the reference is what the code generates, and the guide's
code runs."""

import re
from pathlib import Path

from ltbench import docs
from ltbench.method import Method
from ltbench.testing import catalog_with, run_methods

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_generated_reference_matches_the_code():
    assert docs.check(DOCS) == []


def test_the_reference_names_every_hook_with_its_kind():
    text = (DOCS / "hooks.md").read_text()
    from ltbench import hookspecs

    for name in (n for n in dir(hookspecs) if n.startswith("ltbench_")):
        kind = "first result" if getattr(hookspecs, name).ltbench_spec.get("firstresult") else "broadcast"
        assert f"### `{name}`\n\n*{kind}*" in text


def test_the_guides_code_registers_and_trains(tmp_path):
    guide = (DOCS / "writing-a-method.md").read_text()
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", guide, flags=re.S):
        exec(compile(block, "writing-a-method.md", "exec"), namespace)
    cls = namespace["ConfidencePenalty"]
    assert issubclass(cls, Method) and callable(namespace["ltbench_register_methods"])
    (rec,) = run_methods(catalog_with(cls), ["confidence-penalty"], tmp_path, epochs=2)
    assert rec["status"] == "completed" and rec["extra"]["confidence-penalty"] == {"penalised_epochs": 2}
    history = [line for line in (next(tmp_path.rglob("metrics.jsonl"))).read_text().splitlines()]
    assert all("loss_confidence_penalty" in line for line in history)
