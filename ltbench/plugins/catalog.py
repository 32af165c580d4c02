"""Plugin discovery: the catalog of methods, datasets and backbones.

Plugin modules come from the ``ltbench`` entry-point group: ltbench's own
first, then the others in sorted order (distribution name, then entry-point
name). The core's own datasets and backbones are registered the same way,
through the same hooks, before the entry points. Each plugin is loaded and
asked to register in isolation: one that fails to import or breaks the hook
contract is reported by name in ``catalog.broken`` and the others load.

One owner per name. A method, dataset or backbone name belongs to whoever
registers it, if nobody else does: a plugin that registers a name of
ltbench's own is broken (built-in names cannot be taken), and when two other
plugins register the same name, both are broken, each error naming both
distributions, so that which one wins never depends on install order.
"""

from __future__ import annotations

import copy
import importlib.metadata as md
import inspect
import json
import sys
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

import ltbench.hookspecs as hookspecs
from ltbench.data.split import CORE_KEYS, DatasetSpec
from ltbench.errors import LtbenchError, UnknownNameError
from ltbench.plugins.method import STAGE_HOOKS, STAGES, Method, MethodMetadata
from ltbench.results.records import MAX_NAME, SAFE_NAME
from ltbench.training.backbones import TIMM_PREFIX, BackboneSpec

ENTRY_POINT_GROUP = "ltbench"
BUILTIN_DISTRIBUTION = "ltbench"
CORE_MODULES = ("ltbench.data.datasets", "ltbench.training.backbones")
#: every name ltbench's own entry-point plugins register (plugins/ltbench_builtin), by kind: reserved even when a
#: built-in fails to load, so that a third-party plugin never takes the name of a built-in that is missing (a test
#: keeps this equal to what the built-ins register)
BUILTIN_NAMES: dict[str, frozenset[str]] = {
    "method": frozenset({
        "balanced-softmax", "bcl", "blt", "blt-finetune", "breadcrumb", "breadcrumb-weak", "cam-fusion", "cb-focal",
        "cb-loss", "cb-sampling", "ce", "crt", "cutmix", "focal", "ldam", "ldam-drw", "logit-adjust",
        "logit-adjust-posthoc", "lws", "mislas", "mixup", "ncm", "paco", "progressive-sampling", "remix", "ride",
        "safa", "sam", "sqrt-sampling", "tau-norm"}),
    "reporter": frozenset({"jsonl", "mlflow", "tensorboard", "wandb"}),
}


@dataclass
class PluginInfo:
    name: str  # entry-point name, or the core module
    module: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)


@dataclass
class BrokenPlugin:
    name: str
    distribution: str
    error: str
    version: str = "?"


@dataclass
class MethodEntry:
    cls: type[Method]
    plugin: PluginInfo

    @property
    def stage_hooks(self) -> list[str]:
        return sorted(n for n in dir(self.cls) if n.startswith("ltbench_") and callable(getattr(self.cls, n)))


def _foreign_module(module: ModuleType | None, dist: md.Distribution) -> str | None:
    """Why ``module``, imported for one of ``dist``'s entry points, is not ``dist``'s own code (None when it is,
    or when ``dist`` lists no files to tell): another distribution that ships a package of the same name earlier
    on the path would otherwise run under ``dist``'s name and version."""
    where = getattr(module, "__file__", None)
    if not where:
        return None
    path = Path(where).resolve()
    files = dist.files
    if files is None:
        return None
    if any(Path(dist.locate_file(f)).resolve() == path for f in files):
        return None
    project = _editable_project(dist)
    if project is not None and project in path.parents:
        return None
    return (f"module {module.__name__} was imported from {path}, which is not part of the distribution "
            f"{dist.name} {dist.version} that declares this entry point: another installed package ships a "
            f"module of the same name and shadows it; uninstall or rename that package")


def _editable_project(dist: md.Distribution) -> Path | None:
    """The project directory an editable install of ``dist`` names in its ``direct_url.json`` (None for another
    install). A directory that is a file-system root is not believed: every module lies under it, so a forged
    ``file:///`` would vouch for any code."""
    try:
        info = json.loads(dist.read_text("direct_url.json") or "null")
    except ValueError:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("dir_info"), dict) or not info["dir_info"].get("editable"):
        return None
    url = urllib.parse.urlparse(str(info.get("url", "")))
    if url.scheme != "file":
        return None
    project = Path(urllib.parse.unquote(url.path)).resolve()
    return None if project.parent == project else project


def _not_running_ltbench(dist: md.Distribution) -> str | None:
    """Why ``dist``, a distribution named ``ltbench``, is not the ltbench that is running (None when it is): its
    files hold this ``ltbench`` package, or it is an editable install of the project directory that holds it. Other
    metadata of that name (a stray or fake ``ltbench`` dist-info earlier on the path) must not speak for ltbench:
    its entry points would load as built-ins, with the built-ins' reserved names."""
    package = Path(__file__).resolve().parents[1] / "__init__.py"  # ltbench/__init__.py, this module's package
    if _editable_project(dist) == package.parent.parent:
        return None
    if any(Path(dist.locate_file(f)).resolve() == package for f in dist.files or () if f.name == "__init__.py"):
        return None
    return (f"the distribution metadata {dist.name} {dist.version} at {dist.locate_file('')} is not the ltbench that "
            f"is running (the package at {package.parent}): its files do not hold that package, nor is it an editable "
            f"install of its project; its entry points are not loaded. Remove that stray or fake metadata from the "
            f"path (or reinstall ltbench)")


class Catalog:
    """The installed plugins and what they registered: ``methods``, ``datasets``, ``backbones`` and
    ``reporters`` by name, the ``plugins`` loaded and the ones ``broken`` (with why)."""

    def __init__(self) -> None:
        self.methods: dict[str, MethodEntry] = {}
        self.datasets: dict[str, DatasetSpec] = {}
        self.backbones: dict[str, BackboneSpec] = {}
        self.reporters: dict[str, type] = {}
        self.plugins: list[PluginInfo] = []
        self.broken: list[BrokenPlugin] = []
        self.owners: dict[tuple[str, str], PluginInfo] = {}  # (kind, name) -> the plugin that registered it
        #: (kind, name) -> "dist (plugin)" of every claimant, for names two plugins registered
        self.contested: dict[tuple[str, str], list[str]] = {}

    def copy(self) -> Catalog:
        """A catalog with the same entries whose tables can be added to without changing this one."""
        other = Catalog()
        for table in ("methods", "datasets", "backbones", "reporters", "plugins", "broken", "owners"):
            setattr(other, table, copy.copy(getattr(self, table)))
        other.contested = {key: list(names) for key, names in self.contested.items()}
        return other

    # -- loading ---------------------------------------------------------------
    def add_plugin(self, obj: Any, info: PluginInfo) -> None:
        """Register one plugin module; on any error record it as broken and roll back."""
        added: list[tuple[dict, str, str]] = []
        try:
            pm = pluggy.PluginManager("ltbench")
            pm.add_hookspecs(hookspecs)
            pm.register(obj, name=info.name)
            pm.check_pending()
            info.hooks = sorted(h.name for h in pm.get_hookcallers(obj) or [])

            def adder(table: dict, kind: str, check):
                def register(item):
                    check(item)
                    name = item.name
                    if kind in ("method", "dataset") and (not SAFE_NAME.fullmatch(str(name)) or ".." in name
                                                          or len(name) > MAX_NAME):
                        raise TypeError(f"{kind} name {name!r} would become part of a file path: use at most "
                                        f"{MAX_NAME} letters, digits and . _ - (e.g. my-method)")
                    if (kind, name) in self.owners or (kind, name) in self.contested:
                        self._conflict(kind, name, info)
                    if info.distribution != BUILTIN_DISTRIBUTION and name in BUILTIN_NAMES.get(kind, ()):
                        raise ValueError(f"{kind} name {name!r} belongs to ltbench itself, whose plugin for it did "
                                         f"not load (see `ltbench plugins`); built-in names cannot be taken by "
                                         f"{_who(info)}; rename it")
                    table[name] = MethodEntry(item, info) if kind == "method" else item
                    self.owners[kind, name] = info
                    added.append((table, kind, name))
                    if kind == "method":
                        info.methods.append(name)

                return register

            pm.hook.ltbench_register_methods(register=adder(self.methods, "method", _check_method_class))
            pm.hook.ltbench_register_datasets(register=adder(self.datasets, "dataset", _check_type(DatasetSpec)))
            pm.hook.ltbench_register_backbones(register=adder(self.backbones, "backbone", _check_type(BackboneSpec)))
            pm.hook.ltbench_register_reporters(register=adder(self.reporters, "reporter", _check_reporter_class))
        except Exception as exc:
            self._roll_back(added)
            self.broken.append(BrokenPlugin(info.name, info.distribution, f"{type(exc).__name__}: {exc}", info.version))
            return
        self.plugins.append(info)

    def _roll_back(self, added: list[tuple[dict, str, str]]) -> None:
        for table, kind, name in added:
            table.pop(name, None)
            self.owners.pop((kind, name), None)

    def _conflict(self, kind: str, name: str, info: PluginInfo) -> None:
        """``info`` registers a taken name: it raises; a third-party owner is unloaded too."""
        me = _who(info)
        owner = self.owners.get((kind, name))
        if owner is not None and owner.distribution == BUILTIN_DISTRIBUTION:
            raise ValueError(f"{kind} name {name!r} belongs to ltbench itself ({_who(owner)}); built-in names "
                             f"cannot be taken by {me}; rename it")
        claimants = self.contested.setdefault((kind, name), [_who(owner)] if owner else [])
        claimants.append(me)
        if owner is not None:  # the earlier claimant loses the name as well: install order must not decide
            self.plugins.remove(owner)
            self._roll_back([(t, k, n) for (k, n), o in list(self.owners.items()) if o is owner
                             for t in [{"method": self.methods, "dataset": self.datasets,
                                        "backbone": self.backbones, "reporter": self.reporters}[k]]])
            owner.methods.clear()
            self.broken.append(BrokenPlugin(owner.name, owner.distribution, _contested(kind, name, claimants),
                                            owner.version))
        raise ValueError(_contested(kind, name, claimants))

    def load_entry_points(self) -> None:
        # every distribution's, not md.entry_points()'s first distribution of each name: that would be a stray or
        # fake "ltbench" earlier on the path, and the running ltbench's own entry points would go unseen
        found = [ep for dist in md.distributions() for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        eps = sorted(found,  # ltbench's own first: its names are reserved
                     key=lambda ep: ((ep.dist.name if ep.dist else "") != BUILTIN_DISTRIBUTION,
                                     (ep.dist.name if ep.dist else ""), ep.name))
        seen, impostors = set(), set()
        for ep in eps:
            dist = ep.dist.name if ep.dist else "?"
            impostor = _not_running_ltbench(ep.dist) if ep.dist and dist == BUILTIN_DISTRIBUTION else None
            if impostor:  # one line per such metadata, not one per entry point it declares
                if impostor not in impostors:
                    impostors.add(impostor)
                    self.broken.append(BrokenPlugin(ep.name, dist, impostor, ep.dist.version))
                continue
            if (dist, ep.name) in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add((dist, ep.name))
            info = PluginInfo(ep.name, ep.value, dist, ep.dist.version if ep.dist else "?")
            try:
                obj = ep.load()
            except Exception as exc:
                self.broken.append(BrokenPlugin(ep.name, dist, f"import failed: {type(exc).__name__}: {exc}",
                                                info.version))
                continue
            foreign = _foreign_module(sys.modules.get(ep.module), ep.dist) if ep.dist else None
            if foreign:  # another package's module under this name: its code must not run as this plugin
                self.broken.append(BrokenPlugin(ep.name, dist, foreign, info.version))
                continue
            self.add_plugin(obj, info)

    # -- look-ups --------------------------------------------------------------
    def _look_up(self, kind: str, table: dict[str, Any], name: str, hint: tuple[str, ...] = ()) -> Any:
        """``table[name]``, or the error naming the valid names (and ``hint``), or why two plugins' claims to it
        cancel."""
        if (kind, name) in self.contested:
            raise LtbenchError(_contested(kind, name, self.contested[kind, name]))
        if name not in table:
            raise UnknownNameError(kind, name, [*table, *hint])
        return table[name]

    def method(self, name: str) -> MethodEntry:
        return self._look_up("method", self.methods, name)

    def reporter(self, name: str) -> type:
        return self._look_up("reporter", self.reporters, name)

    def dataset(self, name: str) -> DatasetSpec:
        return self._look_up("dataset", self.datasets, name)

    def backbone(self, name: str) -> BackboneSpec:
        if name.startswith(TIMM_PREFIX):
            import timm

            from ltbench.training.backbones import TimmBackbone

            model_name = name[len(TIMM_PREFIX):]
            if model_name not in timm.list_models():
                raise UnknownNameError("timm model", model_name, timm.list_models())
            return BackboneSpec(name, f"timm model {model_name}", lambda c: TimmBackbone(model_name, c))
        return self._look_up("backbone", self.backbones, name, hint=(TIMM_PREFIX + "<timm model name>",))


def _who(info: PluginInfo) -> str:
    return f"distribution {info.distribution} (plugin {info.name!r})"


def _contested(kind: str, name: str, claimants: list[str]) -> str:
    return (f"{kind} name {name!r} is registered by more than one plugin: {' and '.join(claimants)}; "
            f"neither is loaded, uninstall or rename one")


def _check_reporter_class(cls: Any) -> None:
    from ltbench.plugins.reporter import Reporter

    if not (isinstance(cls, type) and issubclass(cls, Reporter)):
        raise TypeError(f"register() expects a ltbench.plugins.reporter.Reporter subclass, got {cls!r}")
    if not getattr(cls, "name", ""):
        raise TypeError(f"reporter class {cls.__name__} has no name")


def _check_type(kind: type):
    def check(item: Any) -> None:
        if not isinstance(item, kind):
            raise TypeError(f"register() expects a {kind.__name__}, got {type(item).__name__}")

    return check


def _check_method_class(cls: Any) -> None:
    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise TypeError(f"register() expects a subclass of ltbench.Method, got {cls!r}")
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        raise TypeError(f"method class {cls.__qualname__} has no 'name'")
    if not isinstance(getattr(cls, "metadata", None), MethodMetadata):
        raise TypeError(f"method {cls.name!r} has no MethodMetadata 'metadata'")
    if "+" in cls.name or "," in cls.name:
        raise TypeError(f"method name {cls.name!r} may not contain '+' or ','")
    # `--set momentum=...` sets the core key, so an option of that name could never be set: refuse it here.
    colliding = sorted(set(getattr(cls, "options", {})) & set(CORE_KEYS))
    if colliding:
        raise TypeError(f"method {cls.name!r}: option {', '.join(map(repr, colliding))} is a core configuration "
                        f"key, so `--set` would never reach it; rename it (e.g. {cls.name.replace('-', '_')}_"
                        f"{colliding[0]}). Core keys: {', '.join(CORE_KEYS)}")
    # A hook without @hookimpl would be silently ignored (the run would fall back to the core defaults).
    unmarked = sorted(n for n in dir(cls) if n.startswith("ltbench_") and hasattr(hookspecs, n)
                      and callable(getattr(cls, n)) and not hasattr(getattr(cls, n), "ltbench_impl"))
    if unmarked:
        raise TypeError(f"method {cls.name!r}: {', '.join(unmarked)} lack the @ltbench.hookimpl marker, so "
                        f"ltbench would never call them; decorate them with @hookimpl")
    _check_hook_stages(cls)
    # Validate its run hooks against the specification now, not mid-run; its defaults must construct.
    pm = pluggy.PluginManager("ltbench")
    pm.add_hookspecs(hookspecs)
    pm.register(cls(), name=cls.name)
    pm.check_pending()


def _check_hook_stages(cls: type[Method]) -> None:
    """``cls.hook_stages`` names stage hooks the class implements, each with a non-empty tuple of stages 1 and 2:
    a wrong declaration would silently leave a hook unasked, or let a conflicting composition through."""
    declared = cls.hook_stages
    if not isinstance(declared, dict):
        raise TypeError(f"method {cls.name!r}: hook_stages must be a dict of hook name -> stages, e.g. "
                        f"{{'ltbench_build_loss': (2,)}}; got {type(declared).__name__}")
    for hook, stages in declared.items():
        if hook not in STAGE_HOOKS:
            raise TypeError(f"method {cls.name!r}: hook_stages names {hook!r}, which is not asked per stage; only "
                            f"{', '.join(STAGE_HOOKS)} can be answered in some stages only")
        if not callable(getattr(cls, hook, None)):
            raise TypeError(f"method {cls.name!r}: hook_stages names {hook}, which the class does not implement")
        if not (isinstance(stages, tuple) and stages and all(type(s) is int and s in STAGES for s in stages)):
            raise TypeError(f"method {cls.name!r}: hook_stages[{hook!r}] must be a non-empty tuple of stages "
                            f"(1, 2), e.g. (2,); got {stages!r}")


def _core_info(module: ModuleType) -> PluginInfo:
    from ltbench.hookspecs import installed_version

    return PluginInfo(module.__name__, module.__name__, "ltbench", installed_version())


_CATALOG: Catalog | None = None


def build_catalog(entry_points: bool = True) -> Catalog:
    """A new catalog: the core's datasets and backbones, then the entry points."""
    import importlib

    cat = Catalog()
    for name in CORE_MODULES:
        module = importlib.import_module(name)
        cat.add_plugin(module, _core_info(module))
    if entry_points:
        cat.load_entry_points()
    return cat


def list_methods(pattern: str = "*", catalog: Catalog | None = None) -> list[str]:
    """The names of the installed methods that match ``pattern``, sorted (as ``timm.list_models``).

    ``pattern`` is a shell-style glob (``"ldam*"``, ``"*-sampling"``); several may be given separated by
    commas (``"ce,crt"``). Built-in and third-party methods alike; ``catalog`` defaults to the installed one.
    """
    return match_names(pattern, (catalog or get_catalog()).methods)


def match_names(pattern: str, names: Any) -> list[str]:
    """The sorted ``names`` that match any of the comma-separated globs in ``pattern``."""
    import fnmatch

    globs = [p.strip() for p in str(pattern).split(",") if p.strip()] or ["*"]
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs))


def warn_broken() -> None:
    """One line on stderr per plugin that failed to load, so that a missing method is never a mystery."""
    for b in get_catalog().broken:
        print(f"warning: plugin {b.name!r} ({b.distribution}) is broken and was not loaded: {b.error}",
              file=sys.stderr)


def get_catalog() -> Catalog:
    """The process-wide catalog, built on first use."""
    global _CATALOG
    if _CATALOG is None:
        _CATALOG = build_catalog()
    return _CATALOG
