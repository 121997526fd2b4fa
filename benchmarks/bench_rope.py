"""Training-step time of a RandAR config with RoPE as one complex multiply (RandAR.model.rope, eager mode) against
the same rotation in real arithmetic on strided halves (what torch.compile gets). Interleaved rounds in one
process, so the slow drift of a shared machine hits both alike; prints the median of each and their ratio.

    python benchmarks/bench_rope.py --config configs/randar/randar_toy.yaml --bf16
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import RandAR.model.randar_gpt as randar_gpt  # noqa: E402
from RandAR.utils.config import instantiate_from_config, load_config  # noqa: E402


def rope_real(x, freqs_cis):
    xs, f = x.float().unflatten(-1, (-1, 2)), freqs_cis.float().unsqueeze(2)
    out = torch.stack([xs[..., 0] * f[..., 0] - xs[..., 1] * f[..., 1],
                       xs[..., 1] * f[..., 0] + xs[..., 0] * f[..., 1]], dim=-1)
    return out.flatten(3).type_as(x)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/randar/randar_toy.yaml")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as the quickstart trains on fast CPUs")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    args = p.parse_args()
    torch.manual_seed(0)
    model = instantiate_from_config(load_config(args.config).ar_model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    idx = torch.randint(0, model.vocab_size, (args.batch, model.block_size))
    cond = torch.randint(0, model.num_classes, (args.batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            _, loss, _ = model(idx, cond, targets=idx)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    forms = {"complex": randar_gpt.apply_rotary_emb, "real": rope_real}
    times = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name, fn in forms.items():
            randar_gpt.apply_rotary_emb = fn
            step()  # warm-up
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.config}, batch {args.batch}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"{torch.get_num_threads()} threads")
    for name, t in times.items():
        print(f"RoPE {name:7s}: median {medians[name]:.1f} ms/step  (rounds: {', '.join(f'{x:.0f}' for x in t)})")
    print(f"real / complex: {medians['real'] / medians['complex']:.2f}x")


if __name__ == "__main__":
    main()
