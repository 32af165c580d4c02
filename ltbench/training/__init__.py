"""Training: the run object, the hook calls, the step/epoch/stage loop, evaluation, checkpoints, the model and
its backbones, soft targets and the torchrun helpers."""
