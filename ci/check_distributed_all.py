"""Run the kit's ``check_distributed`` (one process against two gloo ranks) for every built-in method and print a
line each: ``PASS``/``FAIL`` with the largest loss difference. About 36 s a method on 2 busy CPU cores (20 minutes
for every built-in), so the suite runs it for every built-in only when asked (``LTBENCH_EXHAUSTIVE=1 pytest
tests/test_distributed_methods.py``); by default it checks the methods that draw or append over the global batch.

``--float64`` runs everything in float64 (a diagnostic: every module, tensor and loss made double, also in the
spawned ranks): where float32 differs only by rounding that training amplifies (ride, bcl, paco at the smoke
budget, as far apart as one process with 1 and 2 threads), float64 matches to about 1e-13; a real per-rank
computation stays apart.

    python ci/check_distributed_all.py [--float64] [METHOD ...]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

#: settings a method needs at the smoke budget (SAFA inserts itself after a ResNet stage)
SETTINGS = {"safa": {"backbone": "resnet8"}}


def use_float64() -> None:
    """Make ltbench runs compute in float64, in this process and (through the environment) in spawned ranks."""
    import torch

    import ltbench.data.stores as stores
    import ltbench.grid.runner as runner
    import ltbench.training.loop as loop
    import ltbench.training.run as run_mod

    torch.set_default_dtype(torch.float64)
    torch.Tensor.float = lambda self, *a, **k: self.double()
    normalise = stores.normalise_uint8
    stores.normalise_uint8 = lambda *a, **k: normalise(*a, **k).double()
    build, prepare, build_loss = run_mod.build_run, loop.prepare_stage2, loop.build_loss

    def build_run(*a, **k):
        run = build(*a, **k)
        run.model.double()
        return run

    def prepare_stage2(run, plan):
        prepare(run, plan)
        run.model.double()
        if run.train_features is not None:
            run.train_features = run.train_features.double()

    def doubled_loss(run, stage):
        fn = build_loss(run, stage)
        for method in run.methods:  # a method's own float32 tensors (priors, weights)
            for key, value in list(vars(method).items()):
                if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                    setattr(method, key, value.double())
        return fn

    run_mod.build_run = runner.build_run = build_run
    loop.prepare_stage2 = runner.prepare_stage2 = prepare_stage2
    loop.build_loss = doubled_loss


if os.environ.get("LTBENCH_FLOAT64") == "1":  # (set by --float64; the spawned ranks import this module)
    use_float64()


def main(argv: list[str]) -> int:
    from ltbench.api import build_catalog, check_distributed

    names = [a for a in argv if not a.startswith("--")]
    catalog = build_catalog()
    names = names or sorted(n for n, e in catalog.methods.items() if e.plugin.distribution == "ltbench")
    failed = 0
    for name in names:
        with tempfile.TemporaryDirectory() as out:
            try:
                check_distributed(catalog.method(name).cls, Path(out), settings=SETTINGS.get(name))
                print(f"{name:24s} PASS", flush=True)
            except AssertionError as exc:
                failed += 1
                print(f"{name:24s} FAIL {str(exc).splitlines()[0]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    if "--float64" in sys.argv[1:]:
        os.environ["LTBENCH_FLOAT64"] = "1"
        use_float64()
    sys.exit(main(sys.argv[1:]))
