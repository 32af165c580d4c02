"""How ``ltbench run`` runs a grid: the command line over the experiment file, the planned cells, and the
choice between one process, ``--jobs`` workers, a submitit launcher and torchrun ranks; then the report.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from ltbench.errors import ConfigError, LtbenchError
from ltbench.plugins.catalog import warn_broken


RUN_FLAGS = ("methods", "datasets", "seeds", "budget", "epochs", "imbalance_factor", "data_root", "download",
             "output", "device", "rerun", "quiet", "jobs", "threads", "shard", "nproc", "launcher", "wait", "report")


SLURM_FLAGS = {"partition": "slurm_partition", "account": "slurm_account", "gpus_per_job": "slurm_gpus_per_job",
               "cpus_per_task": "slurm_cpus_per_task", "mem_gb": "slurm_mem_gb", "time": "slurm_time",
               "array_parallelism": "slurm_array_parallelism"}


def run_options(args: argparse.Namespace, experiment_data: dict[str, Any] | None = None) -> argparse.Namespace:
    """The command line over the --config file (or ``experiment_data``, an experiment as a dict) over the
    defaults, written back onto ``args``."""
    from ltbench.grid import config as config_mod
    from ltbench.grid import experiment

    exp = experiment.load(args.config) if args.config else (experiment_data or {})
    flags = {key: getattr(args, key) for key in RUN_FLAGS}
    flags["set"] = args.set if isinstance(args.set, dict) else config_mod.parse_set(args.set or [])
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
    from ltbench.grid import experiment
    from ltbench.plugins.catalog import get_catalog
    from ltbench.grid.plan import plan_grid

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


def _check_out_dir(path: str | Path, flag: str) -> None:
    """``path`` must be a directory, or creatable as one: neither it nor a folder above it is a file. An empty
    string (``--output ""``, an unset variable) is refused: it would silently mean the working directory."""
    if isinstance(path, str) and not path.strip():
        raise ConfigError(f"{flag} is empty, which would write into the working directory; give a directory for "
                          f"the output (e.g. runs, or . if the working directory is meant)")
    path = Path(path)
    for where in (path, *path.parents):
        if where.exists():
            if not where.is_dir():
                what = "is a file" if where == path else f"lies under {where}, which is a file"
                raise ConfigError(f"{flag} {path} {what}; give a directory for the output")
            return


def _flag(key: str, python: bool) -> str:
    """How an error names an option: ``--data-root`` on the command line, ``ltbench.run(): data_root`` from
    Python, which has no flags."""
    return f"ltbench.run(): {key}" if python else f"--{key.replace('_', '-')}"


#: a command-line flag in a message, with the placeholder that may follow it (``--data-root DIR``)
_FLAG = re.compile(r"(?<![\w`-])--([a-z][a-z0-9-]*)(?: ([A-Z]{2,}))?(?![\w-])")


def python_wording(message: str) -> str:
    """``message`` (written for the command line) as :func:`ltbench.run` takes its options: ``--set key`` becomes
    ``set key``, ``--data-root DIR`` ``data_root=DIR``, ``--download`` ``download=True``. A command quoted in
    backticks is left as it is."""
    def python(match: re.Match) -> str:
        key, placeholder = match.group(1).replace("-", "_"), match.group(2)
        if placeholder:
            return f"{key}={placeholder}"
        return f"{key}=True" if key in ("download", "rerun", "quiet") else key
    parts = message.split("`")
    return "`".join(_FLAG.sub(python, part) if i % 2 == 0 else part for i, part in enumerate(parts))


def _checked(args: argparse.Namespace, experiment_data: dict[str, Any] | None = None,
             python: bool = False) -> argparse.Namespace:
    """``args`` merged with the experiment and checked, before anything is planned; ``python``: the errors name
    the options as :func:`ltbench.run` takes them (``ltbench.run(): jobs``), not as flags."""
    from ltbench.grid import launch

    args = run_options(args, experiment_data)
    _check_out_dir(args.output, _flag("output", python))
    if args.jobs < 1:
        raise ConfigError(f"{_flag('jobs', python)} must be a positive integer, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"{_flag('threads', python)} must be a positive integer, got {args.threads}")
    if not args.seeds:
        raise ConfigError(f"{_flag('seeds', python)}: give at least one seed, e.g. "
                          + ("seeds=[0, 1, 2]" if python else "--seeds 0,1,2"))
    if args.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{_flag('device', python)} must be auto, cpu or cuda, got {args.device!r}")
    if args.launcher and args.jobs > 1:
        raise ConfigError("--jobs and --launcher do not combine: the launcher runs one job per stage-1 group; "
                          "use --slurm-array-parallelism to bound how many run at once")
    if args.launcher is not None and args.launcher not in launch.LAUNCHERS:
        raise ConfigError(f"--launcher must be one of {', '.join(launch.LAUNCHERS)}, got {args.launcher!r}")
    return args


def run(args: argparse.Namespace) -> int:
    """``ltbench run``: plan the grid from ``args`` and run it where they say; 0 when every run completed."""
    from ltbench.training import distributed
    from ltbench.grid import launch
    from ltbench.grid.plan import resolve_device, stderr_log

    args = _checked(args)
    if args.nproc is not None:
        return _torchrun(args)
    if distributed.launched_by_torchrun() and (args.jobs > 1 or args.launcher or args.shard):
        raise ConfigError("under torchrun every process trains the same run: --jobs, --launcher and --shard "
                          "do not apply")
    device, output = resolve_device(args.device), Path(args.output)
    warn_broken()
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
    return _report(_run_here(args, cells, output, device, log, grid_id), args.output)


def run_records(experiment_file: str | Path | None, options: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`ltbench.run`: the grid of ``experiment_file`` (if any) with ``options`` over it, run in this
    process (or ``jobs`` worker processes); the records, one per planned run, in the grid's order."""
    from ltbench.grid import experiment
    from ltbench.grid.launch import write_manifest
    from ltbench.grid.plan import resolve_device, stderr_log
    from ltbench.training import distributed

    if experiment_file is not None and not isinstance(experiment_file, (str, os.PathLike)):
        raise ConfigError(f"ltbench.run(): experiment must be the path of an experiment file (a string or a Path), "
                          f"got {experiment_file!r}; give the grid's options as keywords, e.g. "
                          f"ltbench.run(methods=[\"ce\"], seeds=[0, 1])")
    options = {key: str(value) if isinstance(value, Path) else value for key, value in options.items()}
    experiment.check(options, "ltbench.run()", noun="option")
    for key in ("nproc", "launcher", "shard", "wait", "slurm"):
        if options.get(key):
            raise ConfigError(f"ltbench.run(): {key} is not available from Python, which runs the grid in this "
                              f"process (or jobs=N worker processes); use the command line: ltbench run "
                              f"--{key.replace('_', '-')} ...")
    if distributed.launched_by_torchrun():
        raise ConfigError("ltbench.run() does not run under torchrun; use `ltbench run` there")
    exp = experiment.load(experiment_file) if experiment_file is not None else {}
    exp = {**exp, "variants": {**exp.get("variants", {}), **options.pop("variants", {})}}
    args = argparse.Namespace(config=None, set=None, argv=[], **{key: None for key in RUN_FLAGS},
                              **{flag: None for flag in SLURM_FLAGS.values()})  # every flag "not given"
    for key, value in options.items():
        setattr(args, key, value)
    args.set = dict(options.get("set", {}))
    args = _checked(args, exp, python=True)
    device, output = resolve_device(args.device), Path(args.output)
    warn_broken()
    try:
        cells = plan_cells(args, log=None if args.quiet else stderr_log)
    except LtbenchError as exc:  # messages from config and data loading name flags: Python has options
        exc.args = (python_wording(str(exc)),)
        raise
    grid_id = write_manifest(cells, output, how=f"python, jobs {args.jobs}").stem
    return _run_here(args, cells, output, device, (lambda msg: None) if args.quiet else stderr_log, grid_id)


def _run_here(args: argparse.Namespace, cells: list, output: Path, device, log, grid_id: str) -> list[dict]:
    """The cells on this machine: in this process, or in ``--jobs`` worker processes."""
    from ltbench.grid import launch
    from ltbench.grid.runner import run_grid

    if args.jobs > 1:
        return launch.run_parallel(cells, output, device, args.jobs, threads=args.threads, rerun=args.rerun,
                                   log=log, quiet=args.quiet, report=args.report, grid=grid_id)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return run_grid(cells, output, device, rerun=args.rerun, log=log, reporting=_reporting(args, output),
                        grid_id=grid_id)
    finally:
        torch.set_num_threads(threads)


def _reporting(args: argparse.Namespace, output: Path):
    """The reporters ``--report`` selects (None for none); unknown names fail here, before anything runs."""
    if not args.report:
        return None
    from ltbench.plugins.reporting import Reporting

    return Reporting(args.report, output)


def _torchrun(args: argparse.Namespace) -> int:
    """``ltbench run --nproc K ...``: the same command under ``torchrun --standalone --nproc_per_node K``."""
    import subprocess

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be a positive integer, got {args.nproc}")
    if args.jobs > 1 or args.launcher or args.shard:
        raise ConfigError("--nproc trains each run in several processes: --jobs, --launcher and --shard do not "
                          "combine with it")
    from ltbench.grid.plan import resolve_device

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
    """One rank of a torchrun job: every rank trains every run of the grid together (docs/scale.md)."""
    import os

    import torch

    from ltbench.training import distributed
    from ltbench.grid.runner import run_grid

    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    from ltbench.grid.launch import available_cores

    torch.set_num_threads(args.threads or max(1, available_cores() // local))
    device = distributed.init_from_env(device)
    from ltbench.grid.runner import RANKS_DIR

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
    from ltbench.results import summary

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
    from ltbench.grid import launch
    from ltbench.results.records import RESULT_FILE, load_result

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
