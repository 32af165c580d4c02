"""Training-image augmentation shared by both stores: the batched pad-crop-flip and the uint8 normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn



def normalise_uint8(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, C, H, W) to normalised float: ``(x / 255 - mean) / std``, in place on one new tensor (both
    stores, in memory and streaming, normalise through this).

    The new tensor has standard strides: a cropped single-channel batch can carry strides that also read
    as channels-last, and convolution backends pick their algorithm (and their rounding) by layout."""
    x = x.to(torch.float32, memory_format=torch.contiguous_format).div_(255).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per image, in one batched op.

    Works on any dtype (ltbench crops uint8). The offsets and flips are drawn from ``generator`` on its own
    device (the training device on a GPU, so nothing is copied from the host), in the order oy, ox, flip."""
    b, c, h, w = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if padding:
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gen_device).to(x.device)
        windows = nn.functional.pad(x, (padding, padding, padding, padding)).unfold(2, h, 1).unfold(3, w, 1)
        x = windows[torch.arange(b, device=x.device), :, oy, ox]  # (B, C, H, W): one window per image
    if flip:
        mask = (torch.rand(b, generator=generator, device=gen_device) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def augment_views(x: torch.Tensor, views: int,
                  augment: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """``views`` views of the batch ``x``, view by view: ``augment(x)`` drawn anew for each, or (``augment``
    None) ``x`` itself repeated. One view is ``augment(x)`` (or ``x``) as it is."""
    if augment is None:
        return x if views == 1 else torch.cat([x] * views)
    return augment(x) if views == 1 else torch.cat([augment(x) for _ in range(views)])
