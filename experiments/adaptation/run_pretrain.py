"""Stage 2 (GPU): pretrain the full-attention model from scratch (every PretrainArgs field is a flag).

python -m experiments.adaptation.run_pretrain --data_dir outputs/repro/data --out_dir outputs/repro/base --time_budget_s 240
"""

from transformers import HfArgumentParser

from experiments.adaptation.data import show_progress
from experiments.adaptation.pretrain import PretrainArgs, pretrain

if __name__ == "__main__":
    (args,) = HfArgumentParser(PretrainArgs).parse_args_into_dataclasses()
    show_progress()
    pretrain(args)
