"""ltbench's public plugin API: everything a method, reporter, dataset or backbone plugin may use.

Plugins import from here (``from ltbench.api import Method, SecondStage, hookimpl``) and nowhere else in
``ltbench``; every other module is internal and may move or change between versions, as ``_pytest`` does
behind ``pytest``. The built-in methods in ``plugins/ltbench_builtin`` follow the same rule (a test checks it).

The names below are versioned by :data:`API_VERSION`. A change that removes or breaks one of them first
deprecates it: for one minor version the old name keeps working and warns (``DeprecationWarning``) with its
replacement, then it goes.
"""

from __future__ import annotations

from ltbench.hookspecs import hookimpl
from ltbench.data.samplers import class_balanced, class_share_sampler, instance_balanced
from ltbench.data.split import Budget, DatasetSpec, LTData, exponential_counts, long_tailed_split
from ltbench.errors import CompositionError, ConfigError, DataNotFoundError, LtbenchError, PluginContractError
from ltbench.plugins.catalog import Catalog, build_catalog, list_methods
from ltbench.plugins.method import Method, MethodMetadata
from ltbench.plugins.reporter import Reporter
from ltbench.plugins.reporting import epoch_scalars, final_metrics, flat_config
from ltbench.results.metrics import evaluate_predictions
from ltbench.results.plots import per_class_figure
from ltbench.training.backbones import BackboneSpec, CifarResNet
from ltbench.training.distributed import (agree, all_reduce_sum, barrier, gather_batch, gather_rows, global_normaliser,
                                          is_distributed, rank, shard_rows, sum_over_ranks, world_size)
from ltbench.training.evaluate import extract_features
from ltbench.training.model import LTModel, ModelOutput, projection_head
from ltbench.training.run import Batch, ParamGroup, Run, SecondStage
from ltbench.training.targets import as_soft, cross_entropy, is_soft, mix_pairs, soft_cross_entropy, weighted_mean

#: the version of this surface: a major step removes or breaks names (after a deprecation), a minor one adds
API_VERSION = "1.1"

#: what each minor version added to the surface: public names, and hooks, fields and behaviour of existing names
#: (``docs/api.md`` lists them); nothing of 1.0 was removed or changed incompatibly
ADDED: dict[str, dict[str, list[str]]] = {
    "1.1": {
        "names": ["LTData", "exponential_counts", "long_tailed_split", "DataNotFoundError", "CompositionError",
                  "ParamGroup", "gather_batch", "sum_over_ranks", "global_normaliser", "check_dataset",
                  "check_backbone", "check_device"],
        "hooks, fields and behaviour": [
            "`ltbench_param_groups`: a method shapes a stage's optimiser (parameter groups with their own weight "
            "decay and learning-rate multiple); the record's `optimizer` states each stage's groups as used",
            "`Method.hook_stages`: a method answers a stage's first-result hook in some stages only; composition "
            "conflicts are judged per stage, and the error names the stage",
            "`Run.reevaluating`: true while a step owner's `closure()` evaluates the batch again; hooks compute the "
            "same terms without advancing state",
            "`catalog_with` takes dataset and backbone specs; `check_method` interrupts and resumes a second stage "
            "and composes loss-owning methods with mixup; `check_distributed` compares per-class predictions",
            "code identity: a record states the digest of every module of a plugin's package that its method "
            "imports, and of plugin backbones and datasets; `run` and `status` name a changed one",
            "the kit's former module path still works in 1.1 and warns with `ltbench.api`; it goes in 1.2",
            "`SecondStage.lr_milestones` and `warmup_epochs`: a step schedule of the method's own in stage 2 (as "
            "BagofTricks-LT's `WarmupMultiStepLR` steps it), whatever the budget's; bad steps are a contract error",
            "`Run.machine` and `Run.machines`: the machine a run trains on and each stretch of epochs per machine, "
            "kept across resumes; the record states them as `device_model` (the CPU's family, model and kernel "
            "level too) and `machines`",
        ],
    },
}

#: the public names by what they are for (the sections of ``docs/api.md``)
SECTIONS: dict[str, list[str]] = {
    "Markers and base classes": ["hookimpl", "Method", "MethodMetadata", "Reporter", "BackboneSpec", "DatasetSpec",
                                 "Budget"],
    "What hooks receive and return": ["Run", "Batch", "SecondStage", "ParamGroup", "ModelOutput", "LTModel"],
    "What a dataset builds": ["LTData", "exponential_counts", "long_tailed_split"],
    "Helpers": ["extract_features", "class_balanced", "class_share_sampler", "instance_balanced", "as_soft",
                "is_soft", "mix_pairs", "cross_entropy", "soft_cross_entropy", "weighted_mean", "evaluate_predictions",
                "per_class_figure", "epoch_scalars", "final_metrics", "flat_config", "CifarResNet", "projection_head"],
    "Under torchrun": ["is_distributed", "rank", "world_size", "shard_rows", "gather_batch", "sum_over_ranks",
                       "global_normaliser", "gather_rows", "all_reduce_sum", "agree", "barrier"],
    "Errors": ["LtbenchError", "ConfigError", "DataNotFoundError", "PluginContractError", "CompositionError"],
    "The installed plugins": ["build_catalog", "Catalog", "list_methods"],
    "The testing kit (imported on first use)": [
        "check_method", "check_distributed", "check_streaming", "check_dataset", "check_backbone", "check_device",
        "catalog_with", "run_methods", "build_tiny_run"],
}

__all__ = ["API_VERSION", *(name for names in SECTIONS.values() for name in names)]

_TESTING_KIT = tuple(SECTIONS["The testing kit (imported on first use)"])


#: the kit's names that live beside the method checks: the checks of datasets, backbones and devices
_KIT_CHECKS = ("check_dataset", "check_backbone", "check_device")


def __getattr__(name: str):
    if name in _KIT_CHECKS:
        from ltbench.plugins import kit_checks

        return getattr(kit_checks, name)
    if name in _TESTING_KIT:
        from ltbench.plugins import testing

        return getattr(testing, name)
    raise AttributeError(f"module 'ltbench.api' has no attribute {name!r}")
