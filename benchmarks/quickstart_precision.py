"""bf16 against fp32 sampling quality on a finished quickstart: the same checkpoint, seeds, labels and orders.

    python tools/quickstart.py                                  # first: the quickstart (make demo)
    python benchmarks/quickstart_precision.py --out demo_output # then: FID and class accuracy in both precisions

Runs sample_c2i.py twice at the quickstart's best CFG scale (from its search.json), once with --precision bf16 and
once with --precision none (float32), and scores both with the quickstart's toy classifier against its held-out
images. Only the precision differs between the two runs, so the gap is what bf16 sampling costs in quality; compare
it with the spread over training seeds (python tools/quickstart.py --seeds 0,1,2).
"""
import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import quickstart as qs  # noqa: E402
from RandAR.sampling.folder import class_labels, precision_name  # noqa: E402
from RandAR.toy.classifier import build_toy_extractor  # noqa: E402
from RandAR.utils.distributed import describe_cpu  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output", help="the quickstart's --out")
    p.add_argument("--num-inference-steps", type=int, default=22)
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0, help="the quickstart's --seed (labels follow it)")
    args = p.parse_args(argv)
    out = os.path.abspath(os.path.join(ROOT, args.out))
    search_json, classifier = os.path.join(out, "search.json"), os.path.join(out, "classifier.safetensors")
    ckpts = sorted(glob.glob(os.path.join(out, "train", "*", "checkpoints", "iters_*.safetensors")))
    if not (os.path.isfile(search_json) and ckpts):
        sys.exit(f"quickstart_precision: {out} holds no finished quickstart (search.json and a RandAR checkpoint); "
                 f"run python tools/quickstart.py --out {args.out} first")
    with open(search_json) as f:
        best = float(json.load(f)["best_cfg_scale"])
    gpt, vq = ckpts[-1], os.path.join(out, "tokenizer", "vq.safetensors")
    samples, logs = os.path.join(out, "precision_samples"), os.path.join(out, "logs")
    extractor = build_toy_extractor(classifier)
    print(f"CPU: {describe_cpu()}; checkpoint {gpt}; CFG 1.0 to {best}, {args.num_inference_steps} steps, "
          f"{args.num_samples} samples per precision")
    results = {}
    for precision in ("bf16", "none"):
        qs.run(f"precision_{precision}", [
            "sample_c2i.py", "--config", qs.MODEL_CONFIG, "--exp-name", qs.EXP, "--gpt-ckpt", gpt, "--vq-ckpt", vq,
            "--per-proc-batch-size", args.batch_size, "--global-seed", args.seed, "--sample-dir", samples,
            "--top-k", qs.TOP_K, "--cfg-scales", f"1.0,{best}", "--num-inference-steps", args.num_inference_steps,
            "--num-fid-samples", args.num_samples, "--precision", precision], logs)
        name = precision_name(precision)
        npz = max(glob.glob(os.path.join(samples, f"*-steps-{args.num_inference_steps}-{name}*.npz")),
                  key=os.path.getmtime)
        qs.run(f"eval_precision_{precision}", ["-m", "RandAR.toy.classifier", os.path.join(out, "val_reference.npz"),
                                               npz, "--ckpt", classifier], logs)
        with open(os.path.splitext(npz)[0] + ".metrics.json") as f:
            fid = json.load(f)["fid"]
        images = qs.load_npz(npz)
        accuracy = extractor.class_accuracy(images, class_labels(range(len(images)), qs.NUM_CLASSES, args.seed))
        results[name] = {"fid": fid, "class_accuracy": accuracy}
    print(f"\n{'precision':10s} {'FID':>8s} {'class acc':>10s}")
    for name, m in results.items():
        print(f"{name:10s} {m['fid']:8.2f} {m['class_accuracy']:10.3f}")
    print(f"bf16 - fp32: FID {results['bf16']['fid'] - results['fp32']['fid']:+.2f}, class accuracy "
          f"{results['bf16']['class_accuracy'] - results['fp32']['class_accuracy']:+.3f}")
    return results


if __name__ == "__main__":
    main()
