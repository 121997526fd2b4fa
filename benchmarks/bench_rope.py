"""Training-step time of a RandAR config with RoPE as one complex multiply (RandAR.model.rope, eager mode) against
the real arithmetic on strided halves that the same function uses under torch.compile. Interleaved rounds of
bench_train.bench in one process, so the slow drift of a shared machine hits both alike; prints the median step
of each round and the ratio of the medians.

    python benchmarks/bench_rope.py --configs toy --precisions bf16
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import CONFIGS, ROOT, bench  # noqa: E402
import RandAR.model.rope as rope  # noqa: E402
from RandAR.utils.config import load_config  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="toy", choices=list(CONFIGS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precisions", default="bf16", choices=["fp32", "bf16"],
                   help="bf16: autocast, as the quickstart trains on CPUs with fast bfloat16")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round (after one warm-up step)")
    args = p.parse_args()
    cfg = load_config(os.path.join(ROOT, CONFIGS[args.configs]))
    device = torch.device("cpu")
    compiled_form = rope.is_compiling
    forms = {"complex": lambda: False, "real": lambda: True}  # what apply_rotary_emb asks to pick its form
    times = {name: [] for name in forms}
    try:
        for _ in range(args.rounds):
            for name, form in forms.items():
                rope.is_compiling = form
                _, t, _ = bench(cfg, args.batch, device, False, False, args.steps, 1, args.precisions)
                times[name].append(t * 1e3)
    finally:
        rope.is_compiling = compiled_form
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.configs}, batch {args.batch}, {args.precisions}, {torch.get_num_threads()} threads")
    for name, t in times.items():
        print(f"RoPE {name:7s}: median {medians[name]:.1f} ms/step  (rounds: {', '.join(f'{x:.0f}' for x in t)})")
    print(f"real / complex: {medians['real'] / medians['complex']:.2f}x")


if __name__ == "__main__":
    main()
