"""Move the pretrained base between device calls: pack it into chunks small enough to come back
from one call, or rebuild it from them (pretraining and adaptation as two calls).

    python -m experiments.adaptation.base_chunks pack --base outputs/repro/base --chunks outputs/repro/chunks
    python -m experiments.adaptation.base_chunks unpack --chunks DIR --base outputs/repro/base
"""

import argparse

from experiments.adaptation.data import show_progress
from experiments.adaptation.ladder import pack_base, unpack_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("--base", default="outputs/repro/base", help="the pretrained model directory")
    parser.add_argument("--chunks", required=True, help="directory of base.tar.NN and base.tar.json")
    parser.add_argument("--chunk-mib", type=float, default=15.0, help="pack: largest chunk, MiB")
    parser.add_argument("--max-chunks", type=int, default=6, help="pack: fail if more chunks would be needed")
    args = parser.parse_args()
    show_progress()
    if args.action == "pack":
        pack_base(args.base, args.chunks, args.chunk_mib, args.max_chunks)
    else:
        unpack_base(args.chunks, args.base)


if __name__ == "__main__":
    main()
