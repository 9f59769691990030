"""Write a benchmark's Markdown table into docs/benchmarks.md between `<!-- NAME:start -->` and
`<!-- NAME:end -->`, so every published figure is the output of the script named beside it."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from tqdm import tqdm

PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_table(name: str, text: str, path: Path = PAGE) -> None:
    """Replace the block `name` of the page at `path` (docs/benchmarks.md unless another page shows it too)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    page = path.read_text()
    if start not in page or end not in page:
        raise SystemExit(f"{path} has no {start} ... {end} block; add one where the table belongs")
    head, rest = page.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text.rstrip()}\n{end}{tail}")
    print(f"updated the {name} table in {path}")


def show_progress() -> bool:
    """Whether a benchmark shows progress bars (its training runs', its configurations'): when stderr is a
    terminal, as the pixelar commands do (where they print plain progress lines into a log file, a benchmark
    stays silent: its result lines are what it logs)."""
    return sys.stderr.isatty()


def progress(items, desc: str = "configurations"):
    """A benchmark's loop over its configurations with a tqdm bar on stderr, shown when stderr is a terminal
    (print result lines with tqdm.write meanwhile, so the bar stays below them)."""
    items = list(items)
    return tqdm(items, desc=desc, unit="config", disable=not show_progress(), dynamic_ncols=True)


def load_average() -> str:
    """The machine's load average (1 and 5 minutes): how busy it was while a benchmark measured."""
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min)"


def cpu_model() -> str:
    """This machine's CPU, as /proc/cpuinfo names it (elsewhere what platform knows)."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"
