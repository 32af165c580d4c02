"""The flawed cases of issue 40's attack review, each as a test named after its case (item 4).

Each test failed on the code before its fix. The cases the review found that other files already pin are named
there: a helper module edit (test_code_identity), a 300-character method name (test_cli, test_trust), FIFOs,
``status`` on odd fields and a same record in two folders (test_record_reader), markup from records (test_trust),
``--output ""`` (test_cli, test_python_api) and ``ltbench.run(123)`` (test_python_api).

Runs are the embedded smoke budget on synthetic-lt; a read-only or full disk is simulated (as root, ``chmod`` stops
no write) by making the writes under one folder fail as the kernel would (EROFS, ENOSPC).
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import ltbench
import ltbench.plugins.catalog
from ltbench import Method, MethodMetadata, hookimpl
from ltbench.cli import main
from ltbench.plugins.reporter import Reporter
from ltbench.plugins.testing import catalog_with
from test_record_reader import _copy  # tests/ is on the path: the same copy of a trained runs folder
from test_trust import IMPOSTOR as TRUST_IMPOSTOR

SMOKE = ["--datasets", "synthetic-lt", "--budget", "smoke", "--quiet"]
META = MethodMetadata(title="test method")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A runs directory with one completed ce run (record, predictions, model, grid manifest)."""
    runs = tmp_path_factory.mktemp("flawed") / "runs"
    (record,) = ltbench.run(methods=["ce"], output=runs, datasets="synthetic-lt", budget="smoke", quiet=True)
    assert record["status"] == "completed"
    return runs


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(root).rglob("result.json"))]


def _plant(ce: Path, name: str, **fields) -> Path:
    """A copy of the ce record as another run (``name`` its config id) with ``fields`` changed."""
    rec = json.loads((ce / "result.json").read_text())
    out = ce.parent.parent / name / f"seed{fields.get('seed', rec['seed'])}"
    out.mkdir(parents=True)
    (out / "result.json").write_text(json.dumps({**rec, "config_id": name, **fields}))
    return out


def _cells(argv: list[str], output: Path) -> list:
    """The cells that ``ltbench run ARGV --output OUTPUT`` plans."""
    from ltbench.cli import build_parser
    from ltbench.grid.orchestrate import plan_cells, run_options

    return plan_cells(run_options(build_parser().parse_args([*argv, "--output", str(output)])))


# -- a file system that refuses writes: read-only (EROFS) or full (ENOSPC) ------------------------------------------


def _under(path, root: str) -> bool:
    try:
        full = os.path.abspath(os.fsdecode(path))
    except TypeError:  # a file descriptor
        return False
    full = full if os.path.islink(full) else os.path.realpath(full)
    return full == root or full.startswith(root + os.sep)


def _read_only(monkeypatch, root: Path) -> None:
    """Every write under ``root`` fails with EROFS, as on a read-only mount: opening for writing, making,
    renaming and deleting files and folders."""
    root_ = os.path.realpath(root)

    def deny(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_open, real_os_open = builtins.open, os.open

    def opener(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") and _under(file, root_):
            deny(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC) and _under(path, root_):
            deny(path)
        return real_os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(io, "open", opener)
    monkeypatch.setattr(os, "open", os_open)
    for name in ("mkdir", "rmdir", "unlink", "remove", "mkfifo"):
        def one(path, *args, _real=getattr(os, name), **kwargs):
            if _under(path, root_):
                deny(path)
            return _real(path, *args, **kwargs)
        monkeypatch.setattr(os, name, one)
    for name in ("rename", "replace", "symlink", "link"):
        def two(src, dst, *args, _real=getattr(os, name), **kwargs):
            if _under(src, root_) or _under(dst, root_):
                deny(dst)
            return _real(src, dst, *args, **kwargs)
        monkeypatch.setattr(os, name, two)


class _FullDisk:
    """A file being written when the disk fills up: half of the first write lands, then ENOSPC."""

    def __init__(self, fh, name: str):
        self.fh, self.path = fh, name

    def write(self, data):
        self.fh.write(bytes(data)[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _disk_full(monkeypatch, hits, times: int = 1) -> list[str]:
    """The disk fills up while a file whose path ``hits`` is written (the first ``times`` such files): its write
    fails with ENOSPC after half of it landed. Returns the paths it filled up on."""
    filled: list[str] = []
    real_open, real_fdopen = builtins.open, os.fdopen

    def full(fh, path: str):
        if len(filled) < times and hits(path):
            filled.append(path)
            return _FullDisk(fh, path)
        return fh

    def opener(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        written = isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+")
        return full(fh, os.fspath(file)) if written else fh

    def fdopen(fd, mode="r", *args, **kwargs):
        fh = real_fdopen(fd, mode, *args, **kwargs)
        return full(fh, os.readlink(f"/proc/self/fd/{fd}")) if set(mode) & set("wax+") else fh

    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(io, "open", opener)
    monkeypatch.setattr(os, "fdopen", fdopen)
    return filled


# -- checkpoints: only a run's own is resumed from or reused ----------------------------------------------------


def test_a_foreign_resume_checkpoint_with_its_identity_key_removed_is_refused_not_resumed(tmp_path, monkeypatch):
    """Flawed: a checkpoint of another configuration was refused by its ``identity``, but one whose identity key
    was deleted was resumed from as this run's. A checkpoint that names no run is refused too."""
    from ltbench.training import checkpoints

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "crt", *SMOKE, "--epochs", "2"]) == 0
    (theirs,) = (tmp_path / "runs").rglob("crt/*/seed0/checkpoint-stage2.pt")
    other = ["run", "--methods", "crt", *SMOKE, "--epochs", "2", "--set", "stage2_lr=0.07"]
    foreign = checkpoints.load(theirs)
    del foreign["identity"]
    (cell,) = _cells(other, tmp_path / "runs")
    mine = cell.out_dir(tmp_path / "runs")
    checkpoints.save(foreign, mine / "checkpoint-stage2.pt")
    assert main(other) == 1
    [rec] = [r for r in _records(tmp_path / "runs") if r["config"]["stage2_lr"] == 0.07]
    assert rec["status"] == "failed" and "checkpoint-stage2.pt names no run it belongs to" in rec["error"]
    assert "--rerun" in rec["error"]
    assert main([*other, "--rerun"]) == 0


def test_a_foreign_stage1_pt_is_refused_not_reused_silently(tmp_path, monkeypatch, capsys):
    """Flawed: another shared stage 1's ``stage1.pt`` (and ``stage1.json``) copied into a stage-1 folder was
    loaded as that folder's, silently: crt scored 39.88 instead of 55.55. A finished stage 1 now names what it
    belongs to, and one of another key is refused; one from before identities (the shipped paper stage 1s) is
    still reused, with a line saying so."""
    from ltbench.training import checkpoints

    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    assert main(["run", "--methods", "ce", *SMOKE]) == 0
    (theirs,) = runs.rglob("_stage1/*/stage1.pt")
    other = ["run", "--methods", "crt", *SMOKE, "--set", "lr=0.02"]  # another stage 1: another key
    from ltbench.grid.plan import stage1_dir

    (cell,) = _cells(other, runs)
    mine = stage1_dir(cell, runs)
    assert mine != theirs.parent
    mine.mkdir(parents=True)
    for name in ("stage1.pt", "stage1.json"):
        shutil.copyfile(theirs.parent / name, mine / name)
    assert main(other) == 1
    (rec,) = [r for r in _records(runs) if r["method"] == "crt"]
    assert rec["status"] == "failed" and f"stage1.pt belongs to another configuration (stage 1 " \
        f"{theirs.parent.name}; this run is stage 1 {mine.name})" in rec["error"] and "--rerun" in rec["error"]

    state = checkpoints.load(mine / "stage1.pt")  # a stage 1 written before identities: reused, and said
    del state["identity"]
    checkpoints.save(state, mine / "stage1.pt")
    capsys.readouterr()
    assert main(other) == 0
    said = capsys.readouterr().err
    assert "stage1.pt names no run it belongs to (written before ltbench recorded one)" in said


# -- plugins: one owner per name, and ltbench is the ltbench that runs --------------------------------------------


def _fake_distribution(root: Path, dist: str, entry_points: dict[str, str], files: list[str] | None = None,
                       direct_url: dict | None = None) -> None:
    info = root / f"{dist.replace('-', '_')}-9.9.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 9.9\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[ltbench]\n{lines}")
    if files is not None:
        (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))


IMPOSTOR = TRUST_IMPOSTOR.format(name="ce")  # a third-party plugin registering the built-in name ce


def test_a_builtin_that_fails_to_load_leaves_its_name_to_no_third_party_plugin(tmp_path, monkeypatch):
    """Flawed: when a built-in plugin failed to import, its method names were free, and a third-party plugin that
    registered ``ce`` became ``ce``. The built-ins' names are reserved whether or not they load."""
    from ltbench.plugins.catalog import BUILTIN_DISTRIBUTION, BUILTIN_NAMES, CORE_MODULES, build_catalog

    whole = build_catalog()
    registered: dict[str, set] = {}
    for (kind, name), owner in whole.owners.items():
        if owner.distribution == BUILTIN_DISTRIBUTION and owner.name not in CORE_MODULES:
            registered.setdefault(kind, set()).add(name)
    assert registered == {kind: set(names) for kind, names in BUILTIN_NAMES.items()}  # the list is the built-ins'

    (tmp_path / "aaa_impostor.py").write_text(IMPOSTOR)
    _fake_distribution(tmp_path, "aaa-impostor", {"aaa_impostor": "aaa_impostor"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "ltbench_builtin.ce", None)  # the built-in ce fails to import
    catalog = build_catalog()
    broken = {b.name: b.error for b in catalog.broken}
    assert "import failed" in broken["ce"]
    assert "ce" not in catalog.methods
    assert "method name 'ce' belongs to ltbench itself, whose plugin for it did not load" in broken["aaa_impostor"]


@pytest.mark.parametrize("fake", ["dist-info-without-files", "direct-url-naming-the-root"])
def test_a_fake_ltbench_dist_info_or_a_forged_direct_url_is_not_taken_for_ltbench(fake, tmp_path, monkeypatch,
                                                                                    capsys):
    """Flawed: an ``ltbench`` dist-info earlier on the path than the installed one spoke for ltbench: its entry
    point ``ce`` loaded as the built-in (the real one was skipped as a duplicate), whether it listed no files or
    listed some and had a ``direct_url.json`` naming ``file:///`` (under which every module lies). Only the
    distribution that holds the running ltbench package (or an editable install of its project) is ltbench."""
    (tmp_path / "evil_ce.py").write_text(IMPOSTOR)
    if fake == "dist-info-without-files":
        _fake_distribution(tmp_path, "ltbench", {"ce": "evil_ce"})
    else:
        _fake_distribution(tmp_path, "ltbench", {"ce": "evil_ce"}, files=["ltbench-9.9.dist-info/METADATA"],
                           direct_url={"url": "file:///", "dir_info": {"editable": True}})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ltbench.plugins.catalog, "_CATALOG", None)
    monkeypatch.chdir(tmp_path)
    catalog = ltbench.plugins.catalog.get_catalog()
    assert catalog.method("ce").cls.metadata.title != "impostor"
    assert catalog.method("ce").plugin.module == "ltbench_builtin.ce"
    [fake_line] = [b.error for b in catalog.broken]
    assert "is not the ltbench that is running" in fake_line and str(tmp_path) in fake_line
    assert main(["ls", "methods", "ce"]) == 0
    assert "is not the ltbench that is running" in capsys.readouterr().err


# -- a plugin fault fails its own run only ----------------------------------------------------------------------


class Abandoned(BaseException):
    """Neither an Exception nor SystemExit: a plugin's own BaseException subclass (or GeneratorExit)."""


class RaisesBaseException(Method):
    name = "raises-base-exception"
    metadata = META

    @hookimpl
    def ltbench_epoch_start(self, run, stage, epoch):
        raise Abandoned("the plugin gave up")


class CtrlC(Method):
    name = "ctrl-c"
    metadata = META

    @hookimpl
    def ltbench_epoch_start(self, run, stage, epoch):
        raise KeyboardInterrupt


class BaseExceptionReporter(Reporter):
    name = "raises-base-exception"

    @hookimpl
    def ltbench_report_run_start(self, run):
        raise Abandoned("the tracker gave up")


def test_a_base_exception_from_a_hook_or_reporter_fails_only_its_cell_and_ctrl_c_still_stops_the_grid(
        tmp_path, monkeypatch, capsys):
    """Flawed: a BaseException other than SystemExit (a plugin's own subclass, GeneratorExit) raised in a hook or a
    reporter went through the run's failure guard and ended the whole grid with a traceback."""
    monkeypatch.setattr(ltbench.plugins.catalog, "_CATALOG",
                        catalog_with(RaisesBaseException, CtrlC, reporters=(BaseExceptionReporter,)))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--methods", "raises-base-exception,ce", *SMOKE]) == 1
    recs = {r["method"]: r for r in _records(tmp_path / "runs")}
    assert recs["ce"]["status"] == "completed"  # the run after it still ran
    assert recs["raises-base-exception"]["status"] == "failed"
    assert "method 'raises-base-exception', hook ltbench_epoch_start: Abandoned: the plugin gave up" in \
        recs["raises-base-exception"]["error"]

    capsys.readouterr()
    assert main(["run", "--methods", "ce", *SMOKE, "--seeds", "1", "--report", "raises-base-exception"]) == 0
    assert "reporter 'raises-base-exception' raised in ltbench_report_run_start (Abandoned: the tracker gave up); " \
           "it is disabled" in capsys.readouterr().err

    assert main(["run", "--methods", "ctrl-c,ce", *SMOKE, "--seeds", "2"]) == 130  # Ctrl-C stops the grid
    assert not [r for r in _records(tmp_path / "runs") if r["seed"] == 2]


def test_after_a_deterministic_rank_0_failure_a_rerun_trains_the_rest_of_the_grid_first(tmp_path, monkeypatch):
    """Flawed: under torchrun a run that fails ends the job (the other ranks cannot go on without it); re-running
    the same command tried that run first again, it failed again, and the rest of the grid never trained. The runs
    whose record says failed now go last."""
    from ltbench.grid import runner
    from ltbench.grid.plan import plan_grid
    from ltbench.training import distributed

    catalog = catalog_with()
    cells = plan_grid(["ce", "focal", "ldam"], ["synthetic-lt"], [0], "smoke", catalog=catalog)
    failed = cells[0].out_dir(tmp_path) / "result.json"
    failed.parent.mkdir(parents=True)
    failed.write_text(json.dumps({"status": "failed", "error": "rank 0 of 2: hook ltbench_configure_model: bug"}))
    tried = []

    def execute(cell, output, device, **kwargs):  # as under torchrun: the failure repeats, and ends the job
        tried.append(cell.method)
        if cell.method == "ce":
            raise runner.RankFailed(f"[{cell.label} seed 0] failed on rank 0; the job ends here")
        return {"status": "completed", "started_at": None}

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)  # rank 0 of a torchrun job
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "agree", lambda value: value)
    monkeypatch.setattr(runner, "execute", execute)
    logged = []
    with pytest.raises(runner.RankFailed):
        runner.run_grid(cells, tmp_path, None, log=logged.append, catalog=catalog)
    assert tried == ["focal", "ldam", "ce"]
    assert any("1 run(s) that failed before go last" in line and "ce seed 0" in line for line in logged)


# -- what the boards show --------------------------------------------------------------------------------------


def test_a_null_group_accuracy_is_never_dropped_from_a_mean_without_notice(trained, tmp_path, capsys):
    """Flawed: a seed whose split had no medium-shot class (its medium accuracy null) was left out of the row's
    medium mean, which then read as the mean over all its seeds. show, the markdown board and the site say
    over how many seeds such a mean is."""
    from ltbench.results.leaderboard import build

    runs, ce = _copy(trained, tmp_path)
    rec = json.loads((ce / "result.json").read_text())
    for seed, medium in ((0, 10.0), (1, None), (2, 30.0)):
        out = ce.parent / f"seed{seed}"
        out.mkdir(exist_ok=True)
        (out / "predictions.npz").unlink(missing_ok=True)
        (out / "result.json").write_text(json.dumps({**rec, "seed": seed, "files": None,
                                                     "metrics": {**rec["metrics"], "medium": medium}}))
    assert main(["show", str(runs)]) == 0
    shown = capsys.readouterr().out
    assert "20.00 ± 14.14 (2 of 3 seeds)" in shown
    build(runs, tmp_path / "board")
    board = (tmp_path / "board" / "synthetic-lt-if30.md").read_text()
    assert "20.00 ± 14.14 (2 of 3 seeds)" in board
    page = (tmp_path / "board" / "site" / "index.html").read_text()
    assert "(2 of 3 seeds)" in page


def test_markdown_links_and_images_from_record_fields_never_reach_the_markdown_board(trained, tmp_path):
    """Flawed: record text was escaped for HTML and table cells only, so a variant or device named
    ``![x](https://...)`` or ``[x](https://...)`` became an image (fetched by every reader of the board) or a link
    in the committed markdown. The bracket that would open a target is escaped: the text shows as written."""
    from ltbench.results.leaderboard import build

    runs, ce = _copy(trained, tmp_path)
    machine = "[fast machine](https://evil.example/ad)"  # and the one machine its epochs trained on
    _plant(ce, "mdlink0001", variant="ce [tag=![x](https://evil.example/p.png)]", device_model=machine,
           machines=[{"stage": 1, "first_epoch": 1, "last_epoch": 3, "device_model": machine}])
    build(runs, tmp_path / "board")
    board = (tmp_path / "board" / "synthetic-lt-if30.md").read_text()
    assert "evil.example/p.png" in board and "evil.example/ad" in board  # shown, as text
    assert "](https://evil" not in board
    assert "![x]\\(https://evil.example/p.png)" in board and "[fast machine]\\(https://evil.example/ad)" in board


def test_a_long_variant_label_builds_the_site(trained, tmp_path):
    """Flawed: a variant of a long string option (a 300-character ``--set tag=...``) crashed the site build with
    ENAMETOOLONG making its page; a long name's page is cut and told apart by a hash of the name."""
    from ltbench.results.leaderboard import build

    runs, ce = _copy(trained, tmp_path)
    label = "ce [tag=" + "x" * 300 + "]"
    _plant(ce, "long000001", variant=label)
    build(runs, tmp_path / "board")
    (page,) = [p for p in (tmp_path / "board" / "site" / "methods").rglob("*.html") if "xxxx" in p.name]
    assert len(page.name.encode()) < 255 and label in page.read_text()


def test_two_variants_whose_page_names_collide_each_keep_their_own_page(trained, tmp_path):
    """Flawed: ``ce [tag=a b]`` and ``ce [tag=a-b]`` made one page name (``ce-tag=a-b.html``): the second row's
    page overwrote the first's and both rows linked to it. Rows whose names collide get a hash of their name."""
    from ltbench.results.leaderboard import build

    runs, ce = _copy(trained, tmp_path)
    names = ("ce [tag=a b]", "ce [tag=a-b]")
    for i, name in enumerate(names):
        _plant(ce, f"collide{i:03d}", variant=name)
    build(runs, tmp_path / "board")
    pages = list((tmp_path / "board" / "site" / "methods").rglob("ce-tag=a-b*.html"))
    assert len(pages) == 2, pages
    for name in names:  # each its own page, linked from the index
        [page] = [p for p in pages if f"<h1>{name}</h1>" in p.read_text()]
        assert f'/{page.name}">{name}</a>' in (tmp_path / "board" / "site" / "index.html").read_text()


# -- the site build: whole or not at all, one at a time -------------------------------------------------------


def test_a_kill_during_the_site_build_leaves_no_staging_folder_behind(trained, tmp_path):
    """Flawed: a build killed (kill -9) while it built the site left its staging folder (``.site-xxxx``, a random
    name) in ``--out`` for good. The next build clears what a killed one left."""
    from ltbench.results.leaderboard import build

    out = tmp_path / "board"
    stale = out / ".site-k1ll3d"  # what mkdtemp had made when the build was killed
    (stale / "plots").mkdir(parents=True)
    (stale / "plots" / "half.png").write_bytes(b"\x89PNG")
    build(trained, out)
    assert (out / "site" / "index.html").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".site")]


class Killed(BaseException):
    """A SIGKILL at this point: nothing after it runs (no except, no finally would in a real kill)."""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the one-step exchange is Linux's renameat2")
def test_a_kill_between_the_two_renames_of_the_site_build_leaves_a_whole_site(trained, tmp_path, monkeypatch):
    """Flawed: the new site replaced the old by two renames (site -> .site-old, staging -> site); a kill between
    them left no ``site/`` at all. The two are exchanged in one step: at every moment there is a whole site."""
    from ltbench.results.leaderboard import build

    out = tmp_path / "board"
    build(trained, out)
    real_rename = os.rename
    renames = []

    def rename(src, dst, *args, **kwargs):
        renames.append((os.fspath(src), os.fspath(dst)))
        if len(renames) == 2:  # the process dies here
            raise Killed(f"killed renaming {src} to {dst}")
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    try:
        build(trained, out)
    except Killed:
        pass
    assert (out / "site" / "index.html").is_file()


def test_two_concurrent_builds_of_one_board_run_one_after_the_other(trained, tmp_path, monkeypatch, capsys):
    """Flawed: two builds of one ``--out`` at once renamed each other's site folders (one crashed, or left no
    site). A build holds a lock in ``--out``: the second waits, then builds."""
    from ltbench.results import leaderboard, site

    out = tmp_path / "board"
    real_build = site.build
    second: dict[str, object] = {}

    def build_while_another_starts(records, where):
        if not second:  # the first build: a second one starts while this one builds the site
            thread = threading.Thread(target=lambda: second.setdefault("written", leaderboard.build(trained, out)))
            second["thread"] = thread
            thread.start()
            thread.join(timeout=3)
            second["waited"] = thread.is_alive()
        return real_build(records, where)

    monkeypatch.setattr(site, "build", build_while_another_starts)
    leaderboard.build(trained, out)
    second["thread"].join(timeout=120)
    assert second["waited"], "the second build did not wait for the first"
    assert second.get("written") and (out / "site" / "index.html").is_file()
    assert "another leaderboard build is writing" in capsys.readouterr().err
    assert not [p.name for p in out.iterdir() if p.name.startswith(".site")]


# -- read-only and full disks --------------------------------------------------------------------------------------


def test_a_read_only_output_is_one_named_line_in_run_status_build_plot_eval_and_docs(trained, tmp_path,
                                                                                      monkeypatch, capsys):
    """Flawed: an output folder on a read-only disk gave a raw OSError traceback in run, build, plot, eval and
    docs, and in status over a read-only runs folder. Each names the file and what to do on one line; status,
    which writes nothing, works."""
    runs, ce = _copy(trained, tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    commands = {
        "run": ["run", "--methods", "ce", *SMOKE, "--output", str(ro / "runs")],
        "build": ["leaderboard", "build", str(runs), "--out", str(ro / "board")],
        "plot": ["plot", str(runs), "--out", str(ro / "plots")],
        "eval": ["eval", str(ce), "--output", str(ro / "evals")],
        "docs": ["docs", "--write", "--out", str(ro / "docs")],
    }
    for name, argv in commands.items():
        assert main(argv) == 2, name
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith(f"error: {ro}") and "Read-only file system; give an output folder on a writable " \
                                                  "disk" in last, (name, last)
    assert not list(ro.iterdir())

    _read_only(monkeypatch, runs)  # status over runs it may not write
    assert main(["status", str(runs)]) == 0
    assert "completed" in capsys.readouterr().out


def test_status_writes_no_lock_file_into_the_runs_folder(trained, tmp_path, capsys):
    """Flawed: ``status`` tried each run's lock by taking it, which made a ``seed<k>.lock`` beside every run it
    looked at. It only tries a lock file that is there, read-only; a held one still shows the run as running."""
    from filelock import FileLock

    runs, ce = _copy(trained, tmp_path)
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    assert main(["status", str(runs)]) == 0
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before
    with FileLock(f"{ce}.lock"):  # a worker on it
        assert main(["status", str(runs), "--all"]) == 1  # (not every run is done)
    assert "1 running" in capsys.readouterr().out


def test_a_full_disk_fails_only_the_run_it_hits_and_the_grid_goes_on(tmp_path, monkeypatch, capsys):
    """Flawed: the disk filling up while a run wrote its config (before its failure guard) ended the grid with an
    OSError traceback. The run fails, by name, and the grid goes on to the next."""
    monkeypatch.chdir(tmp_path)
    filled = _disk_full(monkeypatch, lambda path: f"{os.sep}ce{os.sep}" in path and ".config.json." in path)
    assert main(["run", "--methods", "ce,focal", *SMOKE]) == 1
    assert filled
    recs = {r["method"]: r for r in _records(tmp_path / "runs")}
    assert recs["focal"]["status"] == "completed"
    assert "writing the run's files failed: OSError: [Errno 28] No space left on device" in recs["ce"]["error"]
    assert "ce seed 0 on synthetic-lt-if30: failed" in capsys.readouterr().out


def test_a_full_disk_leaves_no_truncated_predictions_npz_and_later_builds_work(trained, tmp_path, monkeypatch,
                                                                               capsys):
    """Flawed: the disk filling up while ``predictions.npz`` was written (by a run, or copied by a board build)
    left a truncated file behind (a half-written temporary beside the run; a truncated copy in the board's
    records, which every later build then read), and the build ended in a traceback. Each is written whole or
    not at all, and the build names the file and the remedy."""
    monkeypatch.chdir(tmp_path)
    filled = _disk_full(monkeypatch, lambda path: "predictions.npz" in path)
    assert main(["run", "--methods", "ce,focal", *SMOKE]) == 1
    assert filled
    recs = {r["method"]: r for r in _records(tmp_path / "runs")}
    assert recs["ce"]["status"] == "failed" and "No space left on device" in recs["ce"]["error"]
    assert recs["focal"]["status"] == "completed"
    (ce,) = (tmp_path / "runs").rglob("ce/*/seed0")
    assert not [p.name for p in ce.iterdir() if "predictions" in p.name]

    runs, _ = _copy(trained, tmp_path / "copy")
    filled = _disk_full(monkeypatch, lambda path: "predictions.npz" in path and "board" in path)
    capsys.readouterr()
    assert main(["leaderboard", "build", str(runs), "--out", "board"]) == 2
    assert filled
    assert "No space left on device; free some space" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not list((tmp_path / "board").rglob("*predictions*"))
    monkeypatch.undo()  # space again
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "build", str(runs), "--out", "board"]) == 0
    assert "not the predictions of its record" not in capsys.readouterr().err
    (copied,) = (tmp_path / "board" / "records").rglob("predictions.npz")
    assert copied.read_bytes() == next(runs.rglob("ce/*/seed0/predictions.npz")).read_bytes()


# -- from Python, no flags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ({"jobs": 0}, "ltbench.run(): jobs must be a positive integer, got 0"),
    ({"threads": 0}, "ltbench.run(): threads must be a positive integer, got 0"),
    ({"seeds": []}, "ltbench.run(): seeds: give at least one seed, e.g. seeds=[0, 1, 2]"),
    ({"device": "tpu"}, "ltbench.run(): device must be auto, cpu or cuda, got 'tpu'"),
])
def test_errors_from_python_name_the_option_not_a_flag(options, message, tmp_path):
    """Flawed: ``ltbench.run(jobs=0)`` (threads, seeds, device) said ``--jobs must be ...``: a flag Python has
    not got. From Python an error names the keyword argument; the command line still names the flag."""
    from ltbench.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        ltbench.run(methods="ce", datasets="synthetic-lt", budget="smoke", output=tmp_path / "runs", **options)
    assert message in str(info.value) and "--" not in str(info.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("options, said", [
    ({"set": {"nope": 1}}, "unknown set key 'nope'"),
    ({"datasets": "cifar100-lt", "data_root": "MISSING"}, "data_root "),
    ({"datasets": "cifar100-lt", "data_root": "EMPTY"}, "data_root=DIR"),
])
def test_errors_from_config_and_data_loading_name_python_options_too(options, said, tmp_path):
    """Flawed, continued: an unknown ``set`` key, a missing ``data_root`` and a dataset not found said ``--set``,
    ``--data-root DIR`` and ``--download`` from Python (they are raised deep in config and data loading); from
    Python they name the keyword arguments, and the command line keeps its flags."""
    from ltbench.errors import LtbenchError

    paths = {"MISSING": str(tmp_path / "missing"), "EMPTY": str(tmp_path)}
    options = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in options.items()}
    options = {"methods": "ce", "datasets": "synthetic-lt", "budget": "smoke", **options}
    with pytest.raises(LtbenchError) as info:
        ltbench.run(output=tmp_path / "runs", **options)
    assert said in str(info.value) and "--" not in str(info.value), str(info.value)
    assert not (tmp_path / "runs").exists()
    argv = ["run", "--output", str(tmp_path / "cli"), "--methods", options["methods"], "--datasets",
            options["datasets"], "--budget", "smoke"]
    argv += ["--set", "nope=1"] if "set" in options else ["--data-root", options["data_root"]]
    done = subprocess.run([sys.executable, "-m", "ltbench", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--" in done.stderr, done.stderr
