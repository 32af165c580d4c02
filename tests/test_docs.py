"""The plugin documentation cannot go stale: the reference is what the code generates, and the guide's
code runs."""

import os
import re
from pathlib import Path

import pytest

from ltbench.plugins import docs
from ltbench.plugins.method import Method
from ltbench.plugins.testing import catalog_with, run_methods

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_generated_reference_matches_the_code():
    assert docs.check(DOCS) == []


def test_every_public_name_is_in_the_api_reference_and_an_undocumented_one_fails_the_check(monkeypatch, tmp_path):
    import ltbench.api as api
    from ltbench.plugins import docs

    page = docs.api_reference()
    assert all(f"### `{name}`" in page for name in api.__all__ if name != "API_VERSION")
    assert "DeprecationWarning" in page and f'API_VERSION` is `"{api.API_VERSION}"`' in page
    docs.write(tmp_path)
    assert docs.check(tmp_path) == []
    monkeypatch.setattr(api.list_methods, "__doc__", None)
    assert docs.check(tmp_path)[0].startswith("public name ltbench.api.list_methods has no docstring")


def test_the_docs_state_the_hook_order_and_what_batch_indices_index():
    from ltbench.plugins import docs

    hooks, page = docs.hook_reference(), docs.api_reference()
    order = ["ltbench_build_classifier", "ltbench_configure_model", "ltbench_build_sampler", "ltbench_build_loss",
             "ltbench_epoch_start", "ltbench_augment_batch", "ltbench_extra_losses", "ltbench_optimizer_step",
             "ltbench_epoch_end",
             "ltbench_stage_end", "ltbench_second_stage", "ltbench_eval_logits", "ltbench_adjust_logits",
             "ltbench_record"]
    section = hooks[hooks.index("**Order of calls in a run**"):]
    positions = [section.index(name) for name in order]
    assert positions == sorted(positions)
    assert "``indices`` (int64, on the CPU) are the rows' positions in the stage's training set" in page
    assert "- `train_images: ImageStore | None`: the training images as a store" in page
    assert "Fields: ``backbone``" in page  # LTModel's


def public_name(dotted: str) -> bool:
    """``dotted`` (``ltbench.api.Run``, ``ltbench.hookimpl``, ``ltbench.api.Run.stage``) is reached from the public
    surface: a name of ``ltbench.api`` or of ``ltbench.__all__``, and what follows is an attribute of it."""
    import ltbench
    import ltbench.api as api

    parts = dotted.split(".")[1:]
    if parts[0] == "api":
        obj, parts = api, parts[1:]
        if parts and parts[0] not in api.__all__:
            return False
    elif parts[0] in ltbench.__all__:
        obj = ltbench
    else:
        return False
    for part in parts:
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def test_the_reference_names_public_names_only():
    """A reader of the hook and API references imports what they name: no internal module, which may move."""
    names = {name for page in ("hooks.md", "api.md")
             for name in re.findall(r"\bltbench(?:\.[A-Za-z_]\w*)+", (DOCS / page).read_text())}
    assert {"ltbench.api.gather_rows", "ltbench.api.DatasetSpec", "ltbench.api.LTData"} <= names
    assert sorted(name for name in names if not public_name(name)) == []
    assert not any(public_name(n) for n in ("ltbench.training.distributed.gather_rows", "ltbench.data.split.LTData",
                                            "ltbench.plugins.testing.check_method", "ltbench.api.nothing"))


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


def test_the_docs_site_builds_in_strict_mode(tmp_path):
    """Every page in mkdocs.yml's nav exists, every link between pages and every anchor resolves (strict mode
    turns each warning into a failure); the site is what the leaderboard workflow publishes."""
    pytest.importorskip("material", reason="mkdocs-material is in the test and docs extras")
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=repo, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    pages = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert {"index.html", "quickstart/index.html", "hooks/index.html", "paper-budget/index.html"} <= pages


def test_the_board_and_the_docs_link_each_other():
    """The markdown boards link the docs' board page (from leaderboards/, where they are committed), and the docs'
    home and board page link the web board, published at the root of the pages with the docs under docs/ (so
    ``../`` from docs/index.html and ``../../`` from docs/board/index.html). The site's index links the docs' board
    page too (tests/test_site_paper_sections.py, where the site is built)."""
    import posixpath

    from ltbench.results.leaderboard import render

    rec = {"dataset": "d-if1", "budget": "cpu", "method": "m", "methods": ["m"], "seed": 0, "variant": "m",
           "config_id": "c0", "metrics": {"overall": 10.0, "many": 10.0, "medium": 10.0, "few": 1.0},
           "wall_time_s": 10.0, "stage_wall_time_s": {"stage1": 10.0}, "config": {"backbone": "b", "epochs": 1},
           "group_sizes": {"many": 1, "medium": 0, "few": 1}, "group_thresholds": {"few_below": 20, "many_above": 100},
           "status": "completed"}
    page = render([rec])["d-if1.md"]
    (target,) = re.findall(r"\[Reading the board\]\(([^)]+)\)", page)
    assert (DOCS.parent / "leaderboards" / target).resolve() == (DOCS / "board.md").resolve()
    for name, published in (("index.md", "docs/"), ("board.md", "docs/board/")):
        links = re.findall(r"\[the web leaderboard\]\(([^)]+)\)", (DOCS / name).read_text())
        assert links and all(posixpath.normpath(posixpath.join(published, link)) == "." for link in links), links
    internals = (DOCS / "internals.md").read_text()
    assert "## Records are untrusted input" in internals and "(internals.md)" in (DOCS / "board.md").read_text()
