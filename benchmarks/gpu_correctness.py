"""GPU checks that need no weights download: the reference cases on CUDA, bf16, and the compiled path.

    python benchmarks/gpu_correctness.py      # prints one line per check and exits non-zero on a failure
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIX = os.path.join(ROOT, "tests", "fixtures")

from RandAR.model.randar_gpt import RandARTransformer  # noqa: E402
from RandAR.utils.checkpoint import load_model_weights  # noqa: E402


def main():
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # compare in true fp32
    torch.backends.cudnn.allow_tf32 = False
    args = json.load(open(os.path.join(FIX, "randar_tiny_config.json")))["constructor_args"]
    model = load_model_weights(RandARTransformer(**args), os.path.join(FIX, "randar_tiny.safetensors")).to(device).eval()
    ref = load_file(os.path.join(FIX, "randar_tiny_generate.safetensors"))
    meta = json.load(open(os.path.join(FIX, "randar_tiny_generate.json")))
    cond, order = ref["cond"].to(device), ref["token_order"].to(device)
    failures = 0
    for compile_ in (False, True):
        for case in meta["cases"]:
            c = case["call"]
            ids = model.generate(cond, token_order=order, cfg_scales=c["cfg_scales"],
                                 num_inference_steps=c["num_inference_steps"], top_k=1, compile=compile_).cpu()
            ok = torch.equal(ids, ref[case["case"] + ".result_indices"])
            failures += not ok
            print(f"{'compiled' if compile_ else 'eager   '} fp32 {case['case']}: {'ok' if ok else 'MISMATCH'}")
    bf16 = model.to(torch.bfloat16)
    for compile_ in (False, True):
        ids = bf16.generate(cond, cfg_scales=(1.0, 4.0), num_inference_steps=6, compile=compile_)
        ok = ids.shape == (3, 16) and int(ids.min()) >= 0 and int(ids.max()) < 64
        failures += not ok
        print(f"{'compiled' if compile_ else 'eager   '} bf16 smoke: {'ok' if ok else 'FAILED'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
