"""Stage 2 (GPU): pretrain the full-attention model from scratch (every PretrainArgs field is a flag).

    python scripts/repro/pretrain.py --data_dir outputs/repro/data --out_dir outputs/repro/base --time_budget_s 240
"""

from transformers import HfArgumentParser

from swaa_train.pretrain import PretrainArgs, pretrain
from swaa_train.repro_data import show_progress

if __name__ == "__main__":
    (args,) = HfArgumentParser(PretrainArgs).parse_args_into_dataclasses()
    show_progress()
    pretrain(args)
