"""What the data's content fingerprint costs on a large image folder (issue 40, item 1).

    python ci/bench_fingerprint.py [--files 100000] [--size 32]

Writes ``--files`` small random JPEGs (``--size`` pixels square) as an image-folder-lt root (list files: 80 %
train, 10 % validation, 10 % test) in a temporary folder under /tmp, deleted afterwards, then times, in one
process and one thread: loading the root, the split fingerprint (paths and labels), the first content fingerprint
(every file read and hashed, the digests cached beside the data) and the second one on a fresh load (every digest
from the cache: one stat a file). It prints files/s of each and the ratio of the first to the second.

The files were just written, so the first fingerprint reads them from the page cache: it measures hashing and the
cache, not the disk (a cold disk adds its read time, once).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))
CLASSES = 100


def write_root(root: Path, files: int, size: int) -> None:
    """``files`` random JPEGs under ``root/<split>/<class>/`` and ``bench_<split>.txt`` list files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    start, written = 0, 0
    for split, share in SPLITS:
        n = files - written if split == "test" else int(files * share)
        lines = []
        for i in range(n):
            label = (start + i) % CLASSES
            rel = f"{split}/{label:03d}/{i:06d}.jpg"
            if i < CLASSES:
                (root / split / f"{label:03d}").mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / rel, quality=90)
            lines.append(f"{rel} {label}\n")
        (root / f"bench_{split}.txt").write_text("".join(lines))
        start, written = start + n, written + n


def timed(fn) -> tuple[object, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=32, help="the side of each image in pixels")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from ltbench.data import imagefiles
    from ltbench.data.files import load_image_folder_lt

    root = Path(tempfile.mkdtemp(prefix="ltbench-fingerprint-", dir="/tmp"))
    try:
        _, seconds = timed(lambda: write_root(root, args.files, args.size))
        on_disk = sum(p.stat().st_size for p in root.rglob("*.jpg"))
        print(f"wrote {args.files:,} JPEGs of {args.size}x{args.size} ({on_disk / 2**20:.1f} MiB) under {root} "
              f"in {seconds:.1f}s")
        time.sleep(imagefiles.SETTLED_NS / 1e9 + 0.5)  # files modified just now are hashed but not cached

        data, load_s = timed(lambda: load_image_folder_lt(str(root), 0))
        _, split_s = timed(lambda: data.fingerprint)
        cold, cold_s = timed(lambda: data.content_fingerprint)
        cache = root / imagefiles.DIGEST_CACHE
        again = load_image_folder_lt(str(root), 0)
        warm, warm_s = timed(lambda: again.content_fingerprint)
        assert warm == cold, "the cached fingerprint differs from the first"

        n = args.files
        print(f"machine: {os.cpu_count()} CPUs; {_cpu_model()}; python {sys.version.split()[0]}; one thread")
        print(f"load (list files):                     {load_s:7.2f} s")
        print(f"split fingerprint (paths, labels):     {split_s:7.2f} s")
        print(f"content fingerprint, first (hashing):  {cold_s:7.2f} s  {n / cold_s:9,.0f} files/s  "
              f"{on_disk / 2**20 / cold_s:6.1f} MiB/s")
        print(f"content fingerprint, second (cached):  {warm_s:7.2f} s  {n / warm_s:9,.0f} files/s")
        print(f"ratio first / second:                  {cold_s / warm_s:7.1f} x")
        print(f"digest cache: {cache.stat().st_size / 2**20:.1f} MiB ({cache.stat().st_size / n:.0f} bytes a file)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
