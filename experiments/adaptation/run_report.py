"""Stage 4 (CPU): table and plot of accuracy against relative prefill cost.

    python -m experiments.adaptation.run_report --results outputs/repro/results --plot docs/adaptation.png

Reads the two ladders under --results, adds each setting's prefill cost over the eval
prompts, writes --results/results.json and --results/table.md, draws the plot, prints the table.
"""

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoConfig

from experiments.adaptation.ladder import format_results_table, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="outputs/repro/results", help="--out of adapt.py")
    parser.add_argument("--eval-data", default="outputs/repro/data/eval.parquet", help="the evaluated questions")
    parser.add_argument("--model", default="outputs/repro/base", help="the pretrained model (tokenizer, layers)")
    parser.add_argument("--limit", type=int, default=None, help="as given to adapt.py")
    parser.add_argument("--plot", default="docs/adaptation.png", help="PNG to write")
    parser.add_argument("--title", default="", help="plot title")
    args = parser.parse_args()
    num_layers = AutoConfig.from_pretrained(args.model).num_hidden_layers
    summary = Path(args.model) / "pretrain_summary.json"
    extra = {"pretrain": json.loads(summary.read_text())} if summary.is_file() else {}
    report = write_report(
        args.results, args.eval_data, args.model, num_layers, args.plot, args.limit, args.title, extra
    )
    sys.stdout.write(format_results_table(report["rows"]) + "\n\n" + json.dumps(report["targets"], indent=2) + "\n")


if __name__ == "__main__":
    main()
