"""Correctness of the device paths against the tiny reference model of tests/fixtures (no weights download).

    python benchmarks/gpu_correctness.py --check generate   # the 10 greedy fixture generations, eager and compiled
    python benchmarks/gpu_correctness.py --check forward    # logits: fp32 vs the fixture, bf16 compiled vs eager
    python benchmarks/gpu_correctness.py --check train      # one training step's loss and gradients vs CPU

One line per check on stdout, the same as markdown table rows appended to --md; exit status 1 on a failure.
fp32 runs with TF32 off. "compiled" is generate with a CompiledDecoder (CUDA graphs on CUDA) or torch.compile(model).
--device cpu --compile-backend aot_eager is gpu_check.sh's dry run.
"""
import argparse
import copy
import json
import os
import sys

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIX = os.path.join(ROOT, "tests", "fixtures")

from RandAR.model.generate import CompiledDecoder, DecodeConfig, _generate  # noqa: E402
from RandAR.model.randar_gpt import RandARTransformer  # noqa: E402
from RandAR.utils.checkpoint import load_model_weights  # noqa: E402
from RandAR.utils.compat import canonical_config  # noqa: E402

COUNTERS = torch._dynamo.utils.counters
FP32_TOL = dict(atol=5e-4, rtol=1e-4)  # as tests/test_randar_model.py against the same fixtures


class Report:
    def __init__(self, md_path):
        self.md_path, self.failures = md_path, 0

    def row(self, check: str, ok: bool, result: str, detail: str = ""):
        self.failures += not ok
        line = f"| {check} | {'ok' if ok else '**FAIL**'} | {result} | {detail} |"
        print(line, flush=True)
        if self.md_path:
            with open(self.md_path, "a") as f:
                f.write(line + "\n")


def fixture_model(device) -> RandARTransformer:
    args = json.load(open(os.path.join(FIX, "randar_tiny_config.json")))["constructor_args"]
    model = RandARTransformer(**canonical_config({"ar_model": {"params": args}})["ar_model"]["params"])
    return load_model_weights(model, os.path.join(FIX, "randar_tiny.safetensors")).to(device).eval()


def compile_model(model, backend):
    return torch.compile(model, backend=backend, fullgraph=True)


def graphs() -> int:
    return COUNTERS["stats"]["unique_graphs"]


def cudagraph_skips() -> int:
    return COUNTERS["inductor"]["cudagraph_skips"]  # inductor counts each compiled graph it runs without CUDA graphs


def check_generate(device, backend, report):
    model = fixture_model(device)
    ref = load_file(os.path.join(FIX, "randar_tiny_generate.safetensors"))
    meta = json.load(open(os.path.join(FIX, "randar_tiny_generate.json")))
    cond, order = ref["cond"].to(device), ref["token_order"].to(device)

    def run(case, **kw):
        c = case["call"]
        decode = DecodeConfig(tuple(c["cfg_scales"]), c["num_inference_steps"], c["temperature"], c["top_k"],
                              c["top_p"])
        return _generate(model, cond, decode, token_order=order, return_logits=True, **kw)

    decoder = CompiledDecoder(model, backend=backend)
    for name, kw in [("eager", {}), ("compiled", {"decoder": decoder})]:
        before, skips = graphs(), cudagraph_skips()
        equal, close, err = 0, 0, 0.0
        for case in meta["cases"]:
            ids, logits = run(case, **kw)
            want = ref[case["case"] + ".step_logits"]
            equal += torch.equal(ids.cpu(), ref[case["case"] + ".result_indices"])
            close += torch.allclose(logits.cpu(), want, **FP32_TOL)
            err = max(err, (logits.cpu() - want).abs().max().item())
        n = len(meta["cases"])
        built = graphs() - before
        detail = f"max abs logit error {err:.1e} (tolerance {FP32_TOL})"
        ok = equal == n and close == n
        if name == "compiled":
            # Two shapes: batch 3 without CFG, 6 (3 x 2 branches) with it; any more is a recompile per step count.
            ok = ok and built <= 2
            detail += f"; graphs compiled {built} (at most 2: batch 3 and 3x2 with CFG)"
            if device.type == "cuda":
                ok = ok and cudagraph_skips() == skips
                detail += f"; CUDA graph skips {cudagraph_skips() - skips}"
        report.row(f"fp32 {name} generate, {n} fixture cases", ok, f"{equal}/{n} ids equal, {close}/{n} logits close",
                   detail)

    # bf16 autocast (training's numerics) through the static cache: fp32 cache, bf16 k/v cast on write.
    case = meta["cases"][7]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        e_ids, e_logits = run(case)
        s_ids, s_logits = run(case, static_shapes=True)
        c_ids, c_logits = run(case, decoder=decoder)
    ref32 = ref[case["case"] + ".step_logits"].to(device)
    scale = max((e_logits - ref32).abs().max().item(), 1e-2)
    diffs = [(s_logits - e_logits).abs().max().item(), (c_logits - e_logits).abs().max().item()]
    ok = max(diffs) <= scale
    report.row("bf16 autocast generate: static and compiled vs eager", ok,
               f"max abs logit diff static {diffs[0]:.2e}, compiled {diffs[1]:.2e}",
               f"tolerance: bf16's own error here, max |eager bf16 - fp32 fixture| = {scale:.2e}; ids equal "
               f"{int((s_ids == e_ids).sum())}/{e_ids.numel()} and {int((c_ids == e_ids).sum())}/{e_ids.numel()}")


def check_forward(device, backend, report):
    model = fixture_model(device)
    ref = load_file(os.path.join(FIX, "randar_tiny_forward.safetensors"))
    idx, cond, order = (ref[k].to(device) for k in ("idx", "cond", "token_order"))
    want = ref["token_logits"]
    for name, fwd in [("eager", model), ("compiled", compile_model(model, backend))]:
        logits, loss, _ = fwd(idx, cond, token_order=order, targets=idx)
        err = (logits.cpu() - want).abs().max().item()
        dl = abs(loss.item() - ref["loss"].item())
        ok = torch.allclose(logits.cpu(), want, **FP32_TOL) and dl < 5e-5
        report.row(f"fp32 {name} forward logits vs fixture", ok, f"max abs error {err:.1e}, loss error {dl:.1e}",
                   f"tolerance {FP32_TOL}, loss 5e-5")
    ref32 = want.to(device)
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    for name, m, amp in [("bf16 weights", bf16_model, False), ("bf16 autocast", model, True)]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            eager, _, _ = m(idx, cond, token_order=order)
            compiled, _, _ = compile_model(m, backend)(idx, cond, token_order=order)
        scale = max((eager.float() - ref32).abs().max().item(), 1e-2)
        diff = (compiled.float() - eager.float()).abs().max().item()
        report.row(f"{name} forward logits: compiled vs eager", diff <= scale, f"max abs diff {diff:.2e}",
                   f"tolerance: bf16's own error here, max |eager - fp32 fixture| = {scale:.2e}")


def train_step(device, backend):
    """Loss, gradients and the parameters after one AdamW step (fused on CUDA) of the fixture model on the
    forward fixture's batch, in training mode with dropout off (so that CPU and device draw nothing)."""
    model = fixture_model(device).train()
    for m in model.modules():
        if hasattr(m, "p") and isinstance(m.p, float):  # nn.Dropout and DropPath
            m.p = 0.0
    model.cls_embedding.dropout_prob = 0.0
    ref = load_file(os.path.join(FIX, "randar_tiny_forward.safetensors"))
    idx, cond, order = (ref[k].to(device) for k in ("idx", "cond", "token_order"))
    fwd = compile_model(model, backend) if backend else model
    _, loss, _ = fwd(idx, cond, token_order=order, targets=idx)
    loss.backward()
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    opt.step()
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    return loss.item(), grads, finite, ref["loss"].item()


def check_train(device, backend, report):
    cpu_loss, cpu_grads, _, fixture_loss = train_step(torch.device("cpu"), None)
    report.row("training loss on CPU vs fixture", abs(cpu_loss - fixture_loss) < 5e-5,
               f"{cpu_loss:.6f} vs {fixture_loss:.6f}", "dropout off: the training pass is the fixture's forward")
    for name, b in [("eager", None), ("compiled", backend)]:
        loss, grads, finite, _ = train_step(device, b)
        gerr = max((grads[k] - cpu_grads[k]).abs().max().item() for k in grads)
        gmax = max(g.abs().max().item() for g in cpu_grads.values())
        ok = abs(loss - cpu_loss) < 5e-5 and all(torch.allclose(grads[k], cpu_grads[k], atol=1e-5, rtol=1e-3)
                                                 for k in grads) and finite
        report.row(f"{device.type} {name} training step vs CPU (grad checkpointing, AdamW"
                   f"{' fused' if device.type == 'cuda' else ''})", ok,
                   f"loss diff {abs(loss - cpu_loss):.1e}, max abs grad diff {gerr:.1e} (max grad {gmax:.1e})",
                   "tolerance: loss 5e-5, grads atol 1e-5 + rtol 1e-3; parameters finite after the step")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", required=True, choices=["generate", "forward", "train"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--compile-backend", default="inductor", help="aot_eager: the dry run's cheap stand-in")
    p.add_argument("--md", default=None, help="append the result rows (markdown) to this file")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # compare in true fp32
    torch.backends.cudnn.allow_tf32 = False
    report = Report(args.md)
    {"generate": check_generate, "forward": check_forward, "train": check_train}[args.check](
        device, args.compile_backend, report)
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
