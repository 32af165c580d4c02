"""The streaming data path (issue 14): images on disk, decoded by DataLoader workers, exactly the in-memory
path's training when the files hold the same pixels."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from ltbench.cli import main
from ltbench.data.files import load_image_folder_lt
from ltbench.data.imagefiles import FileImageStore, ImageFiles
from ltbench.errors import DataNotFoundError
from ltbench.grid.plan import plan_grid
from ltbench.plugins.testing import catalog_with, check_streaming
from ltbench_builtin.ce import CrossEntropy


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    assert main(["data", "export", "synthetic-lt", "--format", "imagenet-lt-list", "--out", str(out)]) == 0
    return out


def test_export_writes_the_split_as_lossless_files_in_imagenet_lt_list_format(exported):
    catalog = catalog_with()
    (cell,) = plan_grid(["ce"], ["synthetic-lt"], [0], "smoke", catalog=catalog)
    lines = (exported / "synthetic_lt_if30_train.txt").read_text().splitlines()
    assert len(lines) == len(cell.data.y_train) and lines[0] == f"train/000000.png {cell.data.y_train[0]}"
    files = load_image_folder_lt(str(exported), 0.0)
    assert files.streaming and np.array_equal(files.y_train, cell.data.y_train)
    for i in (0, 7, len(lines) - 1):  # the pixels survive the round trip
        assert np.array_equal(files.x_train.decode(i), cell.data.x_train[i])
    assert files.mean == tuple(cell.data.mean) and files.x_train.transform == "pad-crop-flip"


@pytest.mark.parametrize("workers", [0, 2])
def test_training_through_the_streaming_path_is_exactly_the_in_memory_training(tmp_path, workers):
    # the kit's check: synthetic-lt exported to image files and streamed (``workers`` decoding processes) trains
    # to the in-memory run's losses and per-class accuracy, bit for bit
    streamed = check_streaming(CrossEntropy, tmp_path, workers=workers)
    assert streamed["status"] == "completed" and streamed["config"]["workers"] == workers


def test_the_streaming_store_never_holds_the_split_and_decodes_ahead(exported):
    files = load_image_folder_lt(str(exported), 0.0)
    store = FileImageStore(files.x_train, files.mean, files.std, torch.device("cpu"), padding=2, workers=1)
    assert not hasattr(store, "x")  # no in-memory copy of the images
    order = torch.arange(100)
    store.prefetch(order, 32)
    g = torch.Generator().manual_seed(0)
    first = store.get(order[:32], augment=True, generator=g)
    assert first.shape == (32, 3, 16, 16) and store._expected and store._expected[0] == list(range(32, 64))
    # a method's own draw (other images) is decoded on demand and leaves the read-ahead to the step loop
    own = store.get(torch.tensor([5, 70, 3]), augment=True, generator=torch.Generator().manual_seed(1))
    assert own.shape == (3, 3, 16, 16) and store._expected[0] == list(range(32, 64))
    store.get(order[32:64], augment=True, generator=g)
    assert store._expected == [list(range(64, 96)), list(range(96, 100))]  # served from the read-ahead
    batches = list(store.eval_batches(200))
    assert [len(b) for b in batches] == [200, 200, 62]


def test_a_bad_root_or_a_bad_image_is_a_named_error(tmp_path, exported):
    with pytest.raises(DataNotFoundError, match="is not an image-folder-lt root"):
        load_image_folder_lt(str(tmp_path), 0.0)
    (tmp_path / "x_train.txt").write_text("a.png 0\nb.png\n")
    (tmp_path / "x_test.txt").write_text("a.png 0\n")
    with pytest.raises(DataNotFoundError, match=r"x_train.txt:2: expected '<relative path> <integer label>'"):
        load_image_folder_lt(str(tmp_path), 0.0)
    (tmp_path / "x_train.txt").write_text("broken.png 0\n")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataNotFoundError, match="broken.png is not a readable image"):
        ImageFiles(["broken.png"], root=str(tmp_path)).decode(0)


@pytest.mark.parametrize("transform", ["pad-crop-flip", "imagenet"])
@pytest.mark.parametrize("prefetched", [True, False])
def test_a_rank_decodes_only_its_rows_and_they_are_the_rows_one_process_gets(exported, monkeypatch, transform,
                                                                              prefetched):
    files = load_image_folder_lt(str(exported), 0.0).x_train
    files = dataclasses.replace(files, transform=transform, size=12)
    decoded = []
    real = ImageFiles.decode
    monkeypatch.setattr(ImageFiles, "decode", lambda self, i: decoded.append(i) or real(self, i))
    store = FileImageStore(files, (0.5,) * 3, (0.25,) * 3, torch.device("cpu"), padding=2, workers=0)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    images = []
    for local in (None, slice(10, 21)):
        decoded.clear()
        g = torch.Generator().manual_seed(0)
        if prefetched:
            store.prefetch(order, 32, g, local_rows=None if local is None else (lambda n: local))
        images.append([store.get(order[s : s + 32], augment=True, generator=g,
                                 local=None if prefetched else local) for s in (0, 32)])
        assert len(decoded) == (64 if local is None else 2 * 11)
    for full, mine in zip(*images):
        assert torch.equal(full[10:21], mine[10:21])  # the same pixels and augmentation draws


@pytest.mark.slow
def test_two_ranks_on_the_streaming_path_follow_the_single_process_trajectory(exported, tmp_path):
    import subprocess
    import sys

    grid = [sys.executable, "-m", "ltbench", "run", "--methods", "ce", "--datasets", "image-folder-lt",
            "--data-root", str(exported), "--budget", "smoke", "--epochs", "3", "--quiet", "--threads", "1",
            "--set", "batch_size=128", "--set", "sync_bn=true"]
    one = subprocess.run([*grid, "--output", "one"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    two = subprocess.run([*grid, "--output", "two", "--nproc", "2"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])

    def losses(out):
        (path,) = (tmp_path / out).rglob("metrics.jsonl")
        return [json.loads(line)["loss_task"] for line in path.read_text().splitlines()]

    assert np.allclose(losses("one"), losses("two"), rtol=1e-5, atol=1e-6)
