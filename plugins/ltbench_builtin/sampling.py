"""Re-sampling schedules from Kang et al. (ICLR 2020): ``sqrt-sampling`` and
``progressive-sampling``. (``cb-sampling`` lives in its own module.)

With q in [0, 1], class j is drawn with probability n_j^q / sum_i n_i^q:
q = 1 is instance-balanced, q = 0 class-balanced, q = 1/2 square-root.
Progressive sampling moves linearly from instance- to class-balanced over
the epochs: p_j(t) = (1 - t/T) p_j^IB + (t/T) p_j^CB.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler

from ltbench.api import ConfigError, Method, MethodMetadata, class_share_sampler, hookimpl

_KANG = "Kang et al., Decoupling Representation and Classifier for Long-Tailed Recognition"
_KANG_CODE = "https://github.com/facebookresearch/classifier-balancing"


def power_shares(counts: np.ndarray, q: float) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    shares = np.where(counts > 0, counts**q, 0.0)
    return shares / shares.sum()


PROGRESS_RULES = ("e/(E-1)", "e/E")


def progressive_shares(counts: np.ndarray, epoch: int, epochs: int, rule: str = "e/(E-1)") -> np.ndarray:
    """The class shares of 0-based ``epoch`` of ``epochs``: t = e/(E-1) (the Decoupling code: the last epoch is
    class-balanced) or e/E (never quite class-balanced)."""
    t = epoch / max(epochs - 1, 1) if rule == "e/(E-1)" else epoch / epochs
    return (1 - t) * power_shares(counts, 1.0) + t * power_shares(counts, 0.0)


class ProgressiveSampler(Sampler):
    """Draws with the class shares of the run's current epoch each time it is iterated."""

    def __init__(self, run, labels: np.ndarray, rule: str = "e/(E-1)"):
        self.run, self.labels, self.rule = run, np.asarray(labels), rule
        self.counts = np.bincount(self.labels, minlength=run.num_classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        shares = progressive_shares(self.counts, self.run.epoch, self.run.config["epochs"], self.rule)
        return iter(class_share_sampler(self.labels, shares, self.run.generator))


class SqrtSampling(Method):
    name = "sqrt-sampling"
    metadata = MethodMetadata(
        family="re-sampling",
        title="Square-root sampling", paper=_KANG, venue="ICLR", year=2020, code_url=_KANG_CODE,
        summary="Class j drawn with probability proportional to sqrt(n_j); plain cross-entropy.",
    )

    @hookimpl
    def ltbench_build_sampler(self, run, stage, labels):
        if stage != 1:
            return None
        counts = np.bincount(labels, minlength=run.num_classes)
        return class_share_sampler(labels, power_shares(counts, 0.5), run.generator)


class ProgressiveSampling(Method):
    name = "progressive-sampling"
    options = {"progress": "e/(E-1)"}
    metadata = MethodMetadata(
        family="re-sampling",
        title="Progressively-balanced sampling", paper=_KANG, venue="ICLR", year=2020, code_url=_KANG_CODE,
        summary="Class shares interpolate linearly from instance-balanced (first epoch) to class-balanced "
        "(last epoch) with t = e/(E-1), e the 0-based epoch of E, as the Decoupling code.",
        interpretations=("progress=e/E is the earlier ltbench rule, which never reaches class-balanced.",),
    )

    def check_options(self):
        if self.opts["progress"] not in PROGRESS_RULES:
            raise ConfigError(f"progressive-sampling.progress must be one of {', '.join(PROGRESS_RULES)}, got "
                              f"{self.opts['progress']!r}")

    @hookimpl
    def ltbench_build_sampler(self, run, stage, labels):
        return ProgressiveSampler(run, labels, self.opts["progress"]) if stage == 1 else None


@hookimpl
def ltbench_register_methods(register):
    register(SqrtSampling)
    register(ProgressiveSampling)



