"""The ``ltbench`` command line."""

from __future__ import annotations

import argparse
import errno
import json
import sys
from pathlib import Path
from typing import Any

from ltbench.errors import ConfigError, LtbenchError
from ltbench.grid.orchestrate import _check_out_dir
from ltbench.plugins.catalog import warn_broken

DEFAULT_DATASET = "fashion-mnist-lt"


def cmd_run(args: argparse.Namespace) -> int:
    from ltbench.grid import orchestrate

    return orchestrate.run(args)


def cmd_show(args: argparse.Namespace) -> int:
    from ltbench.results import summary

    print(summary.render(summary.summarise(summary.load_records(Path(args.runs_dir))), args.format))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ltbench.results import summary

    if args.bootstrap < 100:
        raise ConfigError(f"--bootstrap is the number of bootstrap draws, at least 100 for a 95 % interval, "
                          f"got {args.bootstrap}")
    records = summary.load_records(Path(args.runs_dir))
    result = summary.compare(records, args.a, args.b, dataset=args.dataset, budget=args.budget,
                             n_boot=args.bootstrap)
    print(json.dumps(result, indent=2) if args.json else summary.render_comparison(result))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ltbench.results import plots, summary

    _check_out_dir(args.out, "--out")
    written = plots.plot_records(summary.load_records(Path(args.runs_dir)), Path(args.out))
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"nothing to plot: no completed records under {args.runs_dir}")
        return 1
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ltbench.grid.evaluation import evaluate_run

    evaluate_run(args.run_dir, dataset=args.dataset, imbalance_factor=args.imbalance_factor,
                 data_root=args.data_root, output=args.output, device=args.device)
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from ltbench.plugins import docs

    out = Path(args.out)
    if args.write:
        for path in docs.write(out):
            print(f"wrote {path}")
        return 0
    return _report_check(docs.check(out), "run `ltbench docs --write` and commit the result",
                         f"{out}: the reference matches the code")


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from ltbench.plugins import scaffold

    root = scaffold.create(args.name, Path(args.dir))
    print(f"wrote {root}: pip install -e {root} && python -m pytest -q {root / 'tests'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ltbench.grid import status

    rows = status.collect(Path(args.runs_dir))
    counts = status.summary(rows)
    if args.json:
        print(json.dumps({"counts": counts, "runs": rows}, indent=2))
    else:
        shown = rows if args.all else [r for r in rows if r["state"] != "completed" or r["code_changed"]]
        if shown:
            _print_table([{k: r[k] for k in ("state", "variant", "seed", "dataset", "budget", "detail")}
                          for r in shown], False)
        print(", ".join(f"{n} {state}" for state, n in counts.items() if n) or f"no runs under {args.runs_dir}")
    return 0 if rows and counts["completed"] == len(rows) else 1


def _print_table(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from tabulate import tabulate

    print(tabulate(rows, headers="keys", tablefmt="simple"))


def cmd_ls(args: argparse.Namespace) -> int:
    from ltbench.plugins.catalog import get_catalog

    from ltbench.plugins.catalog import match_names

    cat = get_catalog()
    warn_broken()
    table = {"methods": cat.methods, "datasets": cat.datasets, "backbones": cat.backbones,
             "reporters": cat.reporters}[args.what]
    names = match_names(args.pattern, table)
    if not names and args.pattern != "*":  # an empty table is no error; a pattern that matches nothing is
        raise ConfigError(f"no {args.what} match {args.pattern!r}; `ltbench ls {args.what}` lists all "
                          f"{len(table)} of them")
    if args.what == "reporters":
        rows = [{"name": n, "description": cat.reporters[n].description,
                 "plugin": f"{cat.owners['reporter', n].distribution}"} for n in names]
    elif args.what == "methods":
        rows = []
        for name in names:
            entry = cat.methods[name]
            meta = entry.cls.metadata
            plugin = f"{entry.plugin.distribution} {entry.plugin.version}"
            if args.json:
                rows.append({"name": name, "title": meta.title, "paper": meta.paper, "venue": meta.venue,
                             "year": meta.year, "plugin": plugin, "metadata": meta.to_dict(),
                             "options": entry.cls.options, "hooks": entry.stage_hooks})
            else:  # the paper each method comes from (its title, what ltbench implements, is in --json)
                rows.append({"name": name, "plugin": plugin, "paper": _citation(meta)})
    elif args.what == "datasets":
        rows = [{"name": n, "description": s.description, "budgets": ",".join(s.budgets),
                 "default_if": s.default_imbalance_factor} for n, s in ((n, cat.datasets[n]) for n in names)]
    else:
        rows = [{"name": n, "description": cat.backbones[n].description} for n in names]
        if args.pattern == "*":
            rows.append({"name": "timm/<model>", "description": "any timm model by name (random init)"})
    _print_table(rows, args.json)
    return 0


def _citation(meta: Any) -> str:
    """``Authors, Title (Venue Year)`` from a method's metadata; its title where it names no paper."""
    when = " ".join(str(part) for part in (meta.venue, meta.year) if part)
    paper = meta.paper or meta.title
    return f"{paper} ({when})" if when else paper


def cmd_data(args: argparse.Namespace) -> int:
    from ltbench.plugins.catalog import get_catalog
    from ltbench.data.split import load_checked
    from ltbench.results.metrics import shot_groups

    words = args.dataset
    export = words[0] == "export"
    if export:
        if len(words) != 2 or not args.out:
            raise ConfigError("usage: ltbench data export DATASET --format imagenet-lt-list --out DIR")
    elif len(words) != 1:
        raise ConfigError(f"ltbench data takes one dataset name (or 'export DATASET'), got {' '.join(words)}")
    spec = get_catalog().dataset(words[-1])
    imb = spec.default_imbalance_factor if args.imbalance_factor is None else args.imbalance_factor
    if not (imb >= 1 or imb == 0):
        raise ConfigError(f"--imbalance-factor must be >= 1 (or 0: the natural profile), got {imb!r}")
    data = load_checked(spec, args.data_root, imb, download=args.download)
    if export:
        from ltbench.data.files import EXPORT_FORMATS, export_list_dataset
        from ltbench.grid.plan import stderr_log

        if args.format not in EXPORT_FORMATS:
            raise ConfigError(f"--format {args.format!r}: the export formats are {', '.join(EXPORT_FORMATS)}")
        if data.streaming:
            raise ConfigError(f"{spec.name} is already on disk; export writes in-memory datasets to files")
        root = export_list_dataset(data, Path(args.out), spec.key(imb).replace("-", "_"), spec.crop_padding,
                                   spec.flip, log=stderr_log)
        print(f"exported {spec.key(imb)} to {root}; train on it with: ltbench run --datasets image-folder-lt "
              f"--data-root {root} --budget smoke")
        return 0
    counts = data.train_counts
    groups = shot_groups(counts, **data.group_thresholds)
    info = {"dataset": spec.key(imb), "num_classes": data.num_classes, "train_size": int(counts.sum()),
            "train_counts": counts.tolist(),
            "groups": {g: int((groups == g).sum()) for g in ("many", "medium", "few")},
            "group_thresholds": data.group_thresholds, "val_size": int(len(data.y_val)),
            "test_size": int(len(data.y_test)), "classes_without_val": data.info.get("classes_without_val", []),
            "source": data.info.get("source")}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from ltbench.plugins.catalog import get_catalog

    cat = get_catalog()
    rows = []
    for p in cat.plugins:
        hooks = set(p.hooks)
        for m in p.methods:
            hooks.update(cat.methods[m].stage_hooks)
        rows.append({"plugin": p.name, "distribution": p.distribution, "version": p.version,
                     "methods": ",".join(p.methods), "hooks": ",".join(sorted(hooks)), "status": "loaded"})
    if args.json:
        rows += [{"plugin": b.name, "distribution": b.distribution, "version": b.version, "methods": "", "hooks": "",
                  "status": "broken", "error": b.error} for b in cat.broken]
    _print_table(rows, args.json)
    if not args.json:
        for b in cat.broken:
            print(f"BROKEN plugin {b.name!r} ({b.distribution}): {b.error}", file=sys.stderr)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from ltbench.results import leaderboard

    if args.action == "add":
        return cmd_leaderboard_add(args)
    out = Path(args.out)
    if args.action == "build":
        _check_out_dir(args.out, "--out")
        written = leaderboard.build(Path(args.runs_dir) if args.runs_dir else None, out)
        for path in written:
            print(f"wrote {path}")
        if not written:
            print(f"no completed records under {args.runs_dir or out / leaderboard.RECORDS}")
        return 0
    return _report_check(leaderboard.check(out),
                         "run `ltbench leaderboard build` (or ci/build_leaderboards.sh) and commit the result",
                         f"{out}: markdown matches its records")


def cmd_leaderboard_add(args: argparse.Namespace) -> int:
    """``ltbench leaderboard add RECORDS``: check records made elsewhere and copy those that pass
    (docs/submitting.md); exit 1 when any is refused."""
    from ltbench.results import submit

    paths = [Path(p) for p in args.records]
    to = Path(args.to) if args.to else submit.DEFAULT_TO
    outcome = submit.add(paths, to, data_root=args.data_root, check_only=args.check_only, replace=args.replace)
    for line in submit.report(outcome, args.check_only, to):
        print(line)
    return 1 if outcome.refused or not outcome.checked else 0


def _report_check(problems: list[str], remedy: str, fine: str) -> int:
    """A generated-files check: each problem and the remedy (exit 1), or that all is well (exit 0)."""
    for p in problems:
        print(p)
    if problems:
        print(remedy)
        return 1
    print(fine)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ltbench.hookspecs import installed_version

    parser = argparse.ArgumentParser(prog="ltbench", description="Benchmark long-tailed recognition methods.")
    parser.add_argument("--version", action="version", version=f"ltbench {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and evaluate methods; writes one record per run")
    run.add_argument("--config", metavar="FILE.toml", help="an experiment file; flags given here override it")
    run.add_argument("--methods", help="comma-separated; compose with '+', e.g. remix+ldam-drw")
    run.add_argument("--datasets", help=f"comma-separated (default {DEFAULT_DATASET})")
    run.add_argument("--seeds", help="comma-separated integers (default 0)")
    run.add_argument("--budget", help="paper, cpu or smoke (default cpu)")
    run.add_argument("--epochs", type=int, help="override the budget's stage-1 epochs")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key or method option")
    run.add_argument("--imbalance-factor", type=float, help="imbalance factor of the long-tailed split")
    run.add_argument("--data-root", help="where to find data (else $LTBENCH_DATA); never created")
    run.add_argument("--download", action="store_true", help="download the dataset into --data-root if missing")
    run.add_argument("--output", help="records directory (default runs/)")
    run.add_argument("--device", help="auto, cpu or cuda")
    run.add_argument("--rerun", action="store_true", help="retrain runs that already completed")
    run.add_argument("--quiet", action="store_true")
    run.add_argument("--report", help="reporters, comma-separated: jsonl, tensorboard, mlflow, wandb "
                     "(`ltbench ls reporters`)")
    scale = run.add_argument_group("running at scale (docs/scale.md)")
    scale.add_argument("--jobs", type=int, help="runs in N worker processes on this machine (default 1)")
    scale.add_argument("--threads", type=int, help="torch threads per run (default: the cores, divided by --jobs)")
    scale.add_argument("--shard", metavar="I/N", help="run only the I-th of N disjoint parts of the grid")
    scale.add_argument("--nproc", type=int, metavar="K",
                       help="train each run data-parallel in K processes (calls torchrun; gloo on CPU, NCCL on GPUs)")
    scale.add_argument("--launcher", help="submit the grid through submitit: slurm (a job array) or local")
    scale.add_argument("--wait", action="store_true", help="--launcher slurm: wait for the jobs and report")
    scale.add_argument("--slurm-partition")
    scale.add_argument("--slurm-account")
    scale.add_argument("--slurm-gpus-per-job", type=int)
    scale.add_argument("--slurm-cpus-per-task", type=int)
    scale.add_argument("--slurm-mem-gb", type=int)
    scale.add_argument("--slurm-time", type=int, help="minutes per job")
    scale.add_argument("--slurm-array-parallelism", type=int, help="at most this many jobs at once")
    run.set_defaults(func=cmd_run)

    show = sub.add_parser("show", help="mean ± std over seeds per method, from any runs directory or records")
    show.add_argument("runs_dir", nargs="?", default="runs")
    show.add_argument("--format", default="table", help="table, csv, json or markdown (default table)")
    show.set_defaults(func=cmd_show)

    cmp_ = sub.add_parser("compare", help="method A minus method B per group, with a paired bootstrap interval")
    cmp_.add_argument("runs_dir")
    cmp_.add_argument("a", help="a method or variant label, as `ltbench show` names it")
    cmp_.add_argument("b")
    cmp_.add_argument("--dataset")
    cmp_.add_argument("--budget")
    cmp_.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws (default 2000)")
    cmp_.add_argument("--json", action="store_true")
    cmp_.set_defaults(func=cmd_compare)

    plot = sub.add_parser("plot", help="per-class, group and learning-curve plots (PNG and SVG)")
    plot.add_argument("runs_dir", nargs="?", default="runs")
    plot.add_argument("--out", default="plots", help="directory for the plots (default plots/)")
    plot.set_defaults(func=cmd_plot)

    ev = sub.add_parser("eval", help="evaluate a completed run's trained model again (or on another dataset with "
                        "the same classes) and write a record")
    ev.add_argument("run_dir", help="the run's directory: <output>/<dataset>/<budget>/<method>/<config-id>/seed<k>")
    ev.add_argument("--dataset", help="evaluate on this dataset's test split (default: the run's own)")
    ev.add_argument("--imbalance-factor", type=float, help="of --dataset (default: the run's)")
    ev.add_argument("--data-root", help="where to find the data (else $LTBENCH_DATA)")
    ev.add_argument("--output", default="evals", help="where the evaluation's record goes (default evals/)")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.set_defaults(func=cmd_eval)

    dc = sub.add_parser("docs", help="check (or --write) the generated plugin reference in docs/")
    dc.add_argument("--write", action="store_true", help="rewrite docs/hooks.md and docs/api.md")
    dc.add_argument("--out", default="docs")
    dc.set_defaults(func=cmd_docs)

    np_ = sub.add_parser("new-plugin", help="write a new method plugin package that installs and passes its test")
    np_.add_argument("name", help="the method's name, e.g. my-method")
    np_.add_argument("--dir", default=".", help="where to create ltbench-<name>/ (default .)")
    np_.set_defaults(func=cmd_new_plugin)

    st = sub.add_parser("status", help="what is done, running, failed or missing in a runs directory")
    st.add_argument("runs_dir", nargs="?", default="runs", help="the --output of ltbench run (default runs/)")
    st.add_argument("--all", action="store_true", help="list completed runs too")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    ls = sub.add_parser("ls", help="list methods, datasets or backbones")
    ls.add_argument("what", choices=["methods", "datasets", "backbones", "reporters"])
    ls.add_argument("pattern", nargs="?", default="*",
                    help="shell-style glob(s) on the names, comma-separated, e.g. 'ldam*' or '*-sampling,crt'")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_ls)

    data = sub.add_parser("data", help="describe a dataset's long-tailed split, or export it to image files")
    data.add_argument("dataset", nargs="+", help="DATASET, or: export DATASET (with --out and --format)")
    data.add_argument("--out", help="export: the folder to write the images and list files to")
    data.add_argument("--format", default="imagenet-lt-list", help="export: imagenet-lt-list (the only one)")
    data.add_argument("--imbalance-factor", type=float)
    data.add_argument("--data-root")
    data.add_argument("--download", action="store_true", help="download the dataset into --data-root if missing")
    data.add_argument("--json", action="store_true")
    data.set_defaults(func=cmd_data)

    plugins = sub.add_parser("plugins", help="list loaded plugins, their distributions and hooks")
    plugins.add_argument("--json", action="store_true")
    plugins.set_defaults(func=cmd_plugins)

    lb = sub.add_parser("leaderboard", help="build or check markdown leaderboards, or add records made elsewhere")
    lb_actions = lb.add_subparsers(dest="action", required=True, metavar="{build,check,add}")
    lb_build = lb_actions.add_parser("build", help="copy a runs directory's completed records to the board and "
                                     "render the markdown and the web leaderboard")
    lb_build.add_argument("runs_dir", nargs="?", help="runs directory whose completed records to add")
    lb_check = lb_actions.add_parser("check", help="fail when the markdown differs from what its records produce")
    lb_check.set_defaults(runs_dir=None)
    for action in (lb_build, lb_check):
        action.add_argument("--out", default="leaderboards", help="leaderboard directory (default leaderboards/)")
    lb_add = lb_actions.add_parser("add", help="check records made elsewhere (schema, metrics from their "
                                   "predictions, canonical split, code identity) and copy those that pass "
                                   "(docs/submitting.md)")
    lb_add.add_argument("records", nargs="+", metavar="RECORDS",
                        help="result.json files, run folders or folders of them")
    lb_add.add_argument("--to", help="where the records go (default leaderboards/records)")
    lb_add.add_argument("--check-only", action="store_true", help="check the records, copy nothing")
    lb_add.add_argument("--replace", action="store_true",
                        help="replace a different record already at a record's place (else it is refused)")
    lb_add.add_argument("--data-root", help="the datasets' data, for their canonical splits (else $LTBENCH_DATA; "
                        "where no data is found, the board's records of the same dataset key)")
    lb.set_defaults(func=cmd_leaderboard)
    return parser


#: the commands that train or evaluate a model: they check first that torch, torchvision and timm work together
CHECKED_COMMANDS = ("run", "eval")
#: the README's CPU-only install: PyTorch's CPU wheels
CPU_INDEX_URL = "https://download.pytorch.org/whl/cpu"


def _installed(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _first_line(exc: BaseException) -> str:
    """``Type: the message's first sentence``, at most 200 characters of it."""
    text = (str(exc).strip().splitlines() or [""])[0]
    sentence = text.split(". ", 1)[0]
    return f"{type(exc).__name__}: {sentence[:200]}".rstrip(": ")


def _torchvision_fix(torch_version: str, torchvision_version: str) -> str:
    """What a torch/torchvision pair that does not work is, and the pip command that installs the torchvision built
    for the installed torch (torch 2.N.p pairs with torchvision 0.(N+15).p; its wheel index from torch's local
    version, ``+cpu`` -> PyTorch's CPU index)."""
    import re

    torch_release, _, local = torch_version.partition("+")
    found = re.fullmatch(r"2\.(\d+)\.(\d+)", torch_release)
    built_for = re.match(r"0\.(\d+)\.(\d+)", torchvision_version)
    said = ""
    if built_for and int(built_for[1]) >= 16:
        wanted = f"2.{int(built_for[1]) - 15}.{built_for[2]}"
        if wanted != torch_release:
            said = f"; torchvision {torchvision_version} is built for torch {wanted}, not {torch_version}"
    index = f" --index-url https://download.pytorch.org/whl/{local}" if local else ""
    if found:
        command = f'pip install --force-reinstall --no-deps "torchvision==0.{int(found[1]) + 15}.{found[2]}"{index}'
    else:
        command = f"pip install --force-reinstall torch torchvision --index-url {CPU_INDEX_URL}"
    return (f"{said}. Install the torchvision built for this torch: {command}"
            f" (on a CPU-only machine, the README's `pip install torch torchvision --index-url {CPU_INDEX_URL}` "
            f"installs a matching pair)")


def check_core_imports() -> None:
    """Raise :class:`LtbenchError` naming the fix where torchvision (built for the installed torch) or timm cannot be
    imported and used: checked before anything trains, since runs build torchvision models and the record writer
    imports both at the end of each run. A torchvision built for another torch fails on import or when its compiled
    operators are used: one ``nms`` on one box uses them. Costs the imports (about 2 s), which a run pays anyway."""
    import torch

    try:
        import torchvision
        import torchvision.ops

        torchvision.ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)
    except Exception as exc:  # noqa: BLE001 - any failure of the pair is named with its fix
        tv = getattr(sys.modules.get("torchvision"), "__version__", None) or _installed("torchvision")
        what = (f"torchvision {tv} does not work with torch {torch.__version__} ({_first_line(exc)})" if tv
                else "torchvision is not installed")
        raise LtbenchError(f"{what}{_torchvision_fix(torch.__version__, tv or '')}; nothing was run") from None
    try:
        import timm  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        raise LtbenchError(f"timm {_installed('timm') or '(not installed)'} cannot be imported ({_first_line(exc)}); "
                           f"ltbench builds timm backbones with it and writes its version into every record. "
                           f'Install it: pip install --force-reinstall "timm>=0.9"; nothing was run') from None


#: errno -> what to do, for a file the command could not write: the disk is read-only, not ours, or full
_UNWRITABLE = {errno.EROFS: "give an output folder on a writable disk",
               errno.EACCES: "give an output folder you may write to, or change its permissions",
               errno.EPERM: "give an output folder you may write to, or change its permissions",
               errno.ENOSPC: "free some space (or give an output folder on another disk) and run the command again",
               errno.EDQUOT: "free some space (or give an output folder on another disk) and run the command again"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.command in CHECKED_COMMANDS:  # after parsing: --help and --version stay fast
            check_core_imports()
        return args.func(args)
    except LtbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a read-only, foreign or full output: one line naming the file, never a traceback
        if exc.errno not in _UNWRITABLE:
            raise
        print(f"error: {exc.filename or 'a file'}: {exc.strerror}; {_UNWRITABLE[exc.errno]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
