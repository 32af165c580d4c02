"""Progress on long work: a bar on a terminal, a heartbeat line every ``HEARTBEAT_S`` seconds otherwise.
"""

from __future__ import annotations

import sys
import time



from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ltbench.training.run import Run


#: progress bars on a terminal; worker processes that share one terminal turn them off
SHOW_PROGRESS = True


#: on a non-terminal (a log file, a batch job), a progress line at least this often during a long phase
HEARTBEAT_S = 30.0


class Heartbeat:
    """A progress line every :data:`HEARTBEAT_S` seconds of a long loop, for logs that have no bar."""

    def __init__(self, run: Run, what: str, total: int) -> None:
        self.run, self.what, self.total = run, what, total
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last >= HEARTBEAT_S:
            self.last = now
            rate = done / (now - self.start)
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            self.run.log(f"[{self.run.method_name} seed {self.run.seed}] {self.what}: {done}/{self.total} "
                         f"({100 * done / max(self.total, 1):.0f} %, about {eta:.0f} s left)")


def _progress(run: Run, total: int, desc: str):
    if SHOW_PROGRESS and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False, file=sys.stderr)
    return None
