"""``cb-sampling``: class-balanced re-sampling.

Every class is drawn with equal probability, images uniformly within a
class, with replacement; an epoch is as many draws as there are training
images (so it costs the same as an instance-balanced epoch).
"""

from ltbench.api import Method, MethodMetadata, class_balanced, hookimpl

from ltbench_builtin.ce import LDAM_SETTING  # the setting of numbers published at the LDAM-DRW recipe


class ClassBalancedSampling(Method):
    name = "cb-sampling"
    metadata = MethodMetadata(
        family="re-sampling",
        title="Class-balanced re-sampling",
        paper="Kang et al., Decoupling Representation and Classifier for Long-Tailed Recognition "
        "(class-balanced sampling, Sec. 3); Cao et al. 2019 ('Resample' baseline)",
        venue="ICLR",
        year=2020,
        code_url="https://github.com/facebookresearch/classifier-balancing",
        summary="Draw a class uniformly, then an image of it; plain cross-entropy.",
        reference_results={
            "cifar100-lt-if100": {"overall": 35.24, **LDAM_SETTING,
                                  "source": "BagofTricks-LT trick gallery, CB re-sampling from "
                                  "scratch (ResNet-32; 100 - error)"},
            "cifar10-lt-if100": {"overall": 72.45, **LDAM_SETTING,
                                 "source": "BagofTricks-LT trick gallery (ResNet-32)"},
        },
        interpretations=("Epoch length = number of training images, as the Decoupling code's class-aware "
                         "sampler (its epoch is N draws), so epochs cost the same across methods.",),
    )

    @hookimpl
    def ltbench_build_sampler(self, run, stage, labels):
        return class_balanced(labels, run.generator)


@hookimpl
def ltbench_register_methods(register):
    register(ClassBalancedSampling)
