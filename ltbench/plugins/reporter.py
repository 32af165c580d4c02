"""The base class of reporter plugins (``--report``) and the events they receive.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar




EVENTS = ("ltbench_report_grid_start", "ltbench_report_run_start", "ltbench_report_epoch_end",
          "ltbench_report_run_end", "ltbench_report_grid_end")


class Reporter:
    """Base class of reporters. ``output`` is the grid's runs directory (``--output``)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
