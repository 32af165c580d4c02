"""Running grids: configuration and run identity, experiment files, planning, execution with locks, the
launchers (--jobs, submitit, torchrun) and status."""
