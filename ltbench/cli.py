"""The ``ltbench`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ltbench.errors import ConfigError, LtbenchError

DEFAULT_DATASET = "fashion-mnist-lt"


RUN_FLAGS = ("methods", "datasets", "seeds", "budget", "epochs", "imbalance_factor", "data_root", "download",
             "output", "device", "rerun", "quiet", "jobs", "threads", "shard", "nproc", "launcher", "wait", "report")
SLURM_FLAGS = {"partition": "slurm_partition", "account": "slurm_account", "gpus_per_job": "slurm_gpus_per_job",
               "cpus_per_task": "slurm_cpus_per_task", "mem_gb": "slurm_mem_gb", "time": "slurm_time",
               "array_parallelism": "slurm_array_parallelism"}


def _run_options(args: argparse.Namespace) -> argparse.Namespace:
    """The command line over the --config file over the defaults, written back onto ``args``."""
    from ltbench import config as config_mod
    from ltbench import experiment

    exp = experiment.load(args.config) if args.config else {}
    flags = {key: getattr(args, key) for key in RUN_FLAGS}
    flags["set"] = config_mod.parse_set(args.set or [])
    options = experiment.merge(exp, flags)
    for key in RUN_FLAGS:
        setattr(args, key, options[key])
    args.settings, args.variants = options["set"], options["variants"]
    for key, flag in SLURM_FLAGS.items():
        if getattr(args, flag) is None and key in options["slurm"]:
            setattr(args, flag, options["slurm"][key])
    return args


def plan_cells(args: argparse.Namespace, log=None) -> list:
    """Every cell of the grid: methods x datasets x seeds, then each named variant's."""
    from ltbench import experiment
    from ltbench.catalog import get_catalog
    from ltbench.runner import plan_grid

    common = dict(epochs=args.epochs, imbalance_factor=args.imbalance_factor, data_root=args.data_root,
                  download=args.download, log=log)
    cells = []
    if args.methods:
        cells += plan_grid(args.methods, args.datasets, args.seeds, args.budget, settings=args.settings, **common)
    for name, variant in args.variants.items():
        method = variant["method"]
        options = {o for part in method.split("+") for o in get_catalog().method(part).cls.options}
        settings = experiment.variant_settings(options, method.split("+")[0], args.settings, variant.get("set", {}))
        cells += plan_grid([method], args.datasets, args.seeds, args.budget, settings=settings, **common)
    return _distinct(cells)


def _distinct(cells: list) -> list:
    """The cells with each run once: a method, seed or variant given twice (or a variant that resolves to the
    same run as another) would train one run twice; the later ones go, with a line naming them."""
    seen: dict[tuple, str] = {}
    out = []
    for cell in cells:
        key = (cell.dataset_key, cell.budget, cell.method, cell.config_id, cell.seed)
        if key in seen:
            print(f"note: {cell.label} seed {cell.seed} on {cell.dataset_key} is the same run as {seen[key]}: "
                  f"it runs once", file=sys.stderr)
            continue
        seen[key] = f"{cell.label} seed {cell.seed}"
        out.append(cell)
    return out


def _check_out_dir(path: Path, flag: str) -> None:
    """``path`` must be a directory, or creatable as one: neither it nor a folder above it is a file."""
    for where in (path, *path.parents):
        if where.exists():
            if not where.is_dir():
                what = "is a file" if where == path else f"lies under {where}, which is a file"
                raise ConfigError(f"{flag} {path} {what}; give a directory for the output")
            return


def cmd_run(args: argparse.Namespace) -> int:
    from ltbench import distributed, launch
    from ltbench.runner import resolve_device, run_grid, stderr_log

    args = _run_options(args)
    device = resolve_device(args.device)
    output = Path(args.output)
    _check_out_dir(output, "--output")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be a positive integer, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be a positive integer, got {args.threads}")
    if args.launcher and args.jobs > 1:
        raise ConfigError("--jobs and --launcher do not combine: the launcher runs one job per stage-1 group; "
                          "use --slurm-array-parallelism to bound how many run at once")
    if args.launcher is not None and args.launcher not in launch.LAUNCHERS:
        raise ConfigError(f"--launcher must be one of {', '.join(launch.LAUNCHERS)}, got {args.launcher!r}")
    if args.nproc is not None:
        return _torchrun(args)
    if distributed.launched_by_torchrun() and (args.jobs > 1 or args.launcher or args.shard):
        raise ConfigError("under torchrun every process trains the same run: --jobs, --launcher and --shard "
                          "do not apply")
    _warn_broken()
    cells = plan_cells(args, log=None if args.quiet or not distributed.is_main() else stderr_log)
    how = f"launcher {args.launcher}" if args.launcher else f"jobs {args.jobs}"
    if args.shard:
        planned = len(cells)
        mine = launch.shard(cells, args.shard, output)
        grid_id = launch.write_manifest(cells, output, how=f"shards, {how}").stem  # the whole grid: status names
        cells = mine  # the other shards' runs
        print(f"shard {args.shard}: {len(cells)} of the grid's {planned} runs", file=sys.stderr)
    else:
        grid_id = launch.write_manifest(cells, output, how=how).stem
    log = (lambda msg: None) if args.quiet else stderr_log
    if args.launcher:
        return _submit(args, cells, output, log, grid_id)
    if distributed.launched_by_torchrun():
        return _run_distributed(args, cells, output, device, log)
    if args.jobs > 1:
        records = launch.run_parallel(cells, output, device, args.jobs, threads=args.threads, rerun=args.rerun,
                                      log=log, quiet=args.quiet, report=args.report, grid=grid_id)
    else:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads or threads)
        try:
            records = run_grid(cells, output, device, rerun=args.rerun, log=log, reporting=_reporting(args, output),
                               grid_id=grid_id)
        finally:
            torch.set_num_threads(threads)
    return _report(records, args.output)


def _reporting(args: argparse.Namespace, output: Path):
    """The reporters ``--report`` selects (None for none); unknown names fail here, before anything runs."""
    if not args.report:
        return None
    from ltbench.reporting import Reporting

    return Reporting(args.report, output)


def _torchrun(args: argparse.Namespace) -> int:
    """``ltbench run --nproc K ...``: the same command under ``torchrun --standalone --nproc_per_node K``."""
    import subprocess

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be a positive integer, got {args.nproc}")
    if args.jobs > 1 or args.launcher or args.shard:
        raise ConfigError("--nproc trains each run in several processes: --jobs, --launcher and --shard do not "
                          "combine with it")
    from ltbench.runner import resolve_device

    if resolve_device(args.device).type == "cuda":
        import torch

        if torch.cuda.device_count() < args.nproc:
            raise ConfigError(f"--nproc {args.nproc}: only {torch.cuda.device_count()} GPUs are visible "
                              f"(one per process); use --device cpu for gloo on the CPU")
    argv, skip = [], False
    for i, a in enumerate(args.argv):
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "ltbench", *argv]
    print("running: " + " ".join(cmd[1:]), file=sys.stderr)
    return subprocess.call(cmd)


def _run_distributed(args: argparse.Namespace, cells: list, output: Path, device, log) -> int:
    """One rank of a torchrun job: every rank trains every run of the grid together (README: Running at scale)."""
    import os

    import torch

    from ltbench import distributed
    from ltbench.runner import run_grid

    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    from ltbench.launch import available_cores

    torch.set_num_threads(args.threads or max(1, available_cores() // local))
    device = distributed.init_from_env(device)
    from ltbench.runner import RANKS_DIR

    distributed.start_heartbeat(output / RANKS_DIR)
    main_rank = distributed.is_main()
    try:
        records = run_grid(cells, output, device, rerun=args.rerun, log=log if main_rank else (lambda m: None),
                           reporting=_reporting(args, output) if main_rank else None)
    finally:
        torch.distributed.destroy_process_group()
    return _report(records, args.output) if main_rank else _exit_status(records)


def _exit_status(records: list[dict[str, Any]]) -> int:
    return 1 if any(r["status"] != "completed" for r in records) else 0


def _report(records: list[dict[str, Any]], output: str) -> int:
    from ltbench import summary

    if records and all("dataset" in r and "budget" in r for r in records):
        print(summary.render(summary.summarise(records)))
        print()
    bad = [r for r in records if r["status"] != "completed"]
    print(f"{len(records) - len(bad)} of {len(records)} runs completed; records under {output}/")
    for r in bad:
        print(f"  {r['variant']} seed {r['seed']} on {r['dataset']}: {r['status']}: "
              f"{(r['error'] or '').splitlines()[0]}")
    return _exit_status(records)  # 0 only when every asked-for run completed


def _submit(args: argparse.Namespace, cells: list, output: Path, log, grid_id: str) -> int:
    from ltbench import launch
    from ltbench.records import RESULT_FILE, load_result

    options = {key: value for key, value in {
        "slurm_partition": args.slurm_partition, "slurm_account": args.slurm_account,
        "gpus_per_node": args.slurm_gpus_per_job, "cpus_per_task": args.slurm_cpus_per_task,
        "timeout_min": args.slurm_time, "mem_gb": args.slurm_mem_gb,
        "slurm_array_parallelism": args.slurm_array_parallelism}.items() if value is not None}
    if args.launcher == "local":  # the local executor knows no SLURM keys
        options = {k: v for k, v in options.items() if not k.startswith("slurm_")}
    jobs = launch.submit(cells, output, args.launcher, args.device, options, rerun=args.rerun, log=log,
                         quiet=args.quiet, report=args.report, grid=grid_id)
    ids = ", ".join(job.job_id for job in jobs)
    print(f"submitted {len(cells)} runs as {len(jobs)} {args.launcher} jobs: {ids}")
    print(f"logs: {output / launch.SUBMITIT_DIR}/<job id>_<task>_log.out/err; follow with: ltbench status {output}")
    if args.launcher == "slurm" and not args.wait:
        return 0
    for job in jobs:  # local jobs are children of this process: wait for them (and for slurm with --wait)
        try:
            job.result()
        except Exception as exc:  # the record says what happened; a job that died has none
            print(f"job {job.job_id} failed: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}",
                  file=sys.stderr)
    records = []
    for cell in cells:
        record = load_result(cell.out_dir(output) / RESULT_FILE)
        records.append(record or {"variant": cell.label, "seed": cell.seed, "dataset": cell.dataset_key,
                                  "status": "failed", "error": "its job ended without a record"})
    return _report(records, str(output))


def cmd_show(args: argparse.Namespace) -> int:
    from ltbench import summary

    print(summary.render(summary.summarise(summary.load_records(Path(args.runs_dir))), args.format))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ltbench import summary

    if args.bootstrap < 100:
        raise ConfigError(f"--bootstrap is the number of bootstrap draws, at least 100 for a 95 % interval, "
                          f"got {args.bootstrap}")
    records = summary.load_records(Path(args.runs_dir))
    result = summary.compare(records, args.a, args.b, dataset=args.dataset, budget=args.budget,
                             n_boot=args.bootstrap)
    print(json.dumps(result, indent=2) if args.json else summary.render_comparison(result))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ltbench import plots, summary

    _check_out_dir(Path(args.out), "--out")
    written = plots.plot_records(summary.load_records(Path(args.runs_dir)), Path(args.out))
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"nothing to plot: no completed records under {args.runs_dir}")
        return 1
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from ltbench import docs

    out = Path(args.out)
    if args.write:
        for path in docs.write(out):
            print(f"wrote {path}")
        return 0
    return _report_check(docs.check(out), "run `ltbench docs --write` and commit the result",
                         f"{out}: the reference matches the code")


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from ltbench import scaffold

    root = scaffold.create(args.name, Path(args.dir))
    print(f"wrote {root}: pip install -e {root} && python -m pytest -q {root / 'tests'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ltbench import status

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


def _warn_broken() -> None:
    """One line on stderr per plugin that failed to load, so that a missing method is never a mystery."""
    from ltbench.catalog import get_catalog

    for b in get_catalog().broken:
        print(f"warning: plugin {b.name!r} ({b.distribution}) is broken and was not loaded: {b.error}",
              file=sys.stderr)


def _print_table(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from tabulate import tabulate

    print(tabulate(rows, headers="keys", tablefmt="simple"))


def cmd_ls(args: argparse.Namespace) -> int:
    from ltbench.catalog import get_catalog

    from ltbench.catalog import match_names

    cat = get_catalog()
    _warn_broken()
    table = {"methods": cat.methods, "datasets": cat.datasets, "backbones": cat.backbones,
             "reporters": cat.reporters}[args.what]
    names = match_names(args.pattern, table)
    if not names:
        from ltbench.errors import ConfigError

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
            row = {"name": name, "title": meta.title, "venue": meta.venue, "year": meta.year,
                   "plugin": f"{entry.plugin.distribution} {entry.plugin.version}"}
            if args.json:
                row.update(metadata=meta.to_dict(), options=entry.cls.options, hooks=entry.stage_hooks)
            rows.append(row)
    elif args.what == "datasets":
        rows = [{"name": n, "description": s.description, "budgets": ",".join(s.budgets),
                 "default_if": s.default_imbalance_factor} for n, s in ((n, cat.datasets[n]) for n in names)]
    else:
        rows = [{"name": n, "description": cat.backbones[n].description} for n in names]
        if args.pattern == "*":
            rows.append({"name": "timm/<model>", "description": "any timm model by name (random init)"})
    _print_table(rows, args.json)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from ltbench.catalog import get_catalog
    from ltbench.datasets import load_checked
    from ltbench.metrics import shot_groups

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
        from ltbench.filedatasets import EXPORT_FORMATS, export_list_dataset
        from ltbench.runner import stderr_log

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
    from ltbench.catalog import get_catalog

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
    from ltbench import leaderboard

    out = Path(args.out)
    if args.action == "build":
        written = leaderboard.build(Path(args.runs_dir) if args.runs_dir else None, out)
        for path in written:
            print(f"wrote {path}")
        if not written:
            print(f"no completed records under {args.runs_dir or out / leaderboard.RECORDS}")
        return 0
    return _report_check(leaderboard.check(out),
                         "run `ltbench leaderboard build` (or ci/build_leaderboards.sh) and commit the result",
                         f"{out}: markdown matches its records")


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
    from ltbench import __version__

    parser = argparse.ArgumentParser(prog="ltbench", description="Benchmark long-tailed recognition methods.")
    parser.add_argument("--version", action="version", version=f"ltbench {__version__}")
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
    scale = run.add_argument_group("running at scale (README: Running at scale)")
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

    lb = sub.add_parser("leaderboard", help="build or check markdown leaderboards")
    lb.add_argument("action", choices=["build", "check"])
    lb.add_argument("runs_dir", nargs="?", help="build: runs directory whose completed records to add")
    lb.add_argument("--out", default="leaderboards", help="leaderboard directory (default leaderboards/)")
    lb.set_defaults(func=cmd_leaderboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except LtbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
