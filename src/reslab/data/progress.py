"""Progress of data work (decoding, downloading) that degrades to plain lines off a terminal.

A tqdm bar redraws itself with carriage returns; written to a log file or a CI log, that is
one unreadable line of every redraw. So a bar is drawn only when stderr is a terminal;
otherwise :func:`progress_bar` prints one line when the work starts and one when it ends.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator, Protocol


class Counter(Protocol):
    def update(self, n: int = 1) -> object: ...


class _Tally:
    """Counts what is done, for the closing line (the stand-in for a bar off a terminal)."""

    def __init__(self) -> None:
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done += n


@contextmanager
def progress_bar(total: int | None, description: str, *, unit: str, enabled: bool = True,
                 unit_scale: bool = False) -> Iterator[Counter]:
    """A counter to ``update(n)`` as work is done: a tqdm bar on a terminal; elsewhere two plain
    lines on stderr, such as "decoding DIR (10,000 images)..." at the start and "decoding DIR:
    10,000 images in 1.9 s" at the end (not after an error); nothing when not ``enabled``."""
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=description, unit=unit, unit_scale=unit_scale, leave=False,
                  dynamic_ncols=True) as bar:
            yield bar
        return
    tally = _Tally()
    start = time.perf_counter()
    if enabled:
        size = "" if total is None else f" ({_amount(total, unit, unit_scale)})"
        print(f"{description}{size}...", file=sys.stderr, flush=True)
    yield tally
    if enabled:
        print(f"{description}: {_amount(tally.done, unit, unit_scale)} in {time.perf_counter() - start:.1f} s",
              file=sys.stderr, flush=True)


def _amount(count: int, unit: str, unit_scale: bool) -> str:
    if unit_scale and count >= 1_000_000:
        return f"{count / 1_000_000:.1f} M{unit}"
    return f"{count:,} {unit}{'' if unit_scale or count == 1 else 's'}"
