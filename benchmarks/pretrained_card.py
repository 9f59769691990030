"""Ship a finished training run as a pretrained model: copy its config.json and model.safetensors into
src/pixelar/pretrained/NAME/, write its model card (card.json) and the table of all cards in
docs/pretrained.md.

    python -m benchmarks.pretrained_card RUN_DIR NAME --command "pixelar train ..." --good-for "..."
    python -m benchmarks.pretrained_card --table   # only rewrite docs/pretrained.md from the shipped cards

The card's figures come from the files, never typed in: the parameter count and the sha256 of the weights
from the copied model, the test bits/dim of the whole test split, the steps and the training time from the
final line of the run's metrics.jsonl (what `pixelar train` printed, the number `pixelar eval RUN_DIR` prints),
and the test bits/dim of the first 500 test images measured here (tests/test_pretrained.py measures it again
and compares). The machine is this one (/proc/cpuinfo, torch's thread count) unless --cpu/--threads say
otherwise: run this on the machine that trained the model.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from pixelar import load_model, pretrained
from pixelar.data import load_dataset
from pixelar.evaluation import evaluate
from pixelar.io import file_sha256, read_json, write_json

from .tables import cpu_model, write_table

PAGE = Path(__file__).resolve().parent.parent / "docs" / "pretrained.md"
PACKAGE = Path(__file__).resolve().parent.parent / "src" / "pixelar" / "pretrained"
CHECK_IMAGES = 500  # the card's quick figure, which the tests recompute: the first 500 test images


def measured(model_dir, dataset: str, data_dir=None) -> dict:
    """What a card says that can be measured from the model directory alone: parameters, the weights' sha256
    and the test bits/dim of the first CHECK_IMAGES test images (fp32, as `pixelar eval --subset 500`)."""
    model_dir = Path(model_dir)
    model = load_model(model_dir)
    res = evaluate(model, load_dataset(dataset, "test", data_dir=data_dir), batch_size=100, subset=CHECK_IMAGES)
    return {
        "num_parameters": model.num_parameters(),
        "sha256": file_sha256(model_dir / "model.safetensors"),
        "test_bpd_first_500": res["bpd"],
    }


def final_metrics(run_dir) -> dict:
    """The last line of the run's metrics.jsonl, which must be the final (test) line of a finished run."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    final = json.loads(lines[-1]) if lines else {}
    if not final.get("final"):
        raise SystemExit(f"{path}: no final test line; the run has not finished (pixelar train --resume {run_dir})")
    return final


def make_card(run_dir, name: str, command: str, good_for: str, cpu: str, threads: int, data_dir=None) -> dict:
    """Copy the run's model into the package as pretrained model `name` and return its card (not yet written)."""
    run_dir = Path(run_dir)
    final = final_metrics(run_dir)
    config = read_json(run_dir / "config.json", "run config")
    train = config.get("train")
    if not train:
        raise SystemExit(f"{run_dir}/config.json has no train section: ship a run directory of `pixelar train`")
    num_test = len(load_dataset(train["dataset"], "test", data_dir=data_dir))
    if final["num_test_images"] != num_test:
        raise SystemExit(
            f"{run_dir} was evaluated on {final['num_test_images']} of the {num_test} test images (test_subset): "
            "a card reports the whole test split"
        )
    out = PACKAGE / name
    out.mkdir(parents=True, exist_ok=True)
    # the data directory of the training machine means nothing where the package is installed
    write_json(out / "config.json", {**config, "train": {**train, "data_dir": None}})
    shutil.copyfile(run_dir / "model.safetensors", out / "model.safetensors")
    card = {
        "name": name,
        "model": config["model"],
        "size": train["size"],
        "dataset": train["dataset"],
        "command": command,
        "steps": final["step"],
        "train_time_s": round(final["train_s"], 1),
        "machine": {"cpu": cpu, "threads": threads},
        "test_bpd": final["test_bpd"],
        "num_test_images": final["num_test_images"],
        # measured on the run's files, which the copies equal byte for byte: loading the copy would check it
        # against its card, not written yet
        **measured(run_dir, train["dataset"], data_dir),
        "good_for": good_for,
    }
    if final.get("bound"):  # a latent-variable model: the bits/dim are an upper bound
        card["bound"] = True
    return card


def table(cards: list[dict]) -> str:
    """The Markdown table of docs/pretrained.md, one row per card."""
    rows = [
        "| name | model | dataset | test bits/dim (all test images) | first 500 test images | parameters | "
        "steps | training time | machine | trained with | sha256 of model.safetensors | good for |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cards:
        le = "<= " if c.get("bound") else ""
        rows.append(
            f"| `{c['name']}` | {c['model']} ({c['size']}) | {c['dataset']} | {le}{c['test_bpd']:.4f} "
            f"({c['num_test_images']:,}) | {le}{c['test_bpd_first_500']:.4f} | {c['num_parameters']:,} | "
            f"{c['steps']:,} | {c['train_time_s'] / 60:.1f} min | {c['machine']['cpu']}, "
            f"{c['machine']['threads']} threads | `{c['command']}` | `{c['sha256']}` | {c['good_for']} |"
        )
    if not cards:
        rows.append("| (none shipped yet) | | | | | | | | | | | |")
    return "\n".join(rows)


def shipped_cards() -> list[dict]:
    return [pretrained.card(n) for n in pretrained.names()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", help="a finished run directory of `pixelar train`")
    p.add_argument("name", nargs="?", help="the pretrained model's name, e.g. fashion_mnist-pixelcnn_pp")
    p.add_argument("--command", help="the exact `pixelar train ...` command that made the run")
    p.add_argument("--good-for", help="one line: what the model is good for")
    p.add_argument("--cpu", default=cpu_model(), help="the training machine's CPU (default: this machine's)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads it trained with")
    p.add_argument("--data-dir", help="where the dataset's files are")
    p.add_argument("--table", action="store_true", help="only rewrite docs/pretrained.md from the shipped cards")
    args = p.parse_args()
    if not args.table:
        if not (args.run_dir and args.name and args.command and args.good_for):
            p.error("give RUN_DIR NAME --command ... --good-for ... (or --table)")
        card = make_card(args.run_dir, args.name, args.command, args.good_for, args.cpu, args.threads, args.data_dir)
        write_json(PACKAGE / args.name / pretrained.CARD_NAME, card)
        print(json.dumps(card, indent=2))
    write_table("pretrained", table(shipped_cards()), PAGE)


if __name__ == "__main__":
    main()
