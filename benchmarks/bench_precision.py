"""bf16 against fp32 generation speed of RandAR on this machine, at batch 1 and 8, with its CPU's capability.

    python benchmarks/bench_precision.py                                    # the quickstart's toy model, CPU
    python benchmarks/bench_precision.py --config configs/randar/randar_l_0.3b_llamagen.yaml --repeats 1

Random weights (speed does not depend on them); one model, its bf16 copy, the same classes and orders for both.
The two precisions are timed in alternating rounds in one process (best of --repeats each), so a change of the
machine's load hits both. The sampling tools default to bf16 where the CPU has native bfloat16
(RandAR/utils/distributed.py): this measures what that choice gains there and what it would cost elsewhere.
"""
import argparse
import copy
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from RandAR.model.builder import build_randar  # noqa: E402
from RandAR.model.generate import DecodeConfig, generate  # noqa: E402
from RandAR.utils.config import load_config  # noqa: E402
from RandAR.utils.distributed import default_precision, describe_cpu  # noqa: E402


def seconds(model, cond, order, steps, cfg):
    start = time.perf_counter()
    generate(model, cond, DecodeConfig((cfg, cfg), steps), token_order=order, seeds=torch.arange(cond.shape[0]))
    return time.perf_counter() - start


@torch.inference_mode()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/randar/randar_toy.yaml")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--num-inference-steps", type=int, default=None, help="default: the config's")
    p.add_argument("--cfg", type=float, default=4.0, help="constant CFG scale (> 1: the guided batch is doubled)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    fp32 = build_randar(load_config(os.path.join(ROOT, args.config))).eval()
    torch.nn.init.normal_(fp32.output.weight, std=0.02)  # non-uniform logits, as a trained model has
    models = {"fp32": fp32, "bf16": copy.deepcopy(fp32).to(torch.bfloat16)}
    print(f"CPU: {describe_cpu()}; {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"the sampling tools' default here: {default_precision('cpu')}")
    print(f"model {os.path.basename(args.config)} ({sum(t.numel() for t in fp32.parameters()) / 1e6:.1f}M "
          f"parameters, {fp32.block_size} tokens), steps {args.num_inference_steps or fp32.num_inference_steps}, "
          f"CFG {args.cfg}, best of {args.repeats}")
    results = {}
    for bs in args.batch_sizes:
        cond = torch.randint(0, fp32.num_classes, (bs,))
        order = torch.rand(bs, fp32.block_size).argsort(1)
        best = {name: float("inf") for name in models}
        for name, m in models.items():  # warm-up
            seconds(m, cond, order, args.num_inference_steps, args.cfg)
        for _ in range(args.repeats):
            for name, m in models.items():
                best[name] = min(best[name], seconds(m, cond, order, args.num_inference_steps, args.cfg))
        ratio = best["fp32"] / best["bf16"]
        results[bs] = ratio
        print(f"batch {bs:2d}: fp32 {best['fp32'] / bs:.3f} s/img, bf16 {best['bf16'] / bs:.3f} s/img; "
              f"bf16 speed / fp32 speed = {ratio:.2f}x", flush=True)
    return results


if __name__ == "__main__":
    main()
