"""The streaming data path: images that stay on disk and are decoded batch by batch.

A dataset whose split is too large for memory gives :class:`ImageFiles` (a list of image paths) instead of
uint8 arrays as ``LTData.x_train`` / ``x_val`` / ``x_test``; the engine then builds a :class:`FileImageStore`
instead of an in-memory :class:`ltbench.data.stores.ImageStore`. Both give the engine the same things: normalised
float batches for training (augmented), evaluation and feature extraction. The dataset is never loaded into
memory: a ``torch.utils.data.DataLoader`` with worker processes decodes the images of the batches ahead of the
training loop (PIL), in the order the sampler drew for the epoch.

Augmentation, from ``ImageFiles.transform``:

* ``pad-crop-flip`` (CIFAR-style small images of one size): images decode to uint8 and are cropped and flipped
  in the main process by the same batched function, with the same random draws, as the in-memory path, so a
  dataset exported to files trains exactly as it does from memory;
* ``imagenet``: ``RandomResizedCrop(size)`` and a horizontal flip for training, ``Resize(size * 256 / 224)``
  and ``CenterCrop(size)`` for evaluation (torchvision v2), applied per image in the workers, each image's
  draws seeded from the run's augmentation generator (so a seed repeats whatever the number of workers).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltbench.data.augment import augment_views, normalise_uint8, random_crop_flip
from ltbench.errors import DataNotFoundError

TRANSFORMS = ("pad-crop-flip", "imagenet")


@dataclass
class ImageFiles:
    """Image files on disk, one per example, in a split's order. ``transform`` names the augmentation (above);
    ``size`` is the side of the images the model sees (``imagenet``) and ``channels`` 1 or 3."""

    paths: Sequence[str]
    transform: str = "imagenet"
    size: int = 224
    channels: int = 3
    root: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"ImageFiles.transform must be one of {', '.join(TRANSFORMS)}, got {self.transform!r}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the images the model sees: ``size`` square (``imagenet``), else the files' own size."""
        return (self.size, self.size) if self.transform == "imagenet" else tuple(self.info["image_hw"])

    def path(self, i: int) -> Path:
        return Path(self.root) / self.paths[i] if self.root else Path(self.paths[i])

    def decode(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 (H, W, C)."""
        from PIL import Image

        path = self.path(i)
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise DataNotFoundError(f"{path} is not a readable image ({type(exc).__name__}: {exc})") from exc
        return arr[:, :, None] if arr.ndim == 2 else arr


# ---------------------------------------------------------------------------------------------------------------
# content digests: what the data's content fingerprint (``LTData.content_fingerprint``) knows of images on disk
#
# Each file's bytes are hashed once: the digest is cached with the file's size and modification time, in a file
# beside the data (:data:`DIGEST_CACHE` at the split's root), and a file is hashed again only when its size or
# modification time (ns) changed. Where the root cannot be written (or files are given without a root), the cache
# goes to the user's cache directory instead (:func:`user_digest_cache`).

#: the cache of a root's file digests, kept at the root: ``{"version": 1, "files": {path: [size, mtime_ns,
#: sha256]}}`` with each path as the split names it (relative to the root)
DIGEST_CACHE = ".ltbench-file-sha256.json"
#: a directory for the digest caches of roots that cannot be written (default: ``$XDG_CACHE_HOME/ltbench/file-sha256``,
#: else ``~/.cache/ltbench/file-sha256``)
DIGEST_CACHE_ENV = "LTBENCH_DIGEST_CACHE"
#: while files are hashed, a progress line on stderr every this many seconds, when at least PROGRESS_MIN_FILES are
PROGRESS_EVERY_S = 5.0
PROGRESS_MIN_FILES = 1000
#: a file modified less than this long (ns) before it is hashed is not cached: it could be written again within
#: the same timestamp (file systems keep modification times to a clock tick), at the same size
SETTLED_NS = 2 * 10**9
_CACHE_VERSION = 1
#: the largest digest cache read (about 120 bytes a file: iNaturalist's 462,000 images take 55 MB)
_MAX_CACHE_BYTES = 2**30


def user_digest_cache(root: str) -> Path:
    """Where the digests of the files under ``root`` are cached when ``root`` cannot be written, and those of files
    given without a root (``root`` ""): one file per root under ``$LTBENCH_DIGEST_CACHE``, else
    ``$XDG_CACHE_HOME/ltbench/file-sha256``, else ``~/.cache/ltbench/file-sha256``."""
    base = os.environ.get(DIGEST_CACHE_ENV) or (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ltbench" / "file-sha256")
    where = os.path.abspath(root) if root else "(no root)"
    return Path(base).expanduser() / f"{hashlib.sha256(where.encode()).hexdigest()[:16]}.json"


def sha256_file(path: str | Path) -> str:
    """The sha256 of the bytes of the file ``path``, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _is_entry(entry: Any) -> bool:
    """``[size, mtime_ns, sha256 hex]``"""
    return (isinstance(entry, list) and len(entry) == 3 and all(type(v) is int for v in entry[:2])
            and isinstance(entry[2], str) and len(entry[2]) == 64)


def _read_digest_cache(path: Path) -> dict[str, Any]:
    """The entries of the digest cache at ``path``: {} when there is none or it is not one. Read as any file
    others may have put there (a regular file of bounded size, never a link or a FIFO); an entry of another shape
    is never used (:func:`_is_entry`: its file is hashed again)."""
    from ltbench.results.safe_files import Unreadable, read_json

    if not os.path.lexists(path):
        return {}
    try:
        data = read_json(path, limit=_MAX_CACHE_BYTES, max_depth=4)
    except Unreadable:
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("version") == _CACHE_VERSION else None
    return files if isinstance(files, dict) else {}


def _write_digest_cache(root: str, entries: dict[str, list]) -> Path | None:
    """Write ``entries`` atomically beside the data at ``root``, else (a root that cannot be written, or none) in
    the user's cache directory; the file written, or None where neither could be (the digests are then computed
    again next time)."""
    import json

    from ltbench.results.records import atomic_write_bytes

    data = json.dumps({"version": _CACHE_VERSION, "files": entries}, separators=(",", ":")).encode()
    for path in ([Path(root) / DIGEST_CACHE] if root else []) + [user_digest_cache(root)]:
        try:
            atomic_write_bytes(path, data)
            return path
        except OSError:
            continue
    return None


def _unreadable(path: str, exc: OSError) -> DataNotFoundError:
    return DataNotFoundError(f"{path} cannot be read to fingerprint the data ({exc.strerror or type(exc).__name__})")


def file_digests(splits: Sequence[ImageFiles]) -> list[list[str]]:
    """The sha256 of each image file of each of ``splits``, in their order, from the bytes on disk.

    A file is hashed once: its digest is cached with its size and modification time (see :data:`DIGEST_CACHE`;
    not for a file modified in the last :data:`SETTLED_NS`), and it is hashed again when either changed. A file
    rewritten to the same size with its modification time set back is not noticed: delete the cache
    (``.ltbench-file-sha256.json`` at the root) to hash every file again. Hashing many files prints a progress
    line on stderr every few seconds."""
    by_root: dict[str, list[ImageFiles]] = {}
    for files in splits:
        by_root.setdefault(files.root, []).append(files)
    digests: dict[int, list[str]] = {}
    for root, group in by_root.items():
        cached = _read_digest_cache(Path(root) / DIGEST_CACHE) if root else {}
        cached.update(_read_digest_cache(user_digest_cache(root)))  # written only where the root could not be
        todo: list[tuple[list[str], int, str, str, os.stat_result]] = []
        for files in group:
            if id(files) in digests:  # (one split given twice)
                continue
            found = digests[id(files)] = []
            for i, rel in enumerate(map(str, files.paths)):  # (strings: pathlib would double the time of a load)
                # the cache names a file by its path relative to the root, or by its absolute path without one
                path, key = (os.path.join(root, rel), rel) if root else (rel, os.path.abspath(rel))
                try:
                    st = os.stat(path)
                except OSError as exc:
                    raise _unreadable(path, exc) from None
                entry = cached.get(key)
                if _is_entry(entry) and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
                    found.append(entry[2])
                else:
                    found.append("")
                    todo.append((found, i, path, key, st))
        if not todo:
            continue
        progress, added = _Progress(len(todo), root or "(files without a root)"), 0
        for n, (found, i, path, key, st) in enumerate(todo, 1):
            try:
                found[i] = digest = sha256_file(path)
            except OSError as exc:
                raise _unreadable(path, exc) from None
            if time.time_ns() - st.st_mtime_ns >= SETTLED_NS:
                cached[key] = [st.st_size, st.st_mtime_ns, digest]
                added += 1
            progress.update(n)
        written = _write_digest_cache(root, cached) if added else None
        progress.done(f"digests cached in {written}" if written else "the digests could not be cached anywhere"
                      if added else "none cached: the files were modified just now")
    return [digests[id(files)] for files in splits]


class _Progress:
    """Progress lines on stderr while ``total`` files under ``where`` are hashed (only when there are many)."""

    def __init__(self, total: int, where: str) -> None:
        self.total, self.where, self.shown = total, where, total >= PROGRESS_MIN_FILES
        self.start = self.last = time.perf_counter()
        if self.shown:
            self._say(f"hashing {total:,} image files under {self.where} (once: their digests are cached)")

    @staticmethod
    def _say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        now = time.perf_counter()
        if self.shown and now - self.last >= PROGRESS_EVERY_S and n < self.total:
            self.last = now
            self._say(f"hashing image files: {n:,} of {self.total:,} ({n / (now - self.start):,.0f} files/s)")

    def done(self, kept: str) -> None:
        if self.shown:
            self._say(f"hashed {self.total:,} image files in {time.perf_counter() - self.start:.1f}s; {kept}")


SKIP = -1  # an item index that stands for a row this process does not need (torchrun: another rank's)


def _skip_others(chunk: list, local: slice | None) -> list:
    """``chunk`` with the items outside ``local`` (this rank's rows) replaced by :data:`SKIP` items."""
    if local is None:
        return chunk
    keep = range(len(chunk))[local]
    return [item if k in keep else ((SKIP, 0, False) if isinstance(item, tuple) else SKIP)
            for k, item in enumerate(chunk)]


def _skip_others_per_view(items: list, views: int, local: slice | None) -> list:
    """:func:`_skip_others` on each view's part of a view-by-view list of items."""
    if local is None or views <= 1:
        return _skip_others(items, local)
    n = len(items) // views
    return [item for v in range(views) for item in _skip_others(items[v * n : (v + 1) * n], local)]


class _Decoded(torch.utils.data.Dataset):
    """Worker-side: image ``i`` as a uint8 (C, H, W) tensor, untransformed (``pad-crop-flip``) or transformed
    with its own seed (``imagenet``: ``(i, seed, train)`` items)."""

    def __init__(self, files: ImageFiles):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item) -> torch.Tensor:
        if isinstance(item, tuple):
            i, seed, train = item
        else:
            i, seed, train = item, 0, False
        if i == SKIP:  # another rank's row of the global batch: a stand-in, never decoded (see FileImageStore)
            return torch.zeros(self.files.channels, *self.files.image_hw, dtype=torch.uint8)
        x = torch.from_numpy(np.array(self.files.decode(int(i)), copy=True)).permute(2, 0, 1)
        if self.files.transform == "pad-crop-flip":
            return x
        return _imagenet_transform(x, self.files.size, train, int(seed))


def _imagenet_transform(x: torch.Tensor, size: int, train: bool, seed: int) -> torch.Tensor:
    from torchvision.transforms import v2

    if train:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])(x)
    return v2.Compose([v2.Resize(round(size * 256 / 224), antialias=True), v2.CenterCrop(size)])(x)


class _Chunks(torch.utils.data.Sampler):
    """A batch sampler over fixed chunks of indices (or of ``(index, seed, train)`` items)."""

    def __init__(self, chunks: list[list]):
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def __len__(self) -> int:
        return len(self.chunks)


def _collate(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(items)


class FileImageStore:
    """The streaming counterpart of :class:`ltbench.data.stores.ImageStore` (same ``get`` / ``eval_batches``).

    ``workers`` DataLoader processes decode ahead: :meth:`prefetch` is given an epoch's order and batch size,
    and :meth:`get` then takes the decoded batches in that order. A ``get`` for indices that were not
    prefetched decodes them in the calling process."""

    def __init__(self, files: ImageFiles, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 padding: int = 4, flip: bool = True, workers: int = 0, channels_last: bool = False):
        self.files, self.device, self.workers = files, device, workers
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.padding, self.flip, self.channels_last = padding, flip, channels_last
        self._ahead: Iterator[torch.Tensor] | None = None
        self._expected: list[list[int]] = []

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the images the model sees."""
        return self.files.image_hw

    def _loader(self, chunks: list[list]) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(_Decoded(self.files), batch_sampler=_Chunks(chunks),
                                           num_workers=self.workers, collate_fn=_collate,
                                           persistent_workers=False, prefetch_factor=4 if self.workers else None)

    def normalise_uint8(self, x: torch.Tensor) -> torch.Tensor:
        return normalise_uint8(x.to(self.device, non_blocking=True), self.mean, self.std, self.channels_last)

    def _seeds(self, n: int, generator: torch.Generator | None) -> list[int]:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        return torch.randint(2**62, (n,), generator=generator, device=gen_device).tolist()

    def prefetch(self, order: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
                 local_rows: Callable[[int], slice] | None = None, views: int = 1) -> None:
        """Start decoding an epoch's training batches (``order`` in chunks of ``batch_size``) in the workers.
        (For ``imagenet`` the per-image seeds are drawn now, from ``generator``, in batch order.)

        ``local_rows`` (torchrun with sharded batches: :func:`ltbench.training.distributed.shard_rows`) names the rows of
        each batch this rank trains on; the others are not decoded (zeros stand in; the step loop drops them).
        Every rank still draws the whole batch's augmentation, so its rows get the draws one process would.

        ``views`` k > 1 (``ltbench_train_views``): ``pad-crop-flip`` images are decoded once and cropped k times in
        :meth:`get`; ``imagenet`` images are decoded and transformed k times here, view by view, each draw seeded."""
        chunks = [order[s : s + batch_size].tolist() for s in range(0, len(order), batch_size)]
        self._expected = list(chunks)  # (a copy: the loader iterates its own)
        local = (lambda chunk: local_rows(len(chunk))) if local_rows else (lambda chunk: None)
        if self.files.transform == "imagenet":
            seeds = self._seeds(len(order) * views, generator)
            items = [_skip_others_per_view([(i, seeds[s * views + k], True) for k, i in enumerate(chunk * views)],
                                           views, local(chunk))
                     for s, chunk in zip(range(0, len(order), batch_size), chunks)]
        else:
            items = [_skip_others(chunk, local(chunk)) for chunk in chunks]
        self._ahead = iter(self._loader(items))

    def _take(self, idx: list[int]) -> torch.Tensor | None:
        """The next prefetched batch when ``idx`` is it; None otherwise (a method's own ``get``), which leaves
        the read-ahead for the step loop's next batch."""
        if self._ahead is not None and self._expected and self._expected[0] == idx:
            self._expected.pop(0)
            return next(self._ahead)
        return None

    def get(self, idx: torch.Tensor, augment: bool, generator: torch.Generator | None = None,
            local: slice | None = None, views: int = 1) -> torch.Tensor:
        """Images ``idx``, normalised (augmented when ``augment``; ``views=k``: k draws, view by view); only the
        rows ``local`` are decoded when given (the others are zeros; see :meth:`prefetch`)."""
        wanted = idx.tolist()
        x = self._take(wanted) if augment else None
        imagenet = self.files.transform == "imagenet"
        decoded_views = views if augment and imagenet else 1  # imagenet draws its augmentation while decoding
        if x is None:  # not prefetched: decode here
            if imagenet:
                n = len(wanted) * decoded_views
                seeds = self._seeds(n, generator) if augment else [0] * n
                items = _skip_others_per_view([(i, s, augment) for i, s in zip(wanted * decoded_views, seeds)],
                                              decoded_views, local)
            else:
                items = _skip_others(wanted, local)
            x = _collate([_Decoded(self.files)[item] for item in items])
        if imagenet and decoded_views == views:  # every view is decoded (augmented there, or one plain view)
            return self.normalise_uint8(x)
        crop = (lambda v: random_crop_flip(v, self.padding, self.flip, generator)) if augment and not imagenet else None
        return self.normalise_uint8(augment_views(x.to(self.device), views, crop))

    def eval_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """The split in order, un-augmented and normalised, ``batch_size`` images at a time."""
        n = len(self.files)
        if self.files.transform == "imagenet":
            chunks = [[(i, 0, False) for i in range(s, min(s + batch_size, n))] for s in range(0, n, batch_size)]
        else:
            chunks = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
        for x in self._loader(chunks):
            yield self.normalise_uint8(x)
