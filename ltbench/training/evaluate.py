"""Evaluation: prediction through the methods' evaluation hooks, per-split results, feature extraction
and the model's cost (parameters, multiply-accumulates per image).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ltbench.results.metrics import EvalResult, evaluate_predictions
from ltbench.training.hooks import _expect
from ltbench.training.progress import Heartbeat

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ltbench.training.run import Run


class _TensorsRead(TorchDispatchMode):
    """Records the storage of every tensor an operation reads while active."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        for value in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(value, torch.Tensor) and value.numel():
                self.storages.add(value.untyped_storage().data_ptr())
        return func(*args, **(kwargs or {}))


def model_cost(run: Run) -> dict[str, Any]:
    """What the trained model costs at inference: ``parameters``, every learned number its evaluation path reads
    (the parameters of the backbone, the classifier and the heads a method evaluates with, e.g. RIDE's experts,
    and the floating-point buffers that stand in for parameters, e.g. tau-norm's weights and NCM's class means;
    batch-norm running statistics are not counted, nor modules and buffers only training uses, e.g. SAFA's
    feature generator, BCL's and PaCo's projection heads), and ``inference_macs_per_image``, the
    multiply-accumulates of classifying one image along the method's own evaluation path
    (:func:`predict_logits`), counted by ``torch.utils.flop_counter`` (two FLOPs per multiply-accumulate of a
    convolution or matrix product; element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    images = run.data.x_val if len(run.data.x_val) else run.data.x_train
    # one image: an array's first row, or (streaming) the image files' first path
    images = dataclasses.replace(images, paths=list(images.paths[:1])) if hasattr(images, "paths") else images[:1]
    with FlopCounterMode(display=False) as counter, _TensorsRead() as read:
        predict_logits(run, images)
    learned = list(run.model.parameters()) + [b for name, b in run.model.named_buffers()
                                               if b.is_floating_point()
                                               and not name.endswith(("running_mean", "running_var"))]
    used = [t for t in learned if t.numel() and t.untyped_storage().data_ptr() in read.storages]
    return {"parameters": int(sum(t.numel() for t in used)),
            "inference_macs_per_image": int(counter.get_total_flops() // 2), "counted_by": "torch.utils.flop_counter"}


@torch.no_grad()
def predict_logits(run: Run, images: np.ndarray) -> torch.Tensor:
    model = run.model
    was_training = model.training
    model.eval()
    store = run.image_store(images) if len(images) else None
    out = []
    bs = run.config["eval_batch_size"]
    beat = Heartbeat(run, "predicting, images", len(images))
    combine = bool(run.pm.hook.ltbench_eval_logits.get_hookimpls())
    batches = store.eval_batches(bs) if store is not None else []
    for start, x in zip(range(0, len(images), bs), batches):
        beat(start)
        with _autocast(run.device):
            if combine:  # a method defines the evaluation logits from all heads and features
                output = model.forward_all(x)
                logits = run.pm.hook.ltbench_eval_logits(run=run, model=model, output=output)
                logits = output.logits if logits is None else logits
                shape = (len(x), run.num_classes)
                _expect(run, "ltbench_eval_logits", logits,
                        lambda v: isinstance(v, torch.Tensor) and tuple(v.shape) == shape, f"a tensor of shape {shape}")
                logits = logits.float()
            else:
                logits = model(x).float()
        adjusted = run.pm.hook.ltbench_adjust_logits(run=run, logits=logits)
        if adjusted is not None:
            _expect(run, "ltbench_adjust_logits", adjusted,
                    lambda v: isinstance(v, torch.Tensor) and v.shape == logits.shape, f"a tensor of shape {tuple(logits.shape)}")
            logits = adjusted
        out.append(logits)
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, run.num_classes, device=run.device)


def evaluate(run: Run, images: np.ndarray, labels: np.ndarray) -> EvalResult:
    logits = predict_logits(run, images)
    top = logits.argmax(1)
    probs = torch.softmax(logits.float(), dim=1)
    rows = torch.arange(len(top), device=probs.device)
    on_device = torch.as_tensor(np.asarray(labels), device=probs.device, dtype=torch.long)
    preds, confidence, true_p = (t.cpu().numpy() for t in (top, probs[rows, top], probs[rows, on_device]))
    result = evaluate_predictions(labels, preds, run.train_counts, run.data.group_thresholds)
    result.predictions, result.confidence, result.true_probability = preds, confidence, true_p
    return result


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def extract_features(run: Run, images: np.ndarray | None = None) -> torch.Tensor:
    """Pooled features in eval mode without augmentation: of the training images, or of ``images``."""
    store = run.train_images if images is None else run.image_store(images)
    was_training = run.model.training
    run.model.eval()
    out = []
    bs = run.config["eval_batch_size"]
    for x in store.eval_batches(bs):
        with _autocast(run.device):
            out.append(run.model.features(x).float())
    run.model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, run.model.num_features, device=run.device)
