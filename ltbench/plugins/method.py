"""The base class of every method plugin."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ltbench.errors import ConfigError


@dataclass(frozen=True)
class MethodMetadata:
    """What the leaderboard and ``ltbench ls methods`` say about a method.

    ``reference_results`` maps a dataset key (e.g. ``"cifar100-lt-if100"``)
    to the paper's numbers in percent: ``{"overall": 38.3, "many": ..., "source":
    "Table 2, ResNet-32"}``, with the setting they were measured in: ``backbone``,
    ``epochs``, ``augmentation`` and ``options`` (``{"sam.rho": 0.8}``); the board
    computes "ours − paper" only for a run in that setting. A composition's number
    is keyed by the other methods and the dataset key: safa's
    ``"ldam-drw:cifar100-lt-if200"`` is ``ldam-drw+safa``'s. The board reads the
    installed method's current references. ``interpretations`` lists every place where
    ltbench had to decide what the paper leaves open (our reading, not the
    paper's).
    """

    title: str
    paper: str = ""
    venue: str = ""
    year: int | None = None
    code_url: str = ""
    summary: str = ""
    reference_results: dict[str, dict[str, Any]] = field(default_factory=dict)
    interpretations: tuple[str, ...] = ()
    #: what kind of method it is, for the web leaderboard's filters: "baseline", "loss", "re-sampling",
    #: "decoupling", "post-hoc", "seed paper", or a family of your own
    family: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["interpretations"] = list(self.interpretations)
        return data


#: the first-result hooks that are asked once per stage (or per step of a stage), and so may be answered in some
#: stages only (``Method.hook_stages``); the other first-result hooks are asked once per run
STAGE_HOOKS = ("ltbench_build_classifier", "ltbench_build_sampler", "ltbench_build_loss", "ltbench_optimizer_step")
#: the stages a run can have
STAGES = (1, 2)


class Method:
    """A long-tailed recognition method: a class whose ``@hookimpl`` methods
    implement the run hooks (``docs/hooks.md``).

    Subclasses set ``name``, ``metadata``, ``options`` (option name ->
    default; the default's type is the option's type), ``plain_stage1`` and, for a
    method that answers a stage's first-result hook in some stages only,
    ``hook_stages``. One instance is made
    per run, so instance attributes are per-run state. Override
    ``state_dict``/``load_state_dict`` for state that must survive a resumed
    run (tensors, numpy arrays, numbers, strings, ``None`` and
    dicts/lists/tuples of them: checkpoints never unpickle other objects),
    and ``check_options`` to reject bad values.

    ``renamed_options`` maps an option's former name to its current one. The
    former name is still accepted, with a ``DeprecationWarning`` (the API's
    deprecation policy), and a run's identity keeps using it, so records made
    under the former name keep their run directories.

    ``hook_stages`` maps a stage's first-result hook (``ltbench_build_classifier``,
    ``ltbench_build_sampler``, ``ltbench_build_loss``, ``ltbench_optimizer_step``)
    to the stages the method answers it in, e.g. ``{"ltbench_build_loss": (2,)}``.
    The core asks the method for that hook in those stages only, so it composes
    with a method that answers the same hook in the other stage: two composed
    methods conflict only where they answer one first-result hook in one stage.
    A hook left out is answered in every stage. A declaration that names another
    hook, a hook the class does not implement, or a stage other than 1 and 2
    breaks the plugin at registration.
    """

    name: ClassVar[str]
    metadata: ClassVar[MethodMetadata]
    options: ClassVar[dict[str, Any]] = {}
    #: True when the method leaves stage 1 exactly as the core defaults train
    #: it (decoupled methods). Such methods share one stage-1 model per
    #: (dataset, budget, seed) instead of each training its own.
    plain_stage1: ClassVar[bool] = False
    #: former option name -> current name (see the class docstring)
    renamed_options: ClassVar[dict[str, str]] = {}
    #: a stage's first-result hook (one of ``STAGE_HOOKS``) -> the stages the method answers it in (see the
    #: class docstring); a hook left out is answered in every stage
    hook_stages: ClassVar[dict[str, tuple[int, ...]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.renamed_options and isinstance(getattr(cls, "name", None), str):
            RENAMED_OPTIONS[cls.name] = dict(cls.renamed_options)

    def __init__(self, **options: Any) -> None:
        options = {current_option_name(type(self), k, warn=True): v for k, v in options.items()}
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ConfigError(
                f"method {self.name!r} has no option {unknown[0]!r}; "
                f"its options are: {', '.join(sorted(self.options)) or '(none)'}"
            )
        self.opts: dict[str, Any] = {**self.options, **options}
        self.check_options()

    def check_options(self) -> None:
        """Raise :class:`ltbench.api.ConfigError` naming a bad option."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def __repr__(self) -> str:
        return f"<method {self.name} {self.opts}>"


#: method name -> {former option name: current name}, from every ``Method`` subclass's ``renamed_options``
RENAMED_OPTIONS: dict[str, dict[str, str]] = {}


def current_option_name(cls: type[Method], option: str, warn: bool = False) -> str:
    """``option``'s current name for ``cls`` (a former name is translated, with a ``DeprecationWarning`` when
    ``warn``)."""
    new = cls.renamed_options.get(option)
    if new is None or option in cls.options:
        return option
    if warn:
        warnings.warn(f"option {cls.name}.{option} is now {cls.name}.{new}; the old name will stop working in "
                      f"the next minor version", DeprecationWarning, stacklevel=3)
    return new


def identity_option_names(method: str, opts: dict[str, Any]) -> dict[str, Any]:
    """``opts`` under the names a run's identity uses: renamed options under their former names.

    :data:`RENAMED_OPTIONS` fills as plugins are imported: the caller loads the installed ones first
    (:func:`ltbench.grid.config.identity` does; loading them here would make this module import the catalog,
    which imports it)."""
    former = {new: old for old, new in RENAMED_OPTIONS.get(method, {}).items()}
    return {former.get(k, k): v for k, v in opts.items()}
