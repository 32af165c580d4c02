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
