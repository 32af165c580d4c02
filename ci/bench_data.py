"""The streaming data path against the in-memory one, measured side by side in one run (issue 14).

    python ci/bench_data.py [--dataset cifar100-lt --data-root ../shared/data] [--batches 30] [--rounds 3]

Exports the dataset to PNG files and list files (``ltbench data export``) in a temporary folder, then, in
interleaved rounds, times batches of training images (decode, crop, flip, normalise; no model) from the
in-memory store and from the streaming store with 0, 1 and 2 DataLoader workers, and prints images/s and the
ratio to in-memory (median over rounds). It also prints the peak resident memory of a process that streams
one epoch, against the size of the dataset's files on disk and against a process that loads it in memory.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CHILD = """
import resource, sys, torch
from ltbench.plugins.catalog import get_catalog
from ltbench.data.datasets import load_checked
from ltbench.training import make_store
spec = get_catalog().dataset(sys.argv[1])
data = load_checked(spec, sys.argv[2], spec.default_imbalance_factor)
store = make_store(data.x_train, spec, data, torch.device("cpu"), {"workers": 0})
order = torch.randperm(len(store))
store.prefetch(order, 256)
for s in range(0, len(order), 256):
    store.get(order[s:s + 256], augment=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def rate(store, order: torch.Tensor, batches: int, batch_size: int) -> float:
    store.prefetch(order[: batches * batch_size], batch_size)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for b in range(batches):
        store.get(order[b * batch_size : (b + 1) * batch_size], augment=True, generator=g)
    return batches * batch_size / (time.perf_counter() - t0)


def peak_mb(dataset: str, root: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, dataset, root], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar100-lt")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from ltbench.plugins.catalog import get_catalog
    from ltbench.data.split import load_checked
    from ltbench.data.stores import make_store
    from ltbench.data.files import export_list_dataset, load_image_folder_lt

    spec = get_catalog().dataset(args.dataset)
    data = load_checked(spec, args.data_root, spec.default_imbalance_factor)
    with tempfile.TemporaryDirectory() as tmp:
        root = export_list_dataset(data, Path(tmp), spec.key(spec.default_imbalance_factor).replace("-", "_"),
                                   spec.crop_padding, spec.flip, log=lambda m: None)
        files = load_image_folder_lt(str(root), 0.0)
        stores = {"in-memory": make_store(data.x_train, spec, data, torch.device("cpu"), {})}
        for workers in (0, 1, 2):
            stores[f"streaming, {workers} workers"] = make_store(files.x_train, spec, files, torch.device("cpu"),
                                                                 {"workers": workers})
        order = torch.randperm(len(data.y_train), generator=torch.Generator().manual_seed(0))
        results: dict[str, list[float]] = {name: [] for name in stores}
        for r in range(args.rounds):
            names = list(stores) if r % 2 == 0 else list(reversed(stores))  # alternate who goes first
            for name in names:
                results[name].append(rate(stores[name], order, args.batches, args.batch_size))
        base = statistics.median(results["in-memory"])
        print(f"{args.dataset}: {len(data.y_train)} training images, batches of {args.batch_size}, "
              f"{args.batches} batches per measurement, median of {args.rounds} interleaved rounds ({torch.get_num_threads()} torch threads)")
        for name, values in results.items():
            v = statistics.median(values)
            print(f"  {name:22s} {v:8.0f} img/s   ratio to in-memory {v / base:5.2f}")
        on_disk = sum(p.stat().st_size for p in Path(root).rglob("*.png")) / 2**20
        streamed = peak_mb("image-folder-lt", str(root))
        in_memory = peak_mb(args.dataset, args.data_root)
        print(f"  peak memory of one epoch: streaming {streamed:.0f} MiB, in-memory {in_memory:.0f} MiB; the image "
              f"files take {on_disk:.0f} MiB on disk")


if __name__ == "__main__":
    main()
