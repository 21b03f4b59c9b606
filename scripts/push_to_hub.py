"""Upload an adapter or merged SWAA model directory to the Hugging Face Hub.

    python scripts/push_to_hub.py outputs/demo --repo-id me/tiny-swaa --dry-run

Same as `swaa-train push ...`; see swaa_train/cli.py.
"""

import sys

from swaa_train.cli import main

if __name__ == "__main__":
    main(["push", *sys.argv[1:]])
