"""The training and evaluation image stores: in memory (uint8 on the device) or streaming (image files).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ltbench.data.augment import augment_views, normalise_uint8, random_crop_flip
from ltbench.data.split import DatasetSpec, LTData


class ImageStore:
    """uint8 images held on the training device; augmentation is batched there.

    A batch is gathered, cropped and flipped in uint8 and converted to float once, at the size the model sees.
    """

    def __init__(self, images: np.ndarray, spec: DatasetSpec, data: LTData, device: torch.device,
                 channels_last: bool = False):
        self.x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
        self.padding, self.flip = spec.crop_padding, spec.flip
        self.channels_last = channels_last

    def __len__(self) -> int:
        return len(self.x)

    @property
    def image_hw(self) -> tuple[int, int]:
        """(H, W) of the images the model sees."""
        return tuple(self.x.shape[2:4])

    def normalise_uint8(self, x: torch.Tensor) -> torch.Tensor:
        return normalise_uint8(x, self.mean, self.std, self.channels_last)

    def eval_batches(self, batch_size: int):
        """The split in order, un-augmented and normalised, ``batch_size`` images at a time."""
        for start in range(0, len(self.x), batch_size):
            yield self.normalise_uint8(self.x[start : start + batch_size])

    def prefetch(self, order: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
                 local_rows: Callable[[int], slice] | None = None, views: int = 1) -> None:
        """Nothing to do: the images are in memory (the streaming store decodes ahead here)."""

    def get(self, idx: torch.Tensor, augment: bool, generator: torch.Generator | None = None,
            local: slice | None = None, views: int = 1) -> torch.Tensor:
        """Images ``idx``, normalised (augmented when ``augment``); with ``views=k``, k independent augmentations
        of them, view by view (``k * len(idx)`` rows). ``local`` (a rank's rows, which the streaming store alone
        decodes) changes nothing here: every row is already in memory."""
        x = self.x[idx.to(self.x.device, non_blocking=True)]
        crop = (lambda v: random_crop_flip(v, self.padding, self.flip, generator)) if augment else None
        return self.normalise_uint8(augment_views(x, views, crop))


def make_store(images, spec: DatasetSpec, data: LTData, device: torch.device, config: dict[str, Any]):
    """The store for one split: in memory (uint8 arrays) or streaming (:class:`ltbench.data.imagefiles.ImageFiles`)."""
    from ltbench.data.imagefiles import FileImageStore, ImageFiles

    channels_last = config.get("channels_last", False)
    if isinstance(images, ImageFiles):
        if config.get("image_size") and images.transform == "imagenet":
            images = dataclasses.replace(images, size=int(config["image_size"]))
        return FileImageStore(images, data.mean, data.std, device, images.info.get("crop_padding", spec.crop_padding),
                              images.info.get("flip", spec.flip),
                              workers=config.get("workers", 0), channels_last=channels_last)
    return ImageStore(images, spec, data, device, channels_last)
