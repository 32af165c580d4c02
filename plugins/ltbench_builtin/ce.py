"""``ce``: plain cross-entropy with instance-balanced sampling.

The baseline every long-tailed paper compares against. It implements no run
hook: the core defaults (:mod:`ltbench.plugins.defaults`) are exactly this method.
"""

from ltbench.api import Method, MethodMetadata, hookimpl

#: the setting of a number published at the LDAM-DRW recipe (the CIFAR `paper` budget): the board compares
#: such numbers with ours only when a record was trained in it (ltbench.results.records.reference_setting)
LDAM_SETTING = {"backbone": "resnet32", "epochs": 200}


class CrossEntropy(Method):
    name = "ce"
    plain_stage1 = True
    metadata = MethodMetadata(
        family="baseline",
        title="Cross-entropy, instance-balanced sampling",
        paper="Cao et al., Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss (baseline 'ERM')",
        venue="NeurIPS",
        year=2019,
        code_url="https://github.com/kaidic/LDAM-DRW",
        summary="Softmax cross-entropy; every training image once per epoch.",
        reference_results={
            "cifar100-lt-if100": {"overall": 38.32, **LDAM_SETTING,
                                  "source": "LDAM-DRW paper, Table 2 (ResNet-32, 200 epochs; "
                                  "100 - top-1 error)"},
            "cifar10-lt-if100": {"overall": 70.36, **LDAM_SETTING, "source": "LDAM-DRW paper, Table 2 (ResNet-32)"},
        },
    )


@hookimpl
def ltbench_register_methods(register):
    register(CrossEntropy)
