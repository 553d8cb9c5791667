"""Progress bars with an ETA for the long steps of a run (``tqdm`` on standard error).

* :func:`timed_bar`: a step whose length is only estimated (a Verilator build): the bar
  advances with the elapsed seconds against the estimate; a step that overruns grows the
  estimate instead of sitting at 100 %.
* :func:`file_bar`: a step that reports its own progress (the simulation, in the cocotb
  process or Amaranth's simulator): it writes ``done`` counts (simulated cycles) to a file that
  the bar polls (``moepim.testbenches.benches.report_progress``), against a known total (the
  cycle formula).

Both poll from a daemon thread twice a second and close when the block ends; with ``enabled``
false (``--quiet``, tests) they do nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

__all__ = ["timed_bar", "file_bar"]

POLL_S = 0.5


@contextmanager
def _bar(desc: str, total: float, unit: str, enabled: bool, read):
    if not enabled:
        yield
        return
    from tqdm import tqdm

    bar = tqdm(total=max(1, int(total)), desc=desc, unit=unit, file=sys.stderr,
               leave=True, dynamic_ncols=True, mininterval=POLL_S)
    stop = threading.Event()

    def poll():
        while not stop.wait(POLL_S):
            done = read()
            if done is None:
                continue
            if done >= bar.total:                 # overrun: keep an honest ETA
                bar.total = int(done * 1.1) + 1
            bar.n = int(done)
            bar.refresh()

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.n = bar.total
        bar.refresh()
        bar.close()


def timed_bar(desc: str, estimate_s: float, enabled: bool = True):
    """Elapsed seconds against ``estimate_s``."""
    t0 = time.monotonic()
    return _bar(desc, estimate_s, "s", enabled, lambda: time.monotonic() - t0)


def file_bar(desc: str, total: int, path: Path, unit: str = "cycle", enabled: bool = True):
    """The integer last written to ``path`` against ``total``."""
    path = Path(path)

    def read():
        try:
            return int(path.read_text() or 0)
        except (OSError, ValueError):
            return None
    return _bar(desc, total, unit, enabled, read)
