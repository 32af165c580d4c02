"""The package's entry point: what it registers."""

from ltbench.api import BackboneSpec, hookimpl

from ltbench_api_probe.data import PROBE_STRIPES
from ltbench_api_probe.methods import BatchCentres, StrongDecay
from ltbench_api_probe.nets import ProbeCNN


@hookimpl
def ltbench_register_methods(register):
    register(StrongDecay)
    register(BatchCentres)


@hookimpl
def ltbench_register_datasets(register):
    register(PROBE_STRIPES)


@hookimpl
def ltbench_register_backbones(register):
    register(BackboneSpec("probe-cnn", "two 3x3 convolution blocks, 8-16 channels (probe)",
                          lambda in_chans: ProbeCNN(in_chans)))
