"""Speed and quality measurements of pixelar, one script per question, run from the repository root as
`python -m benchmarks.NAME [--quick] [--write]`. Each prints a Markdown table; `--write` puts it into its block
of docs/benchmarks.md (benchmarks/tables.py). Benchmarks measure; the tests assert (no timings in tests)."""
