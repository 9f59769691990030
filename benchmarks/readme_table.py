"""Write a benchmark's Markdown table into README.md between `<!-- NAME:start -->` and `<!-- NAME:end -->`."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def write_table(name: str, text: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    readme = README.read_text()
    if start not in readme or end not in readme:
        raise SystemExit(f"README.md has no {start} ... {end} block; add one where the table belongs")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    README.write_text(f"{head}{start}\n{text.rstrip()}\n{end}{tail}")
    print(f"updated the {name} table in {README}")
