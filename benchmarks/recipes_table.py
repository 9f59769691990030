"""The recipe tables of docs/recipes.md, generated from src/pixelar/recipes.json (tests check that the page
matches the file, so it cannot go stale).

    python -m benchmarks.recipes_table            # print the Markdown
    python -m benchmarks.recipes_table --write    # write it into docs/recipes.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pixelar.cli import recipe_command
from pixelar.config import TrainConfig
from pixelar.recipes import (
    OPTIONAL_TRAINING_FIELDS,
    TRAINING_FIELDS,
    get_recipe,
    list_recipes,
    num_parameters,
    recipe_config,
)

from .tables import write_table

PAGE = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"


def _value(v) -> str:
    return "none" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """The summary table, then one section per recipe."""
    lines = [
        "| recipe | model | bits/dim (paper) | parameters: paper / ours | compute (as stated) | GPU-hours | batch "
        "| steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    sections = []
    defaults = TrainConfig()
    for name in list_recipes():
        r = get_recipe(name)
        ours = num_parameters(recipe_config(name, {f: 1 for f in r.required()}))
        paper = f"{r.parameters:,}" if r.parameters else "not stated"
        model = f"`{r.model}`" + (" + DistAug" if r.train.get("distaug") else "")
        batch, steps = (f"{r.train[f]:,}" if f in r.train else "unstated" for f in ("batch_size", "max_steps"))
        hours = f"{r.gpu_hours:,}" if r.gpu_hours is not None else "unknown"
        lines.append(
            f"| [`{name}`](#{name}) | {model} | {r.bits_per_dim_text} | {paper} / {ours:,} | {_cell(r.compute)} "
            f"| {hours} | {batch} | {steps} |"
        )
        s = [f"### {name}", "", f"{r.paper}. CIFAR-10 test bits/dim in the paper: **{r.bits_per_dim_text}**"]
        s[-1] += f" ({r.bits_per_dim_note}). Parameters: {r.parameters_note}; this recipe's model: {ours:,}."
        cost = f"{r.gpu_hours:,} GPU-hours" if r.gpu_hours is not None else "unknown"
        s += ["", f"Compute: {r.compute}. Cost: {cost} ({r.gpu_hours_how}).", ""]
        s += ["| setting | value | source |", "|---|---|---|"]
        for field in ("size", "model_overrides", "distaug", "augment", *TRAINING_FIELDS, *OPTIONAL_TRAINING_FIELDS):
            if field in r.train:
                s.append(f"| `{field}` | `{_value(r.train[field])}` | {_cell(r.sources.get(field, ''))} |")
            elif field in r.unstated:
                todo = (
                    "**must be given**"
                    if field in r.required()
                    else f"pixelar's default `{_value(getattr(defaults, field))}` applies"
                )
                s.append(f"| `{field}` | unstated | {_cell(r.unstated[field])}; {todo} |")
        if r.deviations:
            s += ["", "Differences from the paper's setup:", ""] + [f"- {d}" for d in r.deviations]
        s += ["", "```bash", recipe_command(r), "```"]
        sections.append("\n".join(s))
    return "\n".join(lines) + "\n\n" + "\n\n".join(sections) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="write the tables into docs/recipes.md")
    args = p.parse_args()
    text = markdown()
    if args.write:
        write_table("recipes", text, PAGE)
    else:
        print(text)


if __name__ == "__main__":
    main()
