"""Build the shipped tiny demo model files (config + tokenizer) into swaa_train/assets/tiny-qwen3/."""

from __future__ import annotations

import argparse

from swaa_train.demo_assets import TINY_QWEN3_DIR, build_demo_assets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", default=str(TINY_QWEN3_DIR), help="Where to write config.json and the tokenizer.")
    parser.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size, special tokens included.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic text the tokenizer is trained on.")
    args = parser.parse_args()
    out_dir = build_demo_assets(args.out_dir, vocab_size=args.vocab_size, seed=args.seed)
    print(f"wrote {sorted(p.name for p in out_dir.iterdir())} to {out_dir}")


if __name__ == "__main__":
    main()
