"""ltbench's training and evaluation throughput against the bare model, measured side by side in one process.

    python ci/bench_throughput.py [--dataset cifar100-lt --data-root ../shared/data] [--backbone resnet8,resnet32]
                                  [--method ce] [--batch-size 128] [--steps 10] [--rounds 12] [--device auto]

Training: ltbench's own step loop (:func:`ltbench.training.loop.run_steps`: sampler order, batch assembly and
augmentation from the uint8 store, the method's hooks, loss, backward, SGD) against the bare model (forward +
cross-entropy + backward + SGD on one pre-made, normalised batch). Evaluation: :func:`ltbench.training.evaluate.evaluate`
on the test set against a bare ``no_grad`` forward over pre-made batches. The two alternate in rounds, so that
the load of a shared machine hits both alike. The ratio (ltbench img/s / bare img/s) is the median over
rounds, so that a burst of load on one round does not decide it; it is what to read, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench_steps import ltbench_stepper
from ltbench.grid.plan import resolve_device
from ltbench.plugins.catalog import get_catalog
from ltbench.training.evaluate import evaluate
from ltbench.training.model import LTModel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def bench(backbone: str, args: argparse.Namespace, device: torch.device) -> None:
    catalog = get_catalog()
    settings = {"backbone": backbone, "batch_size": str(args.batch_size), **dict(s.split("=", 1) for s in args.set)}
    cell, run, ltbench_steps = ltbench_stepper(args.method, args.dataset, args.budget, settings, args.data_root,
                                               device, args.steps)
    cfg = cell.config
    bs, n = args.batch_size, args.steps
    rng = torch.Generator().manual_seed(0)

    # the bare model: same architecture, one pre-made batch already normalised on the device
    bare = LTModel(catalog.backbone(backbone).build(cell.data.channels), torch.nn.Linear(1, 1))
    bare.classifier = torch.nn.Linear(bare.num_features, cell.data.num_classes)
    bare.to(device).train()
    if cfg.get("channels_last"):
        bare.to(memory_format=torch.channels_last)
    bare_opt = torch.optim.SGD(bare.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                               weight_decay=cfg["weight_decay"])
    idx = torch.randperm(len(run.train_labels), generator=rng)[:bs]
    x_bare = run.train_images.get(idx, augment=False).clone()
    y_bare = torch.as_tensor(run.train_labels[idx.numpy()], device=device)

    def bare_steps() -> None:
        for _ in range(n):
            loss = F.cross_entropy(bare(x_bare), y_bare)
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()

    x_test, y_test = cell.data.x_test, cell.data.y_test
    eval_bs = cfg["eval_batch_size"]
    bare_test = [run.train_images.normalise_uint8(torch.from_numpy(x_test[i : i + eval_bs]).permute(0, 3, 1, 2).contiguous().to(device))
                 for i in range(0, len(x_test), eval_bs)]

    @torch.no_grad()
    def bare_eval() -> None:
        bare.eval()
        preds = [bare(x).argmax(1) for x in bare_test]
        torch.cat(preds).cpu()
        bare.train()

    def ltbench_eval() -> None:
        run.stage, run.epoch = 0, 0
        evaluate(run, x_test, y_test)

    run.model.train()
    bare_steps(), ltbench_steps(), bare_eval(), ltbench_eval()  # warm-up: allocator, lazy initialisation
    times = {"ltbench": [], "bare": [], "ltbench_eval": [], "bare_eval": []}
    for r in range(args.rounds):
        pairs = [("ltbench", ltbench_steps), ("bare", bare_steps)]
        for name, fn in pairs if r % 2 == 0 else pairs[::-1]:
            times[name].append(_timed(device, fn))
        run.model.train()
        pairs = [("ltbench_eval", ltbench_eval), ("bare_eval", bare_eval)]
        for name, fn in pairs if r % 2 == 0 else pairs[::-1]:
            times[name].append(_timed(device, fn))
    train_imgs, eval_imgs = n * bs, len(x_test)
    lt, b = train_imgs * args.rounds / sum(times["ltbench"]), train_imgs * args.rounds / sum(times["bare"])
    le, be = eval_imgs * args.rounds / sum(times["ltbench_eval"]), eval_imgs * args.rounds / sum(times["bare_eval"])
    for what, imgs_ps, bare_ps, key in (("train", lt, b, ""), ("eval:", le, be, "_eval")):
        per_round = np.array(times["bare" + key]) / np.array(times["ltbench" + key])
        print(f"{backbone:10s} {what:6s} ltbench {imgs_ps:7.0f} img/s  bare {bare_ps:7.0f} img/s  "
              f"ratio {np.median(per_round):.3f} (median of {len(per_round)} rounds; range "
              f"{per_round.min():.2f}-{per_round.max():.2f}; pooled {imgs_ps / bare_ps:.3f})")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist-lt")
    parser.add_argument("--data-root")
    parser.add_argument("--budget", default="cpu")
    parser.add_argument("--backbone", default="resnet8,resnet32", help="comma-separated")
    parser.add_argument("--method", default="ce")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
    print(f"device {name}, {torch.get_num_threads()} threads, dataset {args.dataset}, method {args.method}, "
          f"batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, interleaved")
    for backbone in args.backbone.split(","):
        bench(backbone, args, device)


if __name__ == "__main__":
    main()
