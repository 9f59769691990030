"""Write a benchmark's Markdown table into docs/benchmarks.md between `<!-- NAME:start -->` and
`<!-- NAME:end -->`, so every published figure is the output of the script named beside it."""

from __future__ import annotations

from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_table(name: str, text: str, path: Path = PAGE) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    page = path.read_text()
    if start not in page or end not in page:
        raise SystemExit(f"{path} has no {start} ... {end} block; add one where the table belongs")
    head, rest = page.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text.rstrip()}\n{end}{tail}")
    print(f"updated the {name} table in {path}")
