"""``ce``: plain cross-entropy with instance-balanced sampling.

The baseline every long-tailed paper compares against. It implements no run
hook: the core defaults (:mod:`ltbench.plugins.defaults`) are exactly this method.
"""

from ltbench.api import Method, MethodMetadata, hookimpl

#: the setting of a number published at the LDAM-DRW recipe (the CIFAR `paper` budget): the board compares
#: such numbers with ours only when a record was trained in it (ltbench.results.references.reference_setting), and
#: prints it beside the number; the augmentation is the recipe's (cifar_train.py), as ltbench's CIFAR training
LDAM_SETTING = {"backbone": "resnet32", "epochs": 200,
                "augmentation": "random crop (4-pixel padding) and horizontal flip"}
#: BagofTricks-LT's trick gallery reruns the LDAM-DRW recipe (its configs/cao_cifar) at imbalance 100 and 50
BOT_GALLERY = "BagofTricks-LT trick gallery, configs/cao_cifar (the LDAM-DRW recipe)"


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
            "cifar100-lt-if50": {"overall": 43.85, **LDAM_SETTING,
                                 "source": BOT_GALLERY + ", baseline (100 - 56.15 top-1 error)"},
            "cifar100-lt-if200": {"overall": 34.84, **LDAM_SETTING,
                                  "source": "Cui et al., Class-Balanced Loss (CVPR 2019), Table 2 and Fig. 10, softmax "
                                  "(100 - 65.16 top-1 error; ResNet-32, 200 epochs, lr 0.1 x0.01 at 160 and 180, "
                                  "5-epoch warm-up, batch 128: the same recipe)"},
        },
    )


@hookimpl
def ltbench_register_methods(register):
    register(CrossEntropy)
