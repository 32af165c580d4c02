"""The numbers papers report for a record's setting, and the setting each was measured in: read from the installed
methods' current metadata (:attr:`ltbench.api.MethodMetadata.reference_results`), so that a corrected or added
reference reaches every record, also those made before it; a record's own copy serves only a method that is not
installed. The board's paper sections, the web board and ``ci/paper_findings.py`` read them here.
"""

from __future__ import annotations

import math
from typing import Any

from ltbench.plugins.catalog import get_catalog


def reference_setting(record: dict[str, Any]) -> str:
    """Whether the paper's number for ``record`` (:func:`reference_result`) was measured in the record's own
    setting: ``""`` when the reference names a ``backbone`` and ``epochs`` and both are the record's (its
    config's backbone and stage-1 epochs), as is every method option it names in ``options``
    (``{"sam.rho": 0.8}``), else what keeps the two apart, for the board: ``"no published number"``,
    ``"setting not stated"``, or ``"other setting: resnet18, 200 epochs, sam.rho=0.8"``."""
    ref = reference_result(record)
    if not ref or ref.get("overall") is None:
        return "no published number"
    config = record.get("config") or {}
    differ = [f"{ref['backbone']}" if key == "backbone" else f"{ref['epochs']} epochs"
              for key in ("backbone", "epochs") if key in ref and ref[key] != config.get(key)]
    options = ref.get("options") if isinstance(ref.get("options"), dict) else {}
    method_options = config.get("methods") if isinstance(config.get("methods"), dict) else {}
    for option, value in sorted(options.items()):
        method, _, name = str(option).partition(".")
        chosen = method_options.get(method) if isinstance(method_options.get(method), dict) else {}
        if name not in chosen or chosen[name] != value:
            differ.append(f"{option}={value}")
    if differ:
        return "other setting: " + ", ".join(differ)
    return "" if "backbone" in ref and "epochs" in ref else "setting not stated"


def reference_description(ref: dict[str, Any]) -> str:
    """The setting a reference (:func:`reference_result`) was measured in, as the board prints it beside the
    number: backbone, epochs, augmentation and method options, each ``not stated`` where the reference lacks it,
    e.g. ``"resnet32, 200 epochs, random crop (4-pixel padding) and horizontal flip, sam.rho=0.8"``."""
    options = ref.get("options") if isinstance(ref.get("options"), dict) else {}
    return ", ".join([str(ref.get("backbone", "backbone not stated")),
                      f"{ref['epochs']} epochs" if "epochs" in ref else "epochs not stated",
                      str(ref.get("augmentation", "augmentation not stated"))]
                     + [f"{option}={value}" for option, value in sorted(options.items())])


def _reference_results(record: dict[str, Any], method: str) -> dict[str, Any]:
    """``method``'s ``reference_results``: the installed method's current metadata, so that a corrected or added
    reference reaches every record; the record's own copy (taken when it ran) only for a method that is not
    installed. ``{}`` where neither holds a mapping."""
    entry = get_catalog().methods.get(method)
    if entry is not None:
        return dict(entry.cls.metadata.reference_results)
    meta = (record.get("method_metadata") or {}).get(method)
    refs = meta.get("reference_results") if isinstance(meta, dict) else None
    return refs if isinstance(refs, dict) else {}


def reference_result(record: dict[str, Any]) -> dict[str, Any]:
    """The paper's numbers for a record's dataset (or {}), from its methods' reference results
    (:func:`_reference_results`), keyed by the dataset key (``cifar100-lt-if100``), else by dataset and backbone
    (``imagenet-lt-resnet10``, for datasets with their natural profile), else by the dataset's name
    (``places-lt``). A composition's number lives with one of its methods, prefixed by the others joined with
    ``+`` in any order: safa's ``"ldam-drw:cifar100-lt-if200"`` is ``ldam-drw+safa``'s (and ``safa+ldam-drw``'s)."""
    methods = record.get("methods", [])
    name = record.get("dataset_name") or record["dataset"].rsplit("-", 1)[0]
    backbone = (record.get("config") or {}).get("backbone", "")
    keys = (record["dataset"], f"{name}-{backbone}", name)
    for method in methods:
        others = {m for m in methods if m != method}
        refs = {}
        for key, ref in _reference_results(record, method).items():
            prefix, _, dataset = str(key).rpartition(":")  # prefix "" for a key of the method alone
            if (set(prefix.split("+")) if prefix else set()) == others:
                refs[dataset] = ref
        for key in keys:
            ref = refs.get(key)
            if isinstance(ref, dict):  # a number that is not one is no published number (a crafted record)
                overall = ref.get("overall")
                ok = overall is None or (isinstance(overall, (int, float)) and not isinstance(overall, bool)
                                         and math.isfinite(overall))
                return ref if ok else {}
    return {}
