"""Cost of the paper methods against the run they extend, measured side by side in one process.

    python ci/bench_overheads.py [--dataset fashion-mnist-lt] [--budget cpu] [--data-root DIR] [--epochs N]

Prints wall-time ratios (and SAFA's activation-memory ratio); the paper claims are:
BLT x2.2 on ImageNet-LT (beat it), Breadcrumb "no extra computation" (a few percent).
Each pair runs interleaved in one process on the same machine, so the ratios are
comparable even on a noisy, shared machine; absolute times are not.
"""

import argparse
import tempfile
from pathlib import Path

import torch

from ltbench.grid.plan import plan_grid
from ltbench.grid.runner import execute
from ltbench.plugins.catalog import get_catalog


def run(methods, args, out, settings=None):
    cells = plan_grid(methods, [args.dataset], [0], args.budget, settings=settings, epochs=args.epochs,
                      data_root=args.data_root)
    return {c.method: execute(c, out, torch.device("cpu"), rerun=True, log=lambda m: None) for c in cells}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist-lt")
    parser.add_argument("--budget", default="cpu")
    parser.add_argument("--data-root")
    parser.add_argument("--epochs", type=int)
    args = parser.parse_args()
    get_catalog()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run(["ce"], args, tmp / "warm-up")  # first-run costs (allocator, lazy imports) land here
        plain = run(["ce", "crt", "breadcrumb", "blt"], args, tmp / "a")
        no_halluc = run(["blt"], args, tmp / "b", {"blt.hallucinate": "false"})["blt"]
        safa = run(["safa"], args, tmp / "c")["safa"]

    def stage(rec, name):
        return rec["stage_wall_time_s"].get(name, 0.0)

    ce, crt, bc, blt = plain["ce"], plain["crt"], plain["breadcrumb"], plain["blt"]
    print(f"dataset {args.dataset}, budget {args.budget}, epochs {ce['config']['epochs']}")
    print(f"breadcrumb stage 1 / ce stage 1 (same backbone computation): "
          f"{stage(bc, 'stage1') / stage(ce, 'stage1'):.3f}")
    print(f"breadcrumb total / crt total (stage 1 + stage 2):            "
          f"{bc['wall_time_s'] / crt['wall_time_s']:.3f}")
    print(f"blt total / blt without hallucination (paper: x2.2):         "
          f"{blt['wall_time_s'] / no_halluc['wall_time_s']:.3f}")
    print(f"blt stage 2 / stage 2 without hallucination:                 "
          f"{stage(blt, 'stage2') / stage(no_halluc, 'stage2'):.3f}")
    extra = safa["extra"]["safa"]
    print(f"safa total / ce total:                                       {safa['wall_time_s'] / ce['wall_time_s']:.3f}")
    print(f"safa epoch time with generated samples / modules only:       {extra['epoch_time_ratio_vs_without']}")
    print(f"safa activation memory with / without (one batch):           {extra['activation_memory_ratio_vs_without']}")


if __name__ == "__main__":
    main()
