"""ImageNet-LT, Places-LT and iNaturalist 2018 (issue 14) on small generated roots in their official formats:
the real images cannot be downloaded here, so these test the loaders and the streaming path, not learning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltbench.data.files import inat_validation_rule, load_inat2018, load_oltr_lists
from ltbench.errors import DataNotFoundError
from ltbench.plugins.catalog import get_catalog
from ltbench.plugins.testing import run_methods
from ltbench.results.metrics import GROUPS, shot_groups


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path, quality=90)


def places_root(root: Path, per_class=lambda c: 1 + (c % 3)) -> Path:
    """Places_LT_{train,val,test}.txt naming JPEGs as the official lists do (a class folder per scene)."""
    lines = {"train": [], "val": [], "test": []}
    for c in range(365):
        for split, n in (("train", per_class(c)), ("val", 1), ("test", 1)):
            for k in range(n):
                rel = f"{split}/c{c:03d}/{k:04d}.jpg"
                _image(root / rel, c * 10 + k)
                lines[split].append(f"{rel} {c}")
    for split, rows in lines.items():
        (root / f"Places_LT_{split}.txt").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    return places_root(tmp_path_factory.mktemp("places"))


def test_places_lt_loads_the_official_lists_and_says_how_they_compare_with_the_official_counts(places):
    data = load_oltr_lists("places-lt", str(places))
    assert data.num_classes == 365 and data.streaming and len(data.y_train) == sum(1 + c % 3 for c in range(365))
    assert data.info["lines"] == {"train": len(data.y_train), "val": 365, "test": 365} and not data.info["official"]
    assert data.x_train.decode(0).shape == (40, 48, 3)


def test_a_missing_or_partial_root_is_an_error_naming_what_was_expected_and_found(tmp_path, places):
    (tmp_path / "Places_LT_train.txt").write_text("train/a.jpg 0\n")
    with pytest.raises(DataNotFoundError, match=r"lacks Places_LT_val.txt, Places_LT_test.txt.*Places_LT_train.txt: "
                                                r"1 lines \(the official file has 62,500\)"):
        load_oltr_lists("places-lt", str(tmp_path))
    (tmp_path / "Places_LT_val.txt").write_text("")
    (tmp_path / "Places_LT_test.txt").write_text("")
    with pytest.raises(DataNotFoundError, match="1 of the 1 train images the list names are missing"):
        load_oltr_lists("places-lt", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="needs --data-root"):
        load_oltr_lists("imagenet-lt", None)


def test_the_images_of_a_list_are_checked_once_per_process_and_list_version(places, monkeypatch):
    load_oltr_lists("places-lt", str(places))  # checked (by this or an earlier test)
    stats = []
    real = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: stats.append(self) or real(self))
    load_oltr_lists("places-lt", str(places))
    assert len(stats) == 3  # the three list files, no image
    listed = places / "Places_LT_val.txt"
    listed.write_text(listed.read_text())  # a new version of one list (mtime)
    os.utime(listed, ns=(listed.stat().st_atime_ns, listed.stat().st_mtime_ns + 10**9))
    stats.clear()
    load_oltr_lists("places-lt", str(places))
    assert len(stats) == 3 + 365  # its 365 images are checked again


# Where the real lists are at hand (LTBENCH_IMAGENET_LT_ROOT / LTBENCH_PLACES_LT_ROOT: the --data-root holding
# them and the images), the shot groups from their training counts are the published ones (Liu et al. 2019).
KNOWN_GROUPS = {"imagenet-lt": ("LTBENCH_IMAGENET_LT_ROOT", (385, 479, 136)),
                "places-lt": ("LTBENCH_PLACES_LT_ROOT", (131, 163, 71))}


@pytest.mark.parametrize("name", sorted(KNOWN_GROUPS))
def test_the_real_lists_give_the_published_many_medium_few_class_counts(name):
    variable, expected = KNOWN_GROUPS[name]
    if not os.environ.get(variable):
        pytest.skip(f"{variable} is not set (the real {name} lists cannot be downloaded here)")
    data = load_oltr_lists(name, os.environ[variable])
    groups = shot_groups(np.bincount(data.y_train, minlength=data.num_classes))
    assert tuple(int((groups == g).sum()) for g in GROUPS) == expected


def test_inat_2018_reads_the_coco_json_and_holds_out_one_training_image_per_class(tmp_path):
    images, annotations = [], []
    for i in range(30):
        c = i % 7 if i < 28 else 7  # class 7 has 2 images
        rel = f"train_val2018/Plantae/{c}/{i}.jpg"
        _image(tmp_path / rel, i)
        images.append({"id": i, "file_name": rel})
        annotations.append({"image_id": i, "category_id": c})
    (tmp_path / "train2018.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    (tmp_path / "val2018.json").write_text(json.dumps({"images": images[:8], "annotations": annotations[:8]}))
    data = load_inat2018(str(tmp_path))
    assert len(data.y_val) == 8 and sorted(data.y_val.tolist()) == list(range(8))  # one per class
    assert len(data.y_train) == 22 and set(data.y_train.tolist()) == set(range(8))  # every class keeps images
    assert len(data.y_test) == 8
    train, val = inat_validation_rule(np.array([0, 0, 1]))
    assert len(val) == 1 and set(train) | set(val) == {0, 1, 2}  # a one-image class is never held out


def test_the_datasets_and_their_recipes_are_listed():
    catalog = get_catalog()
    for name in ("imagenet-lt", "places-lt", "inat2018", "image-folder-lt"):
        spec = catalog.dataset(name)
        assert "smoke" in spec.budgets and spec.default_imbalance_factor == 0
    assert catalog.dataset("imagenet-lt").budgets["paper"].schedule == "cosine"
    assert catalog.dataset("places-lt").budgets["paper"].pretrained
    assert catalog.dataset("places-lt").budgets["paper"].backbone == "resnet152"


@pytest.mark.slow
def test_every_method_of_the_zoo_completes_a_smoke_run_through_the_streaming_path(tmp_path):
    root = places_root(tmp_path / "root", per_class=lambda c: 1 + (c % 2))
    methods = sorted(get_catalog().methods)
    records = run_methods(get_catalog(), methods, tmp_path / "runs", dataset="places-lt", data_root=str(root),
                          settings={"image_size": "16"})
    failed = {r["method"]: r["error"] for r in records if r["status"] != "completed"}
    assert not failed, failed
    assert {r["dataset"] for r in records} == {"places-lt-natural"}


def test_the_papers_numbers_are_found_for_a_natural_profile_dataset_by_backbone_or_name():
    from ltbench.results.references import reference_result

    def rec(method, dataset, backbone):
        meta = get_catalog().method(method).cls.metadata.to_dict()
        return {"methods": [method], "method_metadata": {method: meta}, "dataset": f"{dataset}-natural",
                "dataset_name": dataset, "config": {"backbone": backbone}}

    assert reference_result(rec("blt", "imagenet-lt", "resnet10"))["overall"] == 36.6
    assert reference_result(rec("blt", "places-lt", "resnet152"))["overall"] == 25.9  # keyed by name alone
    assert reference_result(rec("cam-fusion", "places-lt", "resnet152"))["overall"] == 36.4
    assert reference_result(rec("blt", "inat2018", "resnet34"))["overall"] == 51.0
    assert reference_result(rec("blt", "imagenet-lt", "resnext50_32x4d")) == {}
