"""Progress bars for people at a terminal and for logs.

At a terminal: tqdm's bar, redrawn in place. Anywhere else (CI, `kubectl logs`, a file): one plain line at most
every LOG_INTERVAL_S seconds and one at the end, instead of carriage-return frames that pile up into one long line
(a default training log was 130 kB of them).
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0
LOG_FORMAT = "{{desc}}: {{n_fmt}}/{{total_fmt}} {units}, {{elapsed}} elapsed, {{remaining}} left{{postfix}}\n"


def plural(unit: str) -> str:
    """"batch" -> "batches", "sample" -> "samples"."""
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


def progress(total: int, desc: str, unit: str = "sample", enabled: bool = True, leave: bool = False) -> tqdm:
    """A bar over ``total`` units (disabled when not ``enabled``); use as a context manager or call close()."""
    if not enabled or sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=leave)
    return tqdm(total=total, desc=desc, unit=unit, mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S * 4,
                bar_format=LOG_FORMAT.format(units=plural(unit)), leave=True)
