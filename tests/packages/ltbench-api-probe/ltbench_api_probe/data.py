"""``probe-stripes``: 8 classes of 12x12 images of stripes (class c: stripes at angle c * 22.5 degrees, in
noise), generated from a fixed seed, made long-tailed with the CIFAR-LT profile. Needs no data root."""

import math

import numpy as np

from ltbench.api import Budget, ConfigError, DatasetSpec, LTData, exponential_counts, long_tailed_split

NUM_CLASSES = 8
PER_CLASS = 60
TEST_PER_CLASS = 20
VAL_PER_CLASS = 5


def stripes(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:12, 0:12].astype(np.float32)
    images, labels = [], []
    for c in range(NUM_CLASSES):
        angle = c * math.pi / NUM_CLASSES
        phase = rng.uniform(0, 2 * math.pi, size=(n_per_class, 1, 1))
        wave = np.sin(0.9 * (xx * math.cos(angle) + yy * math.sin(angle))[None] + phase)
        noisy = 0.5 + 0.35 * wave + 0.15 * rng.standard_normal((n_per_class, 12, 12))
        images.append(np.repeat((np.clip(noisy, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1))
        labels.append(np.full(n_per_class, c, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def load_stripes(data_root, imbalance_factor):
    del data_root  # generated
    if imbalance_factor < 1:
        raise ConfigError(f"probe-stripes: imbalance factor {imbalance_factor}; it must be 1 or more")
    x, y = stripes(PER_CLASS, seed=0)
    x_test, y_test = stripes(TEST_PER_CLASS, seed=1)
    counts = exponential_counts(PER_CLASS - VAL_PER_CLASS, NUM_CLASSES, imbalance_factor)
    train, val = long_tailed_split(y, counts, val_per_class=VAL_PER_CLASS)
    pixels = x[train].reshape(-1, 3) / 255.0
    return LTData(name="probe-stripes", num_classes=NUM_CLASSES, x_train=x[train], y_train=y[train],
                  x_val=x[val], y_val=y[val], x_test=x_test, y_test=y_test,
                  mean=tuple(pixels.mean(0).tolist()), std=tuple((pixels.std(0) + 1e-3).tolist()),
                  class_names=[f"angle {c}" for c in range(NUM_CLASSES)],
                  info={"imbalance_factor": imbalance_factor, "source": "generated (seeds 0 and 1)",
                        "val_rule": f"{VAL_PER_CLASS} left-out images per class", "classes_without_val": []})


PROBE_STRIPES = DatasetSpec(
    name="probe-stripes",
    description="Probe stripes: 8 classes of generated 12x12 stripe images, long-tailed",
    load=load_stripes,
    budgets={"smoke": Budget(backbone="probe-cnn", epochs=2, batch_size=32, lr=0.05, stage2_epochs=1,
                             stage2_batch_size=32, smoke=True, description="seconds")},
    default_imbalance_factor=10.0,
    crop_padding=1,
    image_shape=(12, 12, 3),
    needs_data_root=False,
)
