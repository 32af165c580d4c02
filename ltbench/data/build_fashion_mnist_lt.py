"""Build the embedded fashion_mnist_lt.npz from the four Fashion-MNIST IDX files.

Fashion-MNIST (c) 2017 Zalando SE, MIT licence (see LICENSE-fashion-mnist).
On Debian: ``apt-get install dataset-fashion-mnist`` puts the files in
/usr/share/datasets/fashion-mnist/. Run::

    python ltbench/data/build_fashion_mnist_lt.py [SOURCE_DIR]

The split follows the CIFAR-LT protocol: exponential profile with n_max 500
and imbalance factor 100 over the 10 classes (500, 299, 179, 107, 64, 38, 23,
13, 8, 5 = 1,236 images: 4 many, 3 medium, 3 few), drawn with LDAM-DRW's seed-0 procedure;
validation = 20 left-out training images per class; test = the full official
test set (1,000 per class). Images are stored as uint8 (N, 28, 28, 1).
"""

import sys
from pathlib import Path

import numpy as np

from ltbench.data.datasets import read_idx_gz
from ltbench.data.split import exponential_counts, long_tailed_split

SOURCE = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).with_name("fashion_mnist_lt.npz")

x_train = read_idx_gz(SOURCE / "train-images-idx3-ubyte.gz")[..., None]
y_train = read_idx_gz(SOURCE / "train-labels-idx1-ubyte.gz").astype(np.int64)
x_test = read_idx_gz(SOURCE / "t10k-images-idx3-ubyte.gz")[..., None]
y_test = read_idx_gz(SOURCE / "t10k-labels-idx1-ubyte.gz").astype(np.int64)

train_idx, val_idx = long_tailed_split(y_train, exponential_counts(500, 10, 100.0), val_per_class=20)
np.savez_compressed(
    OUT,
    x_train=x_train[train_idx], y_train=y_train[train_idx].astype(np.uint8),
    x_val=x_train[val_idx], y_val=y_train[val_idx].astype(np.uint8),
    x_test=x_test, y_test=y_test.astype(np.uint8),
)
print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB): train {len(train_idx)}, val {len(val_idx)}, test {len(y_test)}")
