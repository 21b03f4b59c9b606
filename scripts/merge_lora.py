"""Merge a SWAA LoRA adapter into its base model (swaa_config and tokenizer carried along).

    python scripts/merge_lora.py outputs/demo outputs/demo/merged

Same as `swaa-train merge ...`; see swaa_train/cli.py.
"""

import sys

from swaa_train.cli import main

if __name__ == "__main__":
    main(["merge", *sys.argv[1:]])
