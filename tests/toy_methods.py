"""Small method plugins that exercise the hook contract in tests."""

import torch
import torch.nn.functional as F
from torch import nn

from ltbench import Method, MethodMetadata, hookimpl
from ltbench.data.samplers import class_balanced, instance_balanced
from ltbench.training.run import SecondStage

META = MethodMetadata(title="test method")


class SamplerA(Method):
    name = "sampler-a"
    metadata = META

    @hookimpl
    def ltbench_build_sampler(self, run, labels):
        return instance_balanced(labels, run.generator)


class SamplerB(SamplerA):
    name = "sampler-b"


class BadSampler(Method):
    name = "bad-sampler"
    metadata = META

    @hookimpl
    def ltbench_build_sampler(self):
        return 42


class VectorLoss(Method):
    name = "vector-loss"
    metadata = META

    @hookimpl
    def ltbench_build_loss(self):
        return lambda logits, targets: F.cross_entropy(logits, targets, reduction="none")


class NanAtEpoch2(Method):
    name = "nan-at-epoch-2"
    metadata = META

    @hookimpl
    def ltbench_extra_losses(self, run, output):
        if run.epoch == 1:
            return {"poison": output.logits.sum() * float("nan")}
        return None


class Counter(Method):
    """Counts its own hook calls on the instance: per-run state."""

    name = "counter"
    metadata = META
    options = {"scale": 1.0}
    calls: list = []  # class-level spy, shared on purpose

    def __init__(self, **options):
        super().__init__(**options)
        self.epochs_seen = 0

    @hookimpl
    def ltbench_epoch_start(self, run):
        self.epochs_seen += 1
        Counter.calls.append(run.seed)

    @hookimpl
    def ltbench_extra_losses(self, output):
        return {"zero": output.logits.sum() * 0.0 * self.opts["scale"]}

    @hookimpl
    def ltbench_record(self):
        return {"epochs_seen": self.epochs_seen}


class Interrupter(Method):
    """Raises KeyboardInterrupt after stage-1 epoch 2 while armed (once)."""

    name = "interrupter"
    metadata = META
    armed = False

    @hookimpl
    def ltbench_epoch_end(self, stage, epoch):
        if Interrupter.armed and stage == 1 and epoch == 1:
            Interrupter.armed = False
            raise KeyboardInterrupt


class ToyDecoupled(Method):
    """Re-initialised linear head retrained on cached features, class-balanced."""

    name = "toy-decoupled"
    metadata = META
    plain_stage1 = True

    @hookimpl
    def ltbench_second_stage(self):
        return SecondStage(epochs=2)

    @hookimpl
    def ltbench_build_classifier(self, in_features, num_classes, stage):
        return nn.Linear(in_features, num_classes) if stage == 2 else None

    @hookimpl
    def ltbench_build_sampler(self, run, stage, labels):
        return class_balanced(labels, run.generator) if stage == 2 else None


class ToyDecoupledTwin(ToyDecoupled):
    name = "toy-decoupled-twin"


class UsesValidation(Method):
    """Reads validation results at the end of every epoch."""

    name = "uses-validation"
    metadata = META

    def __init__(self, **options):
        super().__init__(**options)
        self.val_overall = []

    @hookimpl
    def ltbench_epoch_end(self, run):
        self.val_overall.append(run.validation().overall)

    @hookimpl
    def ltbench_record(self):
        return {"val_overall": self.val_overall}


class ShiftLogits(Method):
    """Post-hoc: adds a large bonus to class 0 at evaluation only."""

    name = "shift-logits"
    metadata = META

    @hookimpl
    def ltbench_adjust_logits(self, logits):
        bonus = torch.zeros_like(logits)
        bonus[:, 0] = 1e6
        return logits + bonus


ALL = [SamplerA, SamplerB, BadSampler, VectorLoss, NanAtEpoch2, Counter, Interrupter, ToyDecoupled, ToyDecoupledTwin,
       UsesValidation, ShiftLogits]


class PeeksAtTest(Method):
    """Tries to read the test split during training."""

    name = "peeks-at-test"
    metadata = META

    @hookimpl
    def ltbench_epoch_end(self, run):
        return len(run.data.y_test)


ALL.append(PeeksAtTest)


class ForwardCounter(Method):
    """Counts backbone forward passes made in training mode, per epoch."""

    name = "forward-counter"
    metadata = META

    def __init__(self, **options):
        super().__init__(**options)
        self.per_epoch = []
        self.current = 0

    @hookimpl
    def ltbench_configure_model(self, model):
        inner = model.backbone.forward_features

        def counted(x):
            if model.training:
                self.current += 1
            return inner(x)

        model.backbone.forward_features = counted

    @hookimpl
    def ltbench_epoch_end(self, stage):
        if stage == 1:
            self.per_epoch.append(self.current)
            self.current = 0

    @hookimpl
    def ltbench_record(self):
        return {"per_epoch": self.per_epoch}


ALL.append(ForwardCounter)


class RaisesInConfigure(Method):
    """A plugin bug while the run is built."""

    name = "raises-in-configure"
    metadata = META

    @hookimpl
    def ltbench_configure_model(self, model):
        raise RuntimeError("configure blew up")


class RaisesInRecord(Method):
    name = "raises-in-record"
    metadata = META

    @hookimpl
    def ltbench_record(self):
        raise KeyError("record blew up")


class NonJsonRecord(Method):
    name = "non-json-record"
    metadata = META

    @hookimpl
    def ltbench_record(self):
        return {"when": object()}


class ObjectState(Method):
    """Keeps an arbitrary object in its checkpoint state: refused when the checkpoint is written."""

    name = "object-state"
    metadata = META

    def state_dict(self):
        return {"thing": object()}


class SlowStage2(ToyDecoupled):
    """Stage 2 of 3 epochs, 0.2 s each; raises KeyboardInterrupt after stage-2 epoch 2 (before its checkpoint) while armed (once)."""

    name = "slow-stage2"
    armed = False

    @hookimpl
    def ltbench_second_stage(self):
        return SecondStage(epochs=3)

    @hookimpl
    def ltbench_epoch_start(self, stage):
        if stage == 2:
            import time

            time.sleep(0.2)

    @hookimpl
    def ltbench_epoch_end(self, stage, epoch):
        if SlowStage2.armed and stage == 2 and epoch == 1:
            SlowStage2.armed = False
            raise KeyboardInterrupt


class ExitsInEpochStart(Method):
    """A plugin that calls sys.exit inside a hook."""

    name = "exits-in-epoch-start"
    metadata = META

    @hookimpl
    def ltbench_epoch_start(self, run, stage, epoch):
        import sys

        sys.exit(3)


class RaisesOnRank1(Method):
    """Under torchrun, a hook that raises on rank 1 only, in stage-1 epoch 2 (mid-grid, between collectives)."""

    name = "raises-on-rank-1"
    metadata = META

    @hookimpl
    def ltbench_epoch_start(self, run, stage, epoch):
        from ltbench.training import distributed

        if distributed.rank() == 1 and stage == 1 and epoch == 1:
            raise RuntimeError("only rank 1 blew up")


class StopsRank1(Method):
    """Under torchrun, rank 1 stops answering (SIGSTOP to itself) in stage-1 epoch 2."""

    name = "stops-rank-1"
    metadata = META

    @hookimpl
    def ltbench_epoch_start(self, run, stage, epoch):
        import os
        import signal

        from ltbench.training import distributed

        if distributed.rank() == 1 and stage == 1 and epoch == 1:
            import subprocess

            # continued after 70 s, so that the test's teardown can end it; until then it answers nothing
            subprocess.Popen(["sh", "-c", f"sleep 70; kill -CONT {os.getpid()}"])
            os.kill(os.getpid(), signal.SIGSTOP)


ALL += [RaisesInConfigure, RaisesInRecord, NonJsonRecord, ObjectState, SlowStage2, ExitsInEpochStart,
        RaisesOnRank1, StopsRank1]


class DiesAtEpoch2(Method):
    """Its worker process is killed (SIGKILL) in stage-1 epoch 2, once: the first run to get there creates a marker
    in $LTBENCH_TEST_DIE_MARKER (atomically, as two workers may get there at once); every other attempt lives."""

    name = "dies-at-epoch-2"
    metadata = META

    @hookimpl
    def ltbench_epoch_end(self, run, stage, epoch):
        import os
        import signal
        from pathlib import Path

        if stage != 1 or epoch != 1:
            return
        try:  # O_EXCL: exactly one of the workers that get here at once creates the marker, and only it dies
            fd = os.open(Path(os.environ["LTBENCH_TEST_DIE_MARKER"]), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


ALL.append(DiesAtEpoch2)
