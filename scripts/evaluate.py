"""Long-context QA accuracy of a model under several SWAA settings, in one run.

    python scripts/evaluate.py --model outputs/demo --data eval.parquet --out outputs/demo/eval --limit 20

Same as `swaa-train eval ...`; see swaa_train/cli.py.
"""

import sys

from swaa_train.cli import main

if __name__ == "__main__":
    main(["eval", *sys.argv[1:]])
