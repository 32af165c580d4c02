"""The base class of every method plugin."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ltbench.errors import ConfigError


@dataclass(frozen=True)
class MethodMetadata:
    """What the leaderboard and ``ltbench ls methods`` say about a method.

    ``reference_results`` maps a dataset key (e.g. ``"cifar100-lt-if100"``)
    to the paper's numbers in percent: ``{"overall": 38.3, "many": ..., "source":
    "Table 2, ResNet-32"}``. ``interpretations`` lists every place where
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


class Method:
    """A long-tailed recognition method: a class whose ``@hookimpl`` methods
    implement the run hooks of :mod:`ltbench.hookspecs`.

    Subclasses set ``name``, ``metadata``, ``options`` and ``plain_stage1`` (option name ->
    default; the default's type is the option's type). One instance is made
    per run, so instance attributes are per-run state. Override
    ``state_dict``/``load_state_dict`` for state that must survive a resumed
    run (tensors, numpy arrays, numbers, strings, ``None`` and
    dicts/lists/tuples of them: checkpoints never unpickle other objects),
    and ``check_options`` to reject bad values.
    """

    name: ClassVar[str]
    metadata: ClassVar[MethodMetadata]
    options: ClassVar[dict[str, Any]] = {}
    #: True when the method leaves stage 1 exactly as the core defaults train
    #: it (decoupled methods). Such methods share one stage-1 model per
    #: (dataset, budget, seed) instead of each training its own.
    plain_stage1: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ConfigError(
                f"method {self.name!r} has no option {unknown[0]!r}; "
                f"its options are: {', '.join(sorted(self.options)) or '(none)'}"
            )
        self.opts: dict[str, Any] = {**self.options, **options}
        self.check_options()

    def check_options(self) -> None:
        """Raise :class:`ltbench.errors.ConfigError` naming a bad option."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def __repr__(self) -> str:
        return f"<method {self.name} {self.opts}>"
