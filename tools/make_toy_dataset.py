"""Write the procedural 10-class toy dataset (RandAR/toy/data.py) as train.tar / val.tar in ImageNet layout.

    python tools/make_toy_dataset.py --out data/toy --num-train-per-class 1000 --num-val-per-class 100
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.toy.data import CLASS_NAMES, make_toy_dataset  # noqa: E402
from RandAR.utils.progress import line_buffered_output  # noqa: E402


def main(argv=None):
    line_buffered_output()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder for train.tar, val.tar, classes.json")
    parser.add_argument("--num-train-per-class", type=int, default=1000)
    parser.add_argument("--num-val-per-class", type=int, default=100, help="0 writes no val.tar")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical tars")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(argv)
    assert args.num_train_per_class > 0 and args.num_val_per_class >= 0, "image counts must be positive"

    t0 = time.time()
    paths = make_toy_dataset(args.out, args.num_train_per_class, args.num_val_per_class, args.seed, args.image_size)
    n_train = args.num_train_per_class * len(CLASS_NAMES)
    n_val = args.num_val_per_class * len(CLASS_NAMES)
    print(f"wrote {n_train} train + {n_val} val images of {len(CLASS_NAMES)} classes ({', '.join(CLASS_NAMES)}) "
          f"to {args.out} in {time.time() - t0:.1f}s")
    return paths


if __name__ == "__main__":
    main()
