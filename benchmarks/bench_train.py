"""Training-step throughput of RandAR (forward, backward, AdamW step), in image tokens per second.

    python benchmarks/bench_train.py                                    # CPU: tiny and L, fp32 and bf16 autocast
    python benchmarks/bench_train.py --configs toy --steps 5            # CPU: the quickstart's model
    python benchmarks/bench_train.py --device cuda --configs tiny l xl  # GPU: bf16 autocast, fused AdamW

For each config it measures with and without gradient checkpointing and, with --compile, with torch.compile.
Random data: throughput does not depend on it. Also prints how long the latent-code data loader takes per
batch, to show it is not the bottleneck (--data-path: a folder of extracted codes).
"""
import argparse
import os
import sys
import time

import torch
import torch._dynamo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from RandAR.model.builder import build_randar  # noqa: E402
from RandAR.utils.config import load_config  # noqa: E402

CONFIGS = {"tiny": "configs/randar/randar_tiny.yaml", "toy": "configs/randar/randar_toy.yaml",
           "l": "configs/randar/randar_l_0.3b_llamagen.yaml", "xl": "configs/randar/randar_xl_0.7b_llamagen.yaml",
           "xxl": "configs/randar/randar_xxl_1.4b_llamagen.yaml"}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(cfg, batch, device, grad_ckpt, compile_, steps, warmup, precision, backend="inductor"):
    """(tokens/s, median step seconds, peak GiB); warm-up steps (and compilation) are not timed, and a timed
    step that recompiles is an error."""
    model = build_randar(cfg, device=device).train()
    model.grad_checkpointing = grad_ckpt
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    fwd = torch.compile(model, backend=backend) if compile_ else model
    idx = torch.randint(0, model.vocab_size, (batch, model.block_size), device=device)
    cond = torch.randint(0, model.num_classes, (batch,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        sync(device)
        t = time.perf_counter()
        with amp, torch._dynamo.config.patch(error_on_recompile=i >= warmup):
            _, loss, _ = fwd(idx, cond, targets=idx)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    t = sorted(times)[len(times) // 2]  # median step
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return batch * model.block_size / t, t, mem


def bench_loader(data_path, batch, block_size, vocab_size, num_workers, n=20):
    from RandAR.dataset.latent import LatentCodeDataset

    ds = LatentCodeDataset(data_path)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=num_workers, drop_last=True)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    return (time.perf_counter() - t) / n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS),
                   help="default: tiny l on CPU, tiny l xl on CUDA")
    p.add_argument("--batch", type=int, default=None, help="per-step batch (default 64 tiny, 8 CPU / 32 GPU otherwise)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile")
    p.add_argument("--compile-backend", default="inductor", help="aot_eager: gpu_check.sh's CPU dry run")
    p.add_argument("--grad-ckpt", choices=["both", "on", "off"], default="both", help="gradient checkpointing")
    p.add_argument("--md", default=None, help="append the results as a markdown table to this file")
    p.add_argument("--data-path", default=None, help="latent-code folder, to time the data loader")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                   help="default: bf16 on CUDA; fp32 and bf16 on CPU (CPUs with avx512_bf16 or AMX gain from bf16)")
    args = p.parse_args()
    device = torch.device(args.device)
    names = args.configs or (["tiny", "l", "xl"] if device.type == "cuda" else ["tiny", "l"])
    precisions = args.precisions or (["bf16"] if device.type == "cuda" else ["fp32", "bf16"])
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    ckpts = {"both": (False, True), "on": (True,), "off": (False,)}[args.grad_ckpt]
    md = []
    for name in names:
        cfg = load_config(os.path.join(ROOT, CONFIGS[name]))
        batch = args.batch or (64 if name in ("tiny", "toy") else (32 if device.type == "cuda" else 8))
        for precision in precisions:
            for compile_ in ([False, True] if args.compile else [False]):
                for grad_ckpt in ckpts:
                    tok_s, t, mem = bench(cfg, batch, device, grad_ckpt, compile_, args.steps, args.warmup,
                                          precision, args.compile_backend)
                    md.append(f"| {name} | {precision} | {batch} | {grad_ckpt} | {compile_} | {tok_s:.0f} | "
                              f"{t * 1e3:.1f} | {mem:.2f} |")
                    print(f"{name:5s} {precision} batch {batch:3d} grad_ckpt {grad_ckpt!s:5s} "
                          f"compile {compile_!s:5s}: {tok_s:10.0f} tokens/s  {t * 1e3:8.1f} ms/step  "
                          f"peak {mem:6.2f} GiB", flush=True)
        if args.data_path:
            t_load = bench_loader(args.data_path, batch, cfg.ar_model.params.block_size,
                                  cfg.ar_model.params.vocab_size, args.num_workers)
            print(f"{name:5s} data loader: {t_load * 1e3:.2f} ms per batch of {batch} ({args.num_workers} workers)")
    if args.md:
        with open(args.md, "a") as f:
            f.write("\n| config | precision | batch | grad ckpt | compile | tokens/s | ms/step | peak GiB |\n"
                    "|---|---|---|---|---|---|---|---|\n" + "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
