"""The CPU quickstart: the whole RandAR pipeline, end to end, on a generated dataset, in minutes.

    python tools/quickstart.py                 # or: make demo
    python tools/quickstart.py --quick         # a reduced run (the test suite's), about two minutes
    python tools/quickstart.py --seeds 0,1,2   # the whole chain per seed in <out>/seed_<s>, then mean and range

--seed seeds every stage: the dataset draw, the tokenizer's and the classifier's training, RandAR's training
(train_c2i.py --global-seed) and sampling. Seed 0 is what the configs' defaults give.

Each stage runs the project's real scripts, exactly as documented in GETTING_STARTED.md, and is skipped when its
output exists (--force reruns everything):

 1. data        tools/make_toy_dataset.py: 10 classes of 32x32 shapes as train.tar/val.tar (ImageNet layout)
 2. tokenizer   tools/train_tokenizer.py: a small LlamaGen-architecture VQ tokenizer, 32x32 -> 8x8 tokens
 3. classifier  tools/train_classifier.py: the evaluator's feature extractor for this domain
 4. extract     tools/extract_latent_codes.py: the train split into code files
 5. train       train_c2i.py: a small RandAR (configs/randar/randar_toy.yaml)
 6. search      tools/search_cfg_weights.py --evaluator toy: CFG scales 1.0-4.0, then the best one on more samples
 7. steps       sample_c2i.py at 64 steps (one token per step), 22 and 8 (parallel decoding), best CFG
 8. inpaint     tools/inpaint.py on a held-out image with its centre masked (also pasted back: --paste-known)
 9. outpaint    tools/outpaint.py on the same image: its centre kept, the rest generated
10. visualize   tools/visualize_generation.py: three images being decoded, 8 parallel steps and one token per step

Outputs in <out>/results: samples_per_class.png, steps_comparison.png, inpainting.png, outpainting.png,
generation.gif and generation_strip.png, training_curves.png, metrics.json, and the summary table printed at the end.
With --seeds, <out>/spread.json holds each figure's mean, minimum and maximum over the seeds.
"""
import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from RandAR.sampling.folder import class_labels, precision_name  # noqa: E402
from RandAR.toy.data import load_tar_arrays  # noqa: E402
from RandAR.toy.classifier import build_toy_extractor  # noqa: E402
from RandAR.utils.atomic import atomic_path, write_json  # noqa: E402
from RandAR.utils.images import image_grid  # noqa: E402
from RandAR.utils.distributed import default_precision, describe_cpu  # noqa: E402
from RandAR.utils.run_stamp import StampMismatchError, claim, file_fingerprint  # noqa: E402
from RandAR.utils.progress import line_buffered_output  # noqa: E402

MODEL_CONFIG = "configs/randar/randar_toy.yaml"
TOKENIZER_CONFIG = "configs/tokenization/toy_vq.yaml"
NUM_CLASSES, IMAGE_SIZE = 10, 32
STEP_COUNTS = (64, 22, 8)  # one token per step; about a third; an eighth
EXP = "toy"
# Sampling keeps the 4 likeliest of the 128 codes: for a model trained for minutes this lowers FID and what
# parallel decoding costs in FID (README, "Quickstart results").
TOP_K = 4
PASTE_FEATHER = 2  # the inpainting and outpainting pictures also show the input pasted back, feathered over 2 px

# Sizes of the full run and of --quick (the test suite's reduced run).
# None: the configs' and tools' own defaults (what GETTING_STARTED.md's stage-by-stage commands run).
FULL = dict(train_per_class=1000, val_per_class=100, vq_iters=None, cls_iters=None, gpt_iters=None,
            search_scales="1.0,4.0", search_interval=0.5, search_samples=500, final_samples=1000,
            steps_samples=2000, batch=250)
QUICK = dict(train_per_class=40, val_per_class=10, vq_iters=20, cls_iters=10, gpt_iters=20,
             search_scales="1.0,2.0", search_interval=1.0, search_samples=40, final_samples=60,
             steps_samples=20, batch=20)


def check_stamp(out: str, settings: dict) -> None:
    """Finished stages are reused only if made from the same configs, dataset code and run settings: record them in
    <out>/stamp.json (RandAR.utils.run_stamp) on the first run, and stop naming what differs when a later run does."""
    stamp = {**settings, **{rel: file_fingerprint(os.path.join(ROOT, rel))
                            for rel in (MODEL_CONFIG, TOKENIZER_CONFIG, "RandAR/toy/data.py")}}
    try:
        claim(os.path.join(out, "stamp.json"), stamp, outputs=[os.path.join(out, "data")], what="quickstart run",
              fix="rerun with --force to start over there, or choose another --out")
    except StampMismatchError as e:
        sys.exit(f"quickstart: {e}")


def run(stage: str, argv, log_dir: str):
    """Run one documented command (argv after `python`), teeing its output to <log_dir>/<stage>.log."""
    cmd = [sys.executable] + [str(a) for a in argv]
    print(f"\n=== {stage}: {' '.join(cmd[1:])}", flush=True)
    os.makedirs(log_dir, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.time()
    with open(os.path.join(log_dir, f"{stage}.log"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        proc.wait()
    if proc.returncode:
        sys.exit(f"quickstart: stage '{stage}' failed (exit {proc.returncode}); its output is in "
                 f"{os.path.join(log_dir, stage + '.log')}. Fix it and run again: finished stages are kept.")
    print(f"=== {stage}: done in {time.time() - start:.0f}s", flush=True)


def load_npz(path):
    with np.load(path) as f:
        return f["arr_0"]


def pack_val_reference(data_dir: str, path: str):
    """The held-out split as the evaluator's reference batch (ADM centre crop, like the training images)."""
    images, _ = load_tar_arrays(os.path.join(data_dir, "val.tar"), IMAGE_SIZE)
    with atomic_path(path) as tmp:
        np.savez(tmp, arr_0=images)


def training_curve_png(log_path: str, out: str) -> list:
    """Plot the loss of train_c2i.py's log (no plotting library needed) and return the (step, loss) points."""
    pts = [(int(m.group(1)), float(m.group(2))) for m in
           re.finditer(r"step (\d+) \| loss ([0-9.]+)", open(log_path).read())]
    W, H, pad = 640, 360, 48
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([pad, pad // 2, W - pad // 2, H - pad], outline="black")
    d.text((pad, 4), "RandAR training loss (train_c2i.py log)", fill="black")
    if len(pts) >= 2:
        s0, s1 = pts[0][0], pts[-1][0]
        lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
        hi = hi if hi > lo else lo + 1

        def xy(s, v):
            return (pad + (W - 1.5 * pad) * (s - s0) / max(s1 - s0, 1),
                    H - pad - (H - 1.5 * pad) * (v - lo) / (hi - lo))
        d.line([xy(s, v) for s, v in pts], fill=(200, 30, 30), width=2)
        d.text((4, pad // 2), f"{hi:.2f}", fill="black")
        d.text((4, H - pad - 10), f"{lo:.2f}", fill="black")
        d.text((pad, H - pad + 6), f"step {s0}", fill="black")
        d.text((W - 2 * pad, H - pad + 6), f"step {s1}", fill="black")
    img.save(out)
    return pts


def labelled_rows(rows, names, scale: int = 3) -> Image.Image:
    """Stack image rows (uint8 [H, W, 3] each) with a text label on the left, enlarged for viewing."""
    rows = [np.kron(r, np.ones((scale, scale, 1), np.uint8)) for r in rows]
    lw = 90
    out = Image.new("RGB", (lw + max(r.shape[1] for r in rows), sum(r.shape[0] for r in rows)), "white")
    d, y = ImageDraw.Draw(out), 0
    for r, name in zip(rows, names):
        out.paste(Image.fromarray(r), (lw, y))
        d.text((4, y + r.shape[0] // 2 - 5), name, fill="black")
        y += r.shape[0]
    return out


def seed_list(text: str) -> list:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1,2, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds repeat in {text!r}")
    return seeds


def main(argv=None):
    line_buffered_output()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_output", help="where every stage writes (relative to the repository)")
    p.add_argument("--quick", action="store_true", help="a reduced run that checks the chain, not the quality")
    p.add_argument("--force", action="store_true", help="rerun every stage, even those whose outputs exist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=seed_list, default=None,
                   help="run the chain once per seed, in <out>/seed_<s>, and report each figure's mean and range")
    args = p.parse_args(argv)
    out = os.path.abspath(os.path.join(ROOT, args.out))
    if args.seeds is None:
        return quickstart(out, args.seed, args.quick, args.force)
    runs = {seed: quickstart(os.path.join(out, f"seed_{seed}"), seed, args.quick, args.force) for seed in args.seeds}
    spread = seed_spread(runs)
    write_json(spread, os.path.join(out, "spread.json"))
    print(f"\n=== RandAR quickstart over seeds {','.join(map(str, args.seeds))}: mean [min, max]")
    for name, v in spread["figures"].items():
        print(f"{name:34s} {v['mean']:8.3f}  [{v['min']:.3f}, {v['max']:.3f}]")
    print(f"spread.json in {out}")
    return spread


def seed_figures(metrics: dict) -> dict:
    """The figures of one run that the README's table reports."""
    figures = {"best_cfg_scale": metrics["best_cfg_scale"], "final_fid": metrics["final"]["fid"],
               "final_class_accuracy": metrics["final"]["class_accuracy"]}
    if metrics["cfg_search"].get("1.0"):
        figures["no_cfg_class_accuracy"] = metrics["cfg_search"]["1.0"]["class_accuracy"]
    for steps, m in metrics["steps"].items():
        figures[f"steps_{steps}_fid"] = m["fid"]
        figures[f"steps_{steps}_class_accuracy"] = m["class_accuracy"]
    figures["parallel_decoding_fid_change"] = metrics["parallel_decoding_fid_change"]
    if metrics.get("training_loss"):
        figures["final_training_loss"] = metrics["training_loss"]["last"]
    figures["wall_time_min"] = metrics["wall_time_s"] / 60
    return figures


def seed_spread(runs: dict) -> dict:
    """{seed: metrics} -> each figure's mean, min and max over the seeds (and the per-seed values)."""
    per_seed = {str(seed): seed_figures(m) for seed, m in runs.items()}
    names = [n for n in next(iter(per_seed.values())) if all(n in f for f in per_seed.values())]
    figures = {}
    for name in names:
        values = [f[name] for f in per_seed.values()]
        figures[name] = {"mean": float(np.mean(values)), "min": min(values), "max": max(values)}
    any_run = next(iter(runs.values()))
    return {"seeds": [int(s) for s in per_seed], "figures": figures, "per_seed": per_seed,
            "precision": any_run["precision"], "cpu": any_run["cpu"], "quick": any_run["quick"]}


def quickstart(out: str, seed: int, quick: bool, force: bool) -> dict:
    """The whole chain into `out` with one seed; returns metrics.json's contents."""
    size = dict(QUICK if quick else FULL)
    from RandAR.utils.config import load_config
    gpt_iters = size["gpt_iters"] or int(load_config(os.path.join(ROOT, MODEL_CONFIG)).max_iters)
    if force and os.path.isdir(out):
        shutil.rmtree(out)
    check_stamp(out, {"quick": quick, "seed": seed, "top_k": TOP_K, "step_counts": list(STEP_COUNTS),
                      **size})
    logs, results = os.path.join(out, "logs"), os.path.join(out, "results")
    os.makedirs(results, exist_ok=True)
    t0 = time.time()
    # Training and sampling run in bf16 on CPUs with native bfloat16 (about 2x faster there), else in float32.
    cpu, precision = describe_cpu(), default_precision("cpu")
    bf16 = precision == "bf16"
    print(f"CPU: {cpu}; training and sampling in {'bf16' if bf16 else 'float32'}", flush=True)
    data = os.path.join(out, "data")
    vq = os.path.join(out, "tokenizer", "vq.safetensors")
    classifier = os.path.join(out, "classifier.safetensors")
    codes = os.path.join(out, "codes", f"imagenet-toy_vq-adm-{IMAGE_SIZE}_codes")
    train_dir = os.path.join(out, "train")
    exp_dir = os.path.join(train_dir, f"{EXP}_bs_64_lr_0.002")
    gpt = os.path.join(exp_dir, "checkpoints", f"iters_{gpt_iters:08d}.safetensors")
    ref = os.path.join(out, "val_reference.npz")
    search_json = os.path.join(out, "search.json")
    samples = os.path.join(out, "samples")
    threads = os.cpu_count() or 1

    # 1-3: the data, the tokenizer and the evaluator's classifier
    if not os.path.isfile(os.path.join(data, "val.tar")):
        run("data", ["tools/make_toy_dataset.py", "--out", data, "--num-train-per-class", size["train_per_class"],
                     "--num-val-per-class", size["val_per_class"], "--seed", seed, "--image-size", IMAGE_SIZE],
            logs)
    if not os.path.isfile(vq):
        run("tokenizer", ["tools/train_tokenizer.py", "--config", TOKENIZER_CONFIG, "--data-path", data,
                          "--results-dir", os.path.dirname(vq), "--image-size", IMAGE_SIZE, f"train.bf16={bf16}",
                          f"train.seed={seed}"]
            + ([f"train.iterations={size['vq_iters']}"] if size["vq_iters"] else []), logs)
    if not os.path.isfile(classifier):
        run("classifier", ["tools/train_classifier.py", "--data-path", data, "--out", classifier,
                           "--image-size", IMAGE_SIZE, "--seed", seed]
            + (["--iterations", size["cls_iters"]] if size["cls_iters"] else []), logs)
    if not os.path.isfile(ref):
        pack_val_reference(data, ref)

    # 4-5: codes and the RandAR model
    run("extract", ["tools/extract_latent_codes.py", "--data-path", data, "--code-path", os.path.dirname(codes),
                    "--vq-ckpt", vq, "--config", TOKENIZER_CONFIG, "--image-size", IMAGE_SIZE, "--aug-mode", "adm",
                    "--batch-size", 256, "--num-workers", 0], logs)  # resumable: instant when done
    if not os.path.isfile(gpt):
        short = [f"max_iters={gpt_iters}", f"ckpt_every={gpt_iters}", f"visualize_every={gpt_iters}",
                 "log_every=1"] if size["gpt_iters"] else []
        mixed_precision = "bf16" if bf16 else "no"
        run("train", ["train_c2i.py", "--config", MODEL_CONFIG, "--exp-name", EXP, "--data-path", codes,
                      "--vq-ckpt", vq, "--results-dir", train_dir, "--wandb-offline", "--num-workers", 0,
                      "--global-seed", seed,
                      f"accelerator.mixed_precision={mixed_precision}", *short], logs)

    common = ["--config", MODEL_CONFIG, "--exp-name", EXP, "--gpt-ckpt", gpt, "--vq-ckpt", vq,
              "--per-proc-batch-size", size["batch"], "--global-seed", seed, "--sample-dir", samples,
              "--top-k", TOP_K]
    # 6: CFG search with the domain's evaluator (resumable: finished scales are kept in search.json)
    run("search", ["tools/search_cfg_weights.py", *common, "--cfg-scales-search", size["search_scales"],
                   "--cfg-scales-interval", size["search_interval"],
                   "--num-fid-samples-search", size["search_samples"],
                   "--num-fid-samples-final", size["final_samples"], "--num-inference-steps", 22,
                   "--ref-path", ref, "--results-path", search_json, "--evaluator", "toy",
                   "--evaluator-path", classifier], logs)
    search = json.load(open(search_json))
    best = float(search["best_cfg_scale"])

    # 7: the same images (same seeds, labels, orders) at three step counts, at the best scale
    step_npz = {}
    for steps in STEP_COUNTS:
        run(f"steps{steps}", ["sample_c2i.py", *common, "--cfg-scales", f"1.0,{best}", "--num-inference-steps", steps,
                              "--num-fid-samples", size["steps_samples"]], logs)
        step_npz[steps] = max(glob.glob(os.path.join(samples, f"*-cfg-1.0-{best}-steps-{steps}-*.npz")),
                              key=os.path.getmtime)
    for steps, npz in step_npz.items():
        run(f"eval_steps{steps}", ["-m", "RandAR.toy.classifier", ref, npz, "--ckpt", classifier], logs)

    # 8: inpainting a held-out image (its centre 16x16 square regenerated)
    val_images, val_labels = load_tar_arrays(os.path.join(data, "val.tar"), IMAGE_SIZE)
    inpaint_dir = os.path.join(out, "inpaint")
    image_path, mask_path = os.path.join(inpaint_dir, "input.png"), os.path.join(inpaint_dir, "mask.png")
    os.makedirs(inpaint_dir, exist_ok=True)
    Image.fromarray(val_images[0]).save(image_path)
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(mask_path)
    run("inpaint", ["tools/inpaint.py", "--config", MODEL_CONFIG, "--gpt-ckpt", gpt, "--vq-ckpt", vq,
                    "--image", image_path, "--mask", mask_path, "--class-id", int(val_labels[0]),
                    "--num-samples", 4, "--cfg-scales", f"1.0,{best}", "--num-inference-steps", 8, "--top-k", TOP_K,
                    "--output-dir", inpaint_dir, "--device", "cpu", "--paste-known", PASTE_FEATHER], logs)
    # 9: outpainting the same image: its centre 16x16 kept, the rest of the 32x32 canvas generated
    outpaint_dir = os.path.join(out, "outpaint")
    run("outpaint", ["tools/outpaint.py", "--config", MODEL_CONFIG, "--gpt-ckpt", gpt, "--vq-ckpt", vq,
                     "--image", image_path, "--class-id", int(val_labels[0]), "--region", "center",
                     "--region-size", 0.5, "--num-samples", 4, "--cfg-scales", f"1.0,{best}",
                     "--num-inference-steps", 8, "--top-k", TOP_K, "--output-dir", outpaint_dir, "--device", "cpu",
                     "--paste-known", PASTE_FEATHER], logs)
    # 10: random order at work: three images decoded step by step, in 8 parallel steps and one token per step
    run("visualize", ["tools/visualize_generation.py", "--config", MODEL_CONFIG, "--gpt-ckpt", gpt, "--vq-ckpt", vq,
                      "--cfg-scales", f"1.0,{best}", "--num-inference-steps", 8, "--top-k", TOP_K,
                      "--seed", seed, "--device", "cpu", "--output-dir", results], logs)

    # ---- results: pictures, metrics.json, summary ------------------------------------------------------
    extractor = build_toy_extractor(classifier)

    def accuracy(npz):
        images = load_npz(npz)
        return extractor.class_accuracy(images, class_labels(range(len(images)), NUM_CLASSES, seed))

    metrics = {"cfg_search": {}, "steps": {}, "best_cfg_scale": best, "quick": quick}
    for scale, m in sorted(search["search"].items(), key=lambda kv: float(kv[0])):
        metrics["cfg_search"][scale] = {k: m[k] for k in ("fid", "inception_score", "precision", "recall")}
        metrics["cfg_search"][scale]["class_accuracy"] = accuracy(m["sample_npz"])
    metrics["final"] = {k: search["final"][k] for k in ("fid", "inception_score", "precision", "recall")}
    metrics["final"]["class_accuracy"] = accuracy(search["final"]["sample_npz"])
    for steps, npz in step_npz.items():
        m = json.load(open(os.path.splitext(npz)[0] + ".metrics.json"))
        metrics["steps"][str(steps)] = {"fid": m["fid"], "class_accuracy": accuracy(npz)}
    f_full, f_par = metrics["steps"]["64"]["fid"], metrics["steps"]["22"]["fid"]
    metrics["parallel_decoding_fid_change"] = (f_par - f_full) / f_full
    no_cfg = metrics["cfg_search"].get("1.0", {}).get("class_accuracy")
    metrics["cfg_gain_in_class_accuracy"] = None if no_cfg is None else metrics["final"]["class_accuracy"] - no_cfg
    metrics["wall_time_s"] = time.time() - t0
    metrics["cpu_threads"] = threads
    metrics["cpu"] = cpu
    metrics["precision"] = precision_name(precision)

    final_images = load_npz(search["final"]["sample_npz"])
    final_labels = np.array(class_labels(range(len(final_images)), NUM_CLASSES, seed))
    per_class = min(8, min(int((final_labels == c).sum()) for c in range(NUM_CLASSES)))
    names = json.load(open(os.path.join(data, "classes.json")))
    blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    rows = [image_grid(final_images[final_labels == c][:per_class] if per_class else blank[None], pad=0,
                       cols=max(per_class, 1)) for c in range(NUM_CLASSES)]
    labelled_rows(rows, [names[str(c)] for c in range(NUM_CLASSES)]).save(os.path.join(results, "samples_per_class.png"))
    step_rows = [image_grid(x, cols=len(x), pad=0) for x in (load_npz(step_npz[s])[:10] for s in STEP_COUNTS)]
    labelled_rows(step_rows, [f"{s} steps" for s in STEP_COUNTS]).save(os.path.join(results, "steps_comparison.png"))
    shutil.copyfile(os.path.join(inpaint_dir, "input_inpaint_comparison.png"), os.path.join(results, "inpainting.png"))
    shutil.copyfile(os.path.join(outpaint_dir, "input_outpaint_comparison.png"),
                    os.path.join(results, "outpainting.png"))
    curve = training_curve_png(os.path.join(exp_dir, "log.txt"), os.path.join(results, "training_curves.png"))
    metrics["training_loss"] = {"first": curve[0][1], "last": curve[-1][1]} if curve else None
    write_json(metrics, os.path.join(results, "metrics.json"))

    print("\n=== RandAR quickstart summary" + (" (--quick: checks the chain, not the quality)" if quick else ""))
    print(f"{'setting':28s} {'FID':>8s} {'IS':>7s} {'class acc':>10s}")
    for scale, m in metrics["cfg_search"].items():
        print(f"{'cfg 1.0->' + scale + ', 22 steps':28s} {m['fid']:8.2f} {m['inception_score']:7.2f} "
              f"{m['class_accuracy']:10.3f}")
    for steps, m in metrics["steps"].items():
        print(f"{'best cfg, ' + steps + ' steps':28s} {m['fid']:8.2f} {'':7s} {m['class_accuracy']:10.3f}")
    print(f"best CFG scale {best}; parallel decoding (22 vs 64 steps) changes FID by "
          f"{100 * metrics['parallel_decoding_fid_change']:+.1f}%; wall time {metrics['wall_time_s'] / 60:.1f} min")
    print(f"pictures and metrics.json in {results}")
    return metrics


if __name__ == "__main__":
    main()
