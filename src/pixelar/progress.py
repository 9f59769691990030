"""Progress of the jobs that take a while: one argument, `progress`, with one meaning everywhere.

Evaluation, sampling and completion, compression and decompression and the linear probe take `progress`:

- False or None (the default): nothing is reported.
- True: a tqdm bar on stderr (rank 0 alone under torchrun, so N processes show one bar).
- "log": plain lines on stderr, for a log file or a pipe, where a bar's carriage returns do not belong
  (rank 0 alone): one at most every LOG_INTERVAL seconds, and one at the end of a job that ran that long,
  so a long job is never silent and a short one prints nothing. What the command line gives when stderr is
  not a terminal.
- a callable `on_progress(done, total, **stats)`: called with counts of the job's units (images, generation
  steps) that never decrease and end at `total`, and the job's running figures as keywords (e.g. `bpd`,
  `images`); at most every `INTERVAL` seconds, and always once the job is done.
- a `Progress` (this module's), for a job that is one part of a larger one: it is advanced as it is, and its
  owner, who counted this part's units into its total, closes it (the grayscale PixelCNN's grey stage).

Reporting costs one clock read per unit when nothing is due (the samplers call `advance` once per generation
step, a few milliseconds of work each), so a bar never slows the loop it watches.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from tqdm.auto import tqdm

from . import distributed

INTERVAL = 0.1  # seconds between reports: often enough for a live bar, rarely enough to cost nothing
LOG_INTERVAL = 30.0  # seconds between the plain lines of progress="log": a sign of life, not a flood


class Lines:
    """Plain progress lines on stderr (progress="log"): `report` prints one when LOG_INTERVAL seconds have
    passed since the last (or since the start), `finish` one at the end where the job ran that long.
    "evaluating: 3,200/10,000 img (32%) after 2:05, about 4:25 left; bpd 2.7712"."""

    def __init__(self, desc: str, unit: str):
        self.desc, self.unit = desc, unit
        self.start = self._last = time.monotonic()

    def report(self, done: int, total: int, stats: dict) -> None:
        now = time.monotonic()
        if now - self._last >= LOG_INTERVAL and not (total and done >= total):  # the end: finish's line
            self._last = now
            self._print(done, total, stats, now - self.start, False)

    def finish(self, done: int, total: int, stats: dict) -> None:
        elapsed = time.monotonic() - self.start
        if elapsed >= LOG_INTERVAL:
            self._print(done, total, stats, elapsed, True)

    def _print(self, done: int, total: int, stats: dict, elapsed: float, final: bool) -> None:
        count = f"{done:,}/{total:,} {self.unit} ({100 * done / total:.0f}%)" if total else f"{done:,} {self.unit}"
        when = f"in {_clock(elapsed)}" if final else f"after {_clock(elapsed)}"
        if not final and 0 < done < total:
            when += f", about {_clock(elapsed * (total - done) / done)} left"
        figures = ", ".join(f"{k} {_shown(v)}" for k, v in stats.items())
        line = f"{self.desc}: {'done, ' if final else ''}{count} {when}" + (f"; {figures}" if figures else "")
        print(line, file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    """125.3 -> "2:05", 3725 -> "1:02:05"."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts `done` of `total` units and reports them to a callback, a tqdm bar or plain lines (`Lines`), at
    most every INTERVAL seconds and once at the end (`close`)."""

    def __init__(self, total: int, callback: Callable | None = None, bar=None, lines: Lines | None = None):
        self.total, self.done, self.stats = int(total), 0, {}
        self._callback, self._bar, self._lines = callback, bar, lines
        self._shown = 0  # units the bar has been told of
        self._last = time.monotonic()
        self._reported = None  # `done` at the last report
        self._changed = False  # figures updated since the last report

    @property
    def active(self) -> bool:
        """Whether anything is reported (callers may skip computing figures for a silent Progress)."""
        return self._callback is not None or self._bar is not None or self._lines is not None

    def advance(self, units: int = 1, **stats) -> None:
        """`units` more done; `stats` replace the running figures of the same names."""
        self.done += units
        if stats:
            self.update(**stats)
        if not self.active:
            return
        now = time.monotonic()
        if now - self._last >= INTERVAL or self.done >= self.total:
            self._last = now
            self._report()

    def set_total(self, total: int) -> None:
        """The total, where it is known only once the job has begun (a job of parts that count their own)."""
        self.total = int(total)
        if self._bar is not None and self._bar.total != self.total:
            self._bar.total = self.total

    def update(self, **stats) -> None:
        """Change the running figures without a unit done (shown with the next report, or by close)."""
        self.stats.update(stats)
        self._changed = True

    def _report(self) -> None:
        if self._reported == self.done and not self._changed:
            return
        self._reported, self._changed = self.done, False
        if self._callback is not None:
            self._callback(self.done, self.total, **self.stats)
        if self._bar is not None:
            if self.stats:
                self._bar.set_postfix({k: _shown(v) for k, v in self.stats.items()}, refresh=False)
            self._bar.update(self.done - self._shown)
            self._shown = self.done
        if self._lines is not None:
            self._lines.report(self.done, self.total, self.stats)

    def close(self) -> None:
        """Report the final count and figures (where not yet reported) and close the bar."""
        if self.active:
            self._report()
        if self._lines is not None:
            self._lines.finish(self.done, self.total, self.stats)
            self._lines = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _shown(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


@contextlib.contextmanager
def tracking(progress, total: int, desc: str, unit: str) -> Iterator[Progress]:
    """`with tracking(progress, total, "sampling", "step") as p:` a Progress for a job of `total` units, made
    from the caller's `progress` argument (see the module docstring), closed after the block (also when it
    raises). A Progress given as `progress` is yielded as it is and left open for its owner."""
    if isinstance(progress, Progress):
        yield progress
        return
    if progress is None or progress is False:
        p = Progress(total)
    elif progress is True:
        p = Progress(total, bar=_bar(total, desc, unit) if distributed.is_main() else None)
    elif isinstance(progress, str) and progress == "log":
        p = Progress(total, lines=Lines(desc, unit) if distributed.is_main() else None)
    elif callable(progress):
        p = Progress(total, callback=progress)
    else:
        raise ValueError(
            f"progress must be True, False, None, 'log', a callable on_progress(done, total, **stats) or a "
            f"pixelar.progress.Progress, got {progress!r}"
        )
    try:
        yield p
    finally:
        p.close()


def _bar(total: int, desc: str, unit: str):
    # mininterval matches INTERVAL: the Progress already throttles, tqdm needs not throttle again
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=INTERVAL)


__all__ = ["INTERVAL", "LOG_INTERVAL", "Lines", "Progress", "tracking"]
