"""The data's content fingerprint covers every split (issue 40, item 1 and "badly" case 1).

``LTData.fingerprint`` (a record's ``split_fingerprint``) hashes the training and validation splits, image files
by their paths: a run found again under the same ``--output`` after its test set changed, or after its image files
were rewritten in place, was returned as "already completed, skipped". ``LTData.content_fingerprint`` (a record's
and ``data.json``'s ``data_sha256``) hashes every split's images and labels, image files by their bytes (cached
beside the data, keyed by size and modification time); a run made on other contents is refused by name, and
records from before it are compared by the test labels in their ``predictions.npz``.
"""

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from ltbench.cli import main
from ltbench.data import imagefiles
from ltbench.data.files import load_image_folder_lt
from ltbench.errors import ConfigError

GRID = ["run", "--methods", "ce", "--datasets", "image-folder-lt", "--budget", "smoke"]
HOUR_NS = 3600 * 10**9


def _export(root: Path) -> Path:
    assert main(["data", "export", "synthetic-lt", "--format", "imagenet-lt-list", "--out", str(root)]) == 0
    return root


def _age(root: Path) -> None:
    """Every file under ``root`` last modified an hour ago (files modified just now are not cached)."""
    then = time.time_ns() - HOUR_NS
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(then, then))


def _invert(paths: list[Path]) -> None:
    """Each image rewritten in place, under its own name, with inverted pixels."""
    for path in paths:
        with Image.open(path) as img:
            pixels = np.asarray(img)
        Image.fromarray(255 - pixels).save(path)


def _shuffle_labels(root: Path, split: str) -> None:
    """The labels of ``split``'s list file shuffled (the same images, in the same order)."""
    (listing,) = root.glob(f"*_{split}.txt")
    lines = [line.rsplit(maxsplit=1) for line in listing.read_text().splitlines()]
    labels = np.random.RandomState(0).permutation([label for _, label in lines])
    listing.write_text("".join(f"{path} {label}\n" for (path, _), label in zip(lines, labels)))


def _images(root: Path, split: str) -> list[Path]:
    return sorted((root / split).glob("*.png"))


def _load(root: Path):
    return load_image_folder_lt(str(root), 0)


def _said(capsys) -> str:
    out = capsys.readouterr()
    return out.out + out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(an image-folder-lt root exported from synthetic-lt, ``runs/`` holding ce trained on it at the smoke budget)."""
    base = tmp_path_factory.mktemp("fingerprint")
    data = _export(base / "data")
    _age(data)
    assert main([*GRID, "--data-root", str(data), "--output", str(base / "runs")]) == 0
    assert (data / imagefiles.DIGEST_CACHE).is_file()  # the digests were cached beside the data
    return data, base / "runs"


@pytest.fixture
def copy(trained, tmp_path) -> tuple[Path, Path, Path]:
    """This test's own copy of the data and the runs (modification times kept), and the run's record."""
    data, runs = (tmp_path / "data", tmp_path / "runs")
    shutil.copytree(trained[0], data)
    shutil.copytree(trained[1], runs)
    (record,) = runs.rglob("result.json")
    return data, runs, record


def test_a_test_set_inverted_and_shuffled_under_the_same_output_is_refused_not_skipped(copy, capsys):
    data, runs, record = copy
    before = record.read_text()
    recorded = json.loads(before)["data_sha256"]
    _invert(_images(data, "test"))
    _shuffle_labels(data, "test")
    now = _load(data)
    assert now.content_fingerprint["test"] != recorded["test"]
    capsys.readouterr()
    assert main([*GRID, "--data-root", str(data), "--output", str(runs)]) != 0
    said = _said(capsys)
    assert "already completed" not in said and "skipped" not in said
    assert "made on other contents" in said and "test split changed" in said and "--rerun" in said
    assert recorded["test"] in said and now.content_fingerprint["test"] in said  # both values named
    assert record.read_text() == before  # the first record is kept as it was


def test_an_in_memory_test_set_inverted_and_shuffled_changes_the_content_fingerprint_only_there():
    from ltbench.data.split import load_checked
    from ltbench.plugins.catalog import get_catalog

    spec = get_catalog().dataset("synthetic-lt")
    data = load_checked(spec, None, spec.default_imbalance_factor)
    changed = dataclasses.replace(data, x_test=255 - data.x_test,
                                  y_test=np.random.RandomState(0).permutation(data.y_test))
    assert changed.fingerprint == data.fingerprint  # train and validation only: it cannot see the test set
    assert changed.content_fingerprint["test"] != data.content_fingerprint["test"]
    assert {s: changed.content_fingerprint[s] for s in ("train", "val")} == \
        {s: data.content_fingerprint[s] for s in ("train", "val")}


def test_image_files_rewritten_in_place_change_the_fingerprint_and_the_run_is_refused(copy, capsys):
    data, runs, record = copy
    before = _load(data)
    before.content_fingerprint  # (computed now, before the files change)
    _invert(_images(data, "train"))  # the same names, inverted pixels
    after = _load(data)
    assert after.fingerprint == before.fingerprint  # paths and labels: the split fingerprint cannot tell
    assert after.content_fingerprint["train"] != before.content_fingerprint["train"]
    assert after.content_fingerprint["test"] == before.content_fingerprint["test"]
    capsys.readouterr()
    assert main([*GRID, "--data-root", str(data), "--output", str(runs)]) != 0
    said = _said(capsys)
    assert "already completed" not in said and "train split changed" in said
    assert after.content_fingerprint["train"] in said


def test_the_digest_cache_serves_the_second_load_and_a_changed_size_or_mtime_is_hashed_again(tmp_path, monkeypatch):
    root = _export(tmp_path / "data")
    _age(root)
    hashed: list[Path] = []
    real = imagefiles.sha256_file
    monkeypatch.setattr(imagefiles, "sha256_file", lambda path: hashed.append(Path(path)) or real(path))
    first = _load(root).content_fingerprint
    files = len(_images(root, "train") + _images(root, "val") + _images(root, "test"))
    assert len(hashed) == files == 1062
    cache = json.loads((root / imagefiles.DIGEST_CACHE).read_text())
    assert len(cache["files"]) == files and cache["files"]["test/000000.png"][2] == real(root / "test/000000.png")

    hashed.clear()
    assert _load(root).content_fingerprint == first and hashed == []  # a new load: every digest from the cache

    # the same size, another modification time (one byte changed inside): hashed again
    one = root / "train" / "000003.png"
    raw = bytearray(one.read_bytes())
    raw[-20] ^= 0xFF
    one.write_bytes(bytes(raw))
    os.utime(one, ns=(time.time_ns() - HOUR_NS // 2,) * 2)
    hashed.clear()
    again = _load(root).content_fingerprint
    assert hashed == [one] and again["train"] != first["train"] and again["test"] == first["test"]

    # another size, the same modification time: hashed again
    other = root / "test" / "000001.png"
    stat = other.stat()
    other.write_bytes(other.read_bytes() + b"\0")
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    hashed.clear()
    assert _load(root).content_fingerprint["test"] != first["test"] and hashed == [other]
    hashed.clear()
    _load(root).content_fingerprint
    assert hashed == []  # and cached again


def test_hashing_many_files_shows_its_progress_on_stderr(tmp_path, monkeypatch, capsys):
    root = _export(tmp_path / "data")
    _age(root)
    monkeypatch.setattr(imagefiles, "PROGRESS_EVERY_S", 0.0)
    capsys.readouterr()
    _load(root).content_fingerprint
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"hashing 1,062 image files under {root} (once: their digests are cached)"
    assert any(line.startswith("hashing image files: ") and " of 1,062 (" in line for line in lines)
    assert lines[-1].startswith("hashed 1,062 image files in ") and str(root / imagefiles.DIGEST_CACHE) in lines[-1]
    _load(root).content_fingerprint
    assert capsys.readouterr().err == ""  # from the cache: nothing to show


def test_a_root_that_cannot_be_written_keeps_its_digests_in_the_user_cache(tmp_path, monkeypatch):
    root = _export(tmp_path / "data")
    _age(root)
    (root / imagefiles.DIGEST_CACHE).mkdir()  # (as root, a chmod would not stop the write: this does)
    monkeypatch.setenv(imagefiles.DIGEST_CACHE_ENV, str(tmp_path / "cache"))
    first = _load(root).content_fingerprint
    assert imagefiles.user_digest_cache(str(root)).is_file()
    assert imagefiles.user_digest_cache(str(root)).parent == tmp_path / "cache"
    hashed: list[Path] = []
    real = imagefiles.sha256_file
    monkeypatch.setattr(imagefiles, "sha256_file", lambda path: hashed.append(path) or real(path))
    assert _load(root).content_fingerprint == first and hashed == []
    monkeypatch.delenv(imagefiles.DIGEST_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert imagefiles.user_digest_cache(str(root)).parent == tmp_path / "xdg" / "ltbench" / "file-sha256"


def test_an_old_record_without_data_sha256_is_skipped_on_its_data_and_refused_on_other_test_labels(copy, capsys):
    data, runs, record = copy
    for path in (record, record.parent / "data.json"):  # as ltbench wrote them before data_sha256
        old = json.loads(path.read_text())
        del old["data_sha256"]
        path.write_text(json.dumps(old))
    before = record.read_text()
    capsys.readouterr()
    assert main([*GRID, "--data-root", str(data), "--output", str(runs)]) == 0
    assert "already completed, skipped" in _said(capsys)
    assert record.read_text() == before

    _shuffle_labels(data, "test")  # what it can tell: the test labels in its predictions.npz
    assert main([*GRID, "--data-root", str(data), "--output", str(runs)]) != 0
    said = _said(capsys)
    assert "already completed" not in said and "predictions.npz" in said and "test set changed" in said
    assert record.read_text() == before


def test_committed_records_are_still_skipped_on_the_canonical_data_and_refused_on_other_test_labels(cifar_root):
    """The committed board's records (from before data_sha256) are "already completed" on the data they were made
    on, and refused when the test labels are not theirs."""
    from ltbench.data.split import load_checked
    from ltbench.grid.runner import _check_run_dir
    from ltbench.plugins.catalog import get_catalog

    spec = get_catalog().dataset("cifar100-lt")
    paths = sorted((REPO / "leaderboards" / "records").rglob("result.json"))
    assert len(paths) >= 100
    loaded, seen = {}, 0
    for path in paths:
        rec = json.loads(path.read_text())
        if rec.get("dataset_name", "cifar100-lt") != "cifar100-lt" or rec["status"] != "completed":
            continue
        if rec["dataset"] not in loaded:
            data = load_checked(spec, str(cifar_root), rec["imbalance_factor"])
            shuffled = dataclasses.replace(data, y_test=np.random.RandomState(0).permutation(data.y_test))
            loaded[rec["dataset"]] = (data, shuffled)
        data, shuffled = loaded[rec["dataset"]]
        cell = SimpleNamespace(config=rec["config"], data=data, dataset_key=rec["dataset"])
        assert _check_run_dir(cell, path.parent, rerun=False) == (None, rec), path
        error, existing = _check_run_dir(SimpleNamespace(**{**vars(cell), "data": shuffled}), path.parent, False)
        assert existing is None and "test" in error and "--rerun" in error, path
        seen += 1
    assert seen >= 100


def test_eval_records_the_contents_it_evaluated_on_and_refuses_changed_training_images(copy):
    from ltbench.grid.evaluation import evaluate_run

    data, runs, record = copy
    source = json.loads(record.read_text())
    evals = runs.parent / "evals"
    first = evaluate_run(record.parent, data_root=str(data), output=evals, log=lambda m: None)
    assert first["data_sha256"] == first["evaluated_on"]["data_sha256"] == source["data_sha256"]

    _invert(_images(data, "test"))
    _shuffle_labels(data, "test")
    again = evaluate_run(record.parent, data_root=str(data), output=evals, log=lambda m: None)
    (written,) = evals.rglob("result.json")
    assert json.loads(written.read_text())["data_sha256"] == again["data_sha256"] == _load(data).content_fingerprint
    assert again["data_sha256"]["test"] != source["data_sha256"]["test"]  # the other test set, named as such
    assert again["data_sha256"]["train"] == source["data_sha256"]["train"]

    _invert(_images(data, "train"))  # the model did not train on these
    with pytest.raises(ConfigError, match="train images or labels .* changed since the run trained on them"):
        evaluate_run(record.parent, data_root=str(data), output=evals, log=lambda m: None)


def test_a_shared_stage1_trained_on_other_contents_is_refused_not_reused(tmp_path, capsys):
    """A finished shared stage 1 states the contents of the training and validation splits it learnt from; a new
    second-stage run after the training images were rewritten in place (the same names and labels: the split
    fingerprint and the stage-1 key cannot tell) is refused by name instead of reusing it; on unchanged data it
    is reused."""
    data, runs = _export(tmp_path / "data"), tmp_path / "runs"
    _age(data)
    two_stage = ["run", "--datasets", "image-folder-lt", "--budget", "smoke", "--data-root", str(data),
                 "--output", str(runs), "--methods"]
    assert main([*two_stage, "crt"]) == 0
    (info,) = runs.rglob("stage1.json")
    made_on = json.loads(info.read_text())["data_sha256"]
    assert made_on == {k: _load(data).content_fingerprint[k] for k in ("train", "val")}
    capsys.readouterr()
    assert main([*two_stage, "tau-norm"]) == 0 and "stage 1 reused" in _said(capsys)  # unchanged: reused
    _invert(_images(data, "train"))
    assert main([*two_stage, "lws"]) != 0
    said = _said(capsys)
    assert "trained on other contents of the train split" in said and "stage 1 reused" not in said
