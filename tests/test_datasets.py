import json
import pickle

import numpy as np
import pytest

from ltbench.cli import main
from ltbench.data.datasets import find_cifar
from ltbench.data.split import exponential_counts, long_tailed_split
from ltbench.errors import ConfigError, DataNotFoundError
from ltbench.plugins.catalog import build_catalog
from ltbench.results.metrics import shot_groups


@pytest.mark.parametrize(
    "num_classes, n_max, imbalance, total, smallest, groups",
    [
        (100, 500, 100, 10847, 5, (35, 35, 30)),
        (100, 500, 50, 12608, 10, (41, 41, 18)),
        (100, 500, 200, 9502, 2, (30, 31, 39)),
        (100, 500, 10, 19573, 50, (69, 31, 0)),
        (10, 5000, 100, 12406, 50, (8, 2, 0)),
        (10, 5000, 10, 20431, 500, (10, 0, 0)),
    ],
)
def test_cifar_lt_counts_match_the_published_totals(num_classes, n_max, imbalance, total, smallest, groups):
    counts = exponential_counts(n_max, num_classes, imbalance)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == smallest
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    g = shot_groups(np.array(counts))
    assert ((g == "many").sum(), (g == "medium").sum(), (g == "few").sum()) == groups


def test_negative_or_sub_one_imbalance_factor_is_rejected():
    with pytest.raises(ConfigError, match="imbalance_factor"):
        exponential_counts(500, 100, -5)
    with pytest.raises(ConfigError, match="imbalance_factor"):
        exponential_counts(500, 100, 0.5)


def ldam_reference_subset(labels, counts):
    """LDAM-DRW's IMBALANCECIFAR.gen_imbalanced_data, written as it is there (global numpy RNG)."""
    np.random.seed(0)
    selected = []
    for the_class, the_img_num in zip(range(len(counts)), counts):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)
        selected.extend(idx[:the_img_num])
    return np.array(selected)


def test_subset_is_exactly_ldam_drws_seed_0_draw(cifar_root):
    with np.load(cifar_root / "cifar100.npz") as d:
        y = d["y_train"]
    counts = exponential_counts(500, 100, 100)
    train_idx, val_idx = long_tailed_split(y, counts, val_per_class=20)
    np.testing.assert_array_equal(train_idx, ldam_reference_subset(y, counts))
    # validation only holds images the subset left out: never train, never test
    assert not set(train_idx) & set(val_idx)
    assert np.bincount(y[val_idx], minlength=100)[0] == 0  # class 0 keeps all 500 images for training
    assert np.all(np.bincount(y[val_idx], minlength=100)[1:] == 20)


def test_official_pickles_and_npz_give_the_same_split(cifar_root, tmp_path):
    with np.load(cifar_root / "cifar100.npz") as d:
        x_tr, y_tr, x_te, y_te = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        # the official files interleave classes but keep each class's images in order
        keys = np.random.RandomState(1).rand(len(y))
        for c in range(100):
            keys[y == c] = np.sort(keys[y == c])
        order = np.argsort(keys)
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": x[order].transpose(0, 3, 1, 2).reshape(len(y), -1),
                         b"fine_labels": y[order].tolist()}, fh)
    spec = build_catalog(entry_points=False).dataset("cifar100-lt")
    from_pickles = spec.load(str(tmp_path), 100.0)
    from_npz = spec.load(str(cifar_root), 100.0)
    np.testing.assert_array_equal(from_pickles.y_train, from_npz.y_train)
    np.testing.assert_array_equal(from_pickles.x_train, from_npz.x_train)
    np.testing.assert_array_equal(from_pickles.x_val, from_npz.x_val)


def test_ltbench_data_reports_the_cifar100_lt_split(cifar_root, capsys):
    assert main(["data", "cifar100-lt", "--data-root", str(cifar_root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_classes"] == 100 and info["train_size"] == 10847
    assert info["train_counts"][0] == 500 and info["train_counts"][-1] == 5
    assert info["groups"] == {"many": 35, "medium": 35, "few": 30}
    assert info["test_size"] == 10000 and info["val_size"] == 99 * 20
    assert info["classes_without_val"] == [0]


def test_missing_data_root_says_where_it_looked_and_what_to_put_there(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(DataNotFoundError) as err:
        find_cifar(100, str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar100.npz") in msg and "cifar-100-python" in msg
    assert "--data-root" in msg and "LTBENCH_DATA" in msg


def test_corrupt_or_incomplete_npz_is_a_clear_error(tmp_path):
    (tmp_path / "cifar100.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(DataNotFoundError, match="not a readable .npz"):
        find_cifar(100, str(tmp_path))
    np.savez(tmp_path / "cifar100.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(DataNotFoundError, match="lacks arrays"):
        find_cifar(100, str(tmp_path))


def test_npz_is_loaded_without_pickle(tmp_path):
    np.savez(tmp_path / "cifar100.npz", x_train=np.array([object()]), y_train=np.zeros(1), x_test=np.zeros(1),
             y_test=np.zeros(1))
    with pytest.raises(DataNotFoundError, match="not a readable"):
        find_cifar(100, str(tmp_path))


def test_embedded_fashion_mnist_lt_has_every_shot_group_and_disjoint_splits():
    data = build_catalog(entry_points=False).dataset("fashion-mnist-lt").load(None, 100.0)
    counts = data.train_counts
    assert counts.tolist() == exponential_counts(500, 10, 100)
    g = shot_groups(counts)
    assert {(g == k).sum() for k in ("many", "medium", "few")} >= {3, 4}
    assert all((g == k).any() for k in ("many", "medium", "few"))
    assert data.x_train.shape[1:] == (28, 28, 1) and len(data.y_test) == 10000
    train_bytes = {x.tobytes() for x in data.x_train}
    assert not any(x.tobytes() in train_bytes for x in data.x_val)


def test_synthetic_lt_is_long_tailed_and_deterministic():
    spec = build_catalog(entry_points=False).dataset("synthetic-lt")
    a, b = spec.load(None, 30.0), spec.load(None, 30.0)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    g = shot_groups(a.train_counts)
    assert all((g == k).any() for k in ("many", "medium", "few"))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_the_cifar_unpickler_reads_the_official_format(tmp_path, protocol):
    from ltbench.data.datasets import _read_cifar_pickles

    data = np.arange(2 * 3 * 32 * 32, dtype=np.uint8).reshape(2, -1)
    (tmp_path / "train").write_bytes(pickle.dumps({b"data": data, b"fine_labels": [3, 7]}, protocol=protocol))
    x, y = _read_cifar_pickles(tmp_path, ["train"], b"fine_labels")
    assert x.shape == (2, 32, 32, 3) and y.tolist() == [3, 7]
    np.testing.assert_array_equal(x[1], data[1].reshape(3, 32, 32).transpose(1, 2, 0))


class _Planted:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_file_in_a_cifar_folder_is_refused_and_never_runs(tmp_path, capsys):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    marker = tmp_path / "pwned"
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps({b"data": _Planted(marker), b"fine_labels": [0]}))
    assert main(["data", "cifar100-lt", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert str(folder / "train") in err and "io.open" in err and "nothing in it was run" in err
