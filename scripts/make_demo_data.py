"""Write the synthetic long-context QA set (fusang_long schema) as parquet files.

    python scripts/make_demo_data.py --out data/demo --rows 48 --eval-rows 20

Writes OUT/train.parquet and OUT/eval.parquet; the two splits share no entity.
"""

import argparse

from swaa_train.synthetic import make_longqa_rows, write_parquet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/demo", help="output directory")
    parser.add_argument("--rows", type=int, default=48, help="rows in train.parquet")
    parser.add_argument("--eval-rows", type=int, default=20, help="rows in eval.parquet")
    parser.add_argument(
        "--words", type=int, nargs=2, default=[200, 400], metavar=("MIN", "MAX"), help="prompt length in words"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for split, rows in (("train", args.rows), ("eval", args.eval_rows)):
        data = make_longqa_rows(rows, seed=args.seed, split=split, min_words=args.words[0], max_words=args.words[1])
        print(write_parquet(f"{args.out}/{split}.parquet", data))


if __name__ == "__main__":
    main()
