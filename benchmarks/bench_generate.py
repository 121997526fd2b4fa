"""Generation latency of RandAR: parallel decoding at several step counts, optionally against the original release.

    python benchmarks/bench_generate.py                                   # RandAR-L and XL, CPU fp32
    python benchmarks/bench_generate.py --device cuda --dtype bf16        # on a GPU
    python benchmarks/bench_generate.py --original-repo /path/to/ziqipang-RandAR   # also time the original

Random weights: latency does not depend on them. For each (config, batch) it prints seconds per image,
images/s, transformer forward passes, peak memory, the time spent outside the forward passes (the loop's own
overhead), and the 256-step / 88-step time ratio with its two terms from a least-squares fit
t(steps) = per_step * steps + fixed: `per_step` (mostly one read of the weights per step) and `fixed` (the
arithmetic for all tokens, the same at any step count).

Warm-up (and, with --compile, compilation: CUDA graphs on CUDA) runs before the timer.
The compiled decode step must build exactly one graph per batch size there, and a timed call must build none
(dynamo's error_on_recompile is on while timing): otherwise the script stops with an error instead of printing
figures of a recompiling or eager-fallback run.
"""
import argparse
import importlib.util
import os
import resource
import sys
import time

import numpy as np
import torch
import torch._dynamo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from RandAR.model.generate import CompiledDecoder  # noqa: E402
from RandAR.model.builder import build_randar  # noqa: E402
from RandAR.utils.config import load_config  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (includes weights)


class ForwardTimer:
    """Counts and times the transformer forward passes of one generation call: every method in `methods`
    that the model has (decode_step) and the compiled step of `decoder` (a CompiledDecoder, or None) are
    wrapped for the duration."""

    def __init__(self, model, device, methods, decoder=None):
        self.model, self.device, self.decoder = model, device, decoder
        self.originals = {m: getattr(model, m) for m in methods if getattr(model, m, None) is not None}
        self.calls, self.seconds = 0, 0.0

    def _timed(self, fn):
        def timed(*args, **kwargs):
            sync(self.device)
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            self.seconds += time.perf_counter() - t
            self.calls += 1
            return out
        return timed

    def __enter__(self):
        for name, fn in self.originals.items():
            setattr(self.model, name, self._timed(fn))
        if self.decoder is not None:
            self.compiled = self.decoder.step
            self.decoder.step = self._timed(self.compiled)
        return self

    def __exit__(self, *exc):
        for name in self.originals:
            delattr(self.model, name)  # back to the class's method
        if self.decoder is not None:
            self.decoder.step = self.compiled


def compiled_graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def cudagraph_skips() -> int:
    return torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]


def load_original_class(repo):
    """Import the original release's RandARTransformer from a user's clone, under another package name."""
    pkg_dir = os.path.join(repo, "RandAR")
    spec = importlib.util.spec_from_file_location("RandAR_original", os.path.join(pkg_dir, "__init__.py"),
                                                  submodule_search_locations=[pkg_dir])
    module = importlib.util.module_from_spec(spec)
    sys.modules["RandAR_original"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("RandAR_original.model.randar_gpt").RandARTransformer


def time_generate(model, cond, steps, cfg, device, methods, repeats, extra):
    times = []
    for _ in range(repeats):
        order = torch.rand(cond.shape[0], model.block_size, device=device).argsort(1)
        with ForwardTimer(model, device, methods, extra.get("decoder")) as ft:
            sync(device)
            t = time.perf_counter()
            model.generate(cond, token_order=order, cfg_scales=(cfg, cfg), num_inference_steps=steps,
                           temperature=1.0, top_k=0, top_p=1.0, **extra)
            sync(device)
            times.append((time.perf_counter() - t, ft.calls, ft.seconds))
    return min(times, key=lambda x: x[0])  # best of the repeats: least disturbed by the machine


@torch.inference_mode()  # the original's generate() does not disable autograd itself; its scripts do
def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["configs/randar/randar_l_0.3b_llamagen.yaml",
                                                    "configs/randar/randar_xl_0.7b_llamagen.yaml"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, nargs="+", default=[256, 88, 64])
    p.add_argument("--cfg", type=float, default=4.0, help="constant CFG scale (> 1: the guided batch is doubled)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--original-repo", default=None, help="a clone of github.com/ziqipang/RandAR to compare with")
    p.add_argument("--compile", action="store_true",
                   help="also time our torch.compile'd decode step (a CompiledDecoder: CUDA graphs on CUDA)")
    p.add_argument("--compile-backend", default="inductor", help="aot_eager: gpu_check.sh's CPU dry run")
    p.add_argument("--warmup-only", action="store_true",
                   help="only compile and warm up (fills inductor's on-disk cache for a later timed run)")
    p.add_argument("--md", default=None, help="append the results as markdown tables to this file")
    p.add_argument("--override", nargs="*", default=[], help="config overrides, e.g. ar_model.params.n_layer=12")
    args = p.parse_args()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    original_cls = load_original_class(args.original_repo) if args.original_repo else None
    torch.manual_seed(0)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else os.cpu_count()} "
          f"{'GPU' if device.type == 'cuda' else 'CPU threads ' + str(torch.get_num_threads())}), dtype {dtype}, "
          f"CFG {args.cfg}, torch {torch.__version__}")
    rows, ratios, speedups = [], [], []
    for cfg_path in args.configs:
        cfg = load_config(os.path.join(ROOT, cfg_path) if not os.path.isabs(cfg_path) else cfg_path, args.override)
        model = build_randar(cfg, device=device, dtype=dtype).eval()
        with torch.no_grad():
            torch.nn.init.normal_(model.output.weight, std=0.02)  # non-uniform logits, as a trained model has
        ours = ["decode_step"]
        impls = [] if args.warmup_only else [("ours", model, ours, {})]
        if args.compile:
            impls.append(("compiled", model, ours, {"decoder": CompiledDecoder(model, backend=args.compile_backend)}))
        if original_cls is not None and not args.warmup_only:
            orig = original_cls(**cfg.ar_model.params).to(device=device, dtype=dtype).eval()
            orig.load_state_dict(model.state_dict(), strict=True)
            orig.freqs_cis = orig.freqs_cis.to(device)
            impls.append(("original", orig, ["forward_inference"], {}))
        name = os.path.basename(cfg_path).replace(".yaml", "")
        for bs in args.batch_sizes:
            cond = torch.randint(0, model.num_classes, (bs,), device=device)
            for impl, m, methods, extra in impls:
                # Warm-up (and compilation) outside the timer, at the cheapest measured step count: the compiled
                # step has one shape per batch whatever the step count (checked: no graph is built while timing).
                before, skips = compiled_graphs(), cudagraph_skips()
                warm_order = torch.rand(bs, m.block_size, device=device).argsort(1)
                m.generate(cond, token_order=warm_order, cfg_scales=(args.cfg, args.cfg),
                           num_inference_steps=min(args.steps, key=lambda s: s if s > 0 else 1e9), **extra)
                built = compiled_graphs() - before
                if impl == "compiled":
                    print(f"{name:28s} bs {bs:2d} {impl:8s} warm-up compiled {built} graph(s)", flush=True)
                    if built != 1:
                        sys.exit(f"error: {name} batch {bs}: the compiled decode step built {built} graphs at "
                                 f"warm-up, expected exactly 1 per batch size (0: nothing compiled, it ran eager; "
                                 f"more: it recompiles per step count)")
                    if device.type == "cuda" and cudagraph_skips() != skips:
                        sys.exit(f"error: {name} batch {bs}: inductor ran the compiled decode step without CUDA "
                                 f"graphs ({cudagraph_skips() - skips} skip(s); its log says why)")
                if args.warmup_only:
                    continue
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                per_steps = {}
                before = compiled_graphs()
                for steps in args.steps:
                    try:
                        with torch._dynamo.config.patch(error_on_recompile=True):
                            t, calls, fwd = time_generate(m, cond, steps, args.cfg, device, methods, args.repeats,
                                                          extra)
                    except torch._dynamo.exc.RecompileError as e:
                        sys.exit(f"error: {name} batch {bs} {impl} {steps} steps recompiled during a timed run: {e}")
                    per_steps[steps] = t
                    rows.append((name, bs, impl, steps, t / bs, bs / t, calls, 1 - fwd / t, peak_memory_mib(device),
                                 built if impl == "compiled" else "-"))
                    print(f"{name:28s} bs {bs:2d} {impl:8s} steps {steps:4d}: {t / bs:8.3f} s/img "
                          f"{bs / t:8.2f} img/s  forwards {calls:4d}  outside forwards {100 * (1 - fwd / t):5.1f}%  "
                          f"peak {peak_memory_mib(device):8.0f} MiB", flush=True)
                if compiled_graphs() != before:
                    sys.exit(f"error: {name} batch {bs} {impl}: {compiled_graphs() - before} graph(s) compiled "
                             f"during the timed runs")
                if len(per_steps) >= 2:
                    s = np.array(sorted(per_steps), dtype=float)
                    t = np.array([per_steps[k] for k in sorted(per_steps)])
                    per_step, fixed = np.polyfit(s, t, 1)
                    hi, lo = max(per_steps), min(per_steps)
                    ratios.append((name, bs, impl, hi, lo, per_steps[hi] / per_steps[lo], per_step, fixed))
                    print(f"{'':28s} bs {bs:2d} {impl:8s} ratio t({hi})/t({lo}) = {per_steps[hi] / per_steps[lo]:.2f} "
                          f"(per step {per_step * 1e3:.1f} ms, fixed {fixed:.2f} s; "
                          f"ideal {hi}/{lo} = {hi / lo:.2f})", flush=True)
            for other in [i[0] for i in impls if i[0] != "ours" and not args.warmup_only]:
                for steps in args.steps:
                    ref = [r for r in rows if r[:4] == (name, bs, "ours", steps)][-1]
                    new = [r for r in rows if r[:4] == (name, bs, other, steps)][-1]
                    speedups.append((name, bs, steps, other, ref[4] / new[4]))
                    print(f"{'':28s} bs {bs:2d} {other} vs ours (eager) at {steps} steps: time ratio "
                          f"{ref[4] / new[4]:.2f}x (> 1: {other} is faster)")
        del model
    if args.md and not args.warmup_only:
        write_markdown(args.md, rows, ratios, speedups)


def write_markdown(path, rows, ratios, speedups):
    with open(path, "a") as f:
        f.write("\n| model | batch | impl | steps | s/img | img/s | forwards | outside forwards | peak MiB | "
                "graphs at warm-up |\n|---|---|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.4f} | {r[5]:.2f} | {r[6]} | {100 * r[7]:.1f}% | "
                    f"{r[8]:.0f} | {r[9]} |\n")
        f.write("\n| model | batch | impl | t(hi)/t(lo) steps | ratio | per-step term | fixed term |\n"
                "|---|---|---|---|---|---|---|\n")
        for name, bs, impl, hi, lo, ratio, per_step, fixed in ratios:
            f.write(f"| {name} | {bs} | {impl} | {hi}/{lo} (ideal {hi / lo:.2f}) | {ratio:.2f} | "
                    f"{per_step * 1e3:.2f} ms | {fixed:.3f} s |\n")
        if speedups:
            f.write("\n| model | batch | steps | impl | time of ours (eager) / time of impl |\n|---|---|---|---|---|\n")
            for name, bs, steps, impl, x in speedups:
                f.write(f"| {name} | {bs} | {steps} | {impl} | {x:.2f}x |\n")


if __name__ == "__main__":
    main()
