"""Train a VQ tokenizer (LlamaGen VQModel) on images read from train.tar, without perceptual or GAN losses.

    python tools/train_tokenizer.py --config configs/tokenization/toy_vq.yaml --data-path data/toy \
        --results-dir results/toy_vq --image-size 32 [train.iterations=3000 train.lr=2e-3 ...]

The config holds the model (`model:` target/params, what build_tokenizer reads) and the training settings
(`train:`, see RandAR.utils.config_schema.VQTrainArgs); trailing `key=value` arguments override either.
Writes into --results-dir: config.yaml, checkpoints/iters_<step>.safetensors (+ iters_<step>/train.pt, the
optimizer and LR schedule; a rerun resumes from the newest and reads the same batches as an uninterrupted run),
recon/<step>.png (inputs above reconstructions), log.jsonl, and at the end vq.safetensors (weights only, loads
strictly with build_tokenizer) and metrics.json (held-out MSE, code usage).
"""
import argparse
import json
import os
import sys
import time

import torch
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.dataset.augmentation import CenterCrop, to_tokenizer_input  # noqa: E402
from RandAR.dataset.builder import build_image_dataset  # noqa: E402
from RandAR.model.tokenizers import build_tokenizer  # noqa: E402
from RandAR.training import vq as tt  # noqa: E402
from RandAR.training.checkpoint_folders import CheckpointError, clear_temporaries  # noqa: E402
from RandAR.utils.atomic import write_json  # noqa: E402
from RandAR.utils.checkpoint import atomic_save_safetensors  # noqa: E402
from RandAR.utils.config_schema import ConfigError  # noqa: E402
from RandAR.utils.versions import require_versions  # noqa: E402
from RandAR.utils.progress import progress  # noqa: E402
from RandAR.utils.progress import line_buffered_output  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a VQ tokenizer (reconstruction + codebook losses).")
    p.add_argument("--config", required=True, help="tokenization YAML with `model:` and `train:` sections")
    p.add_argument("--data-path", required=True, help="folder with train.tar (and val.tar for evaluation)")
    p.add_argument("--dataset", default="imagenet", choices=["imagenet", "folder"],
                   help="imagenet: <data-path>/{train,val}.tar; folder: <data-path>/{train,val}/<class>/<file>")
    p.add_argument("--results-dir", required=True, help="checkpoints, PNGs, logs and the final vq.safetensors")
    p.add_argument("--image-size", type=int, required=True, help="ADM centre-crop size of the training images")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=2e-3 model.params.codebook_size=512")
    return p.parse_args(argv)


def held_out_images(args, n: int) -> torch.Tensor:
    """n images of the val split if there is one, else of the train split (then the numbers are not held out)."""
    crop = CenterCrop(args.image_size)
    try:
        ds = build_image_dataset(args.dataset, args.data_path, is_train=False, transform=crop)
    except FileNotFoundError:
        print("no val split found: evaluating on training images", flush=True)
        ds = build_image_dataset(args.dataset, args.data_path, is_train=True, transform=crop)
    return tt.fixed_images(ds, n)


def export(model, cfg, results_dir: str, eval_images: torch.Tensor, step: int) -> dict:
    """Final weights (what build_tokenizer loads) and the held-out reconstruction report."""
    meta = {"config": json.dumps(OmegaConf.to_container(cfg.model, resolve=True)), "step": str(step)}
    atomic_save_safetensors(model.state_dict(), os.path.join(results_dir, "vq.safetensors"), meta)
    recs, codes = tt.reconstruct(model, eval_images)
    metrics = tt.reconstruction_metrics(eval_images, recs, codes, model.codebook_size)
    metrics["step"] = step
    write_json(metrics, os.path.join(results_dir, "metrics.json"))
    grid = tt.spread(len(eval_images), 32)
    tt.save_recon_grid(eval_images[grid], recs[grid], os.path.join(results_dir, "recon", "final.png"))
    return metrics


def main(argv=None) -> dict:
    line_buffered_output()
    args = parse_args(argv)
    cfg, targs = tt.load_train_config(args.config, args.overrides)
    os.makedirs(args.results_dir, exist_ok=True)
    OmegaConf.save(cfg, os.path.join(args.results_dir, "config.yaml"))
    ckpt_dir = os.path.join(args.results_dir, "checkpoints")
    clear_temporaries(ckpt_dir)
    torch.manual_seed(targs.seed)  # the initial weights

    model = build_tokenizer(cfg.model).train()
    print(f"{cfg.model.target}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"{model.codebook_size} codes, {args.image_size // model.downsample_factor}^2 tokens per image", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=targs.lr, betas=(targs.beta1, targs.beta2),
                                  weight_decay=targs.weight_decay)
    scheduler = tt.build_schedule(optimizer, targs)
    usage = tt.CodeUsage(model.codebook_size, targs.usage_window)
    start = tt.resume_latest(ckpt_dir, model, optimizer, scheduler, usage)
    if start:
        print(f"resumed from {ckpt_dir} at step {start}", flush=True)
    else:
        tt.init_for_training(model)

    train_set = build_image_dataset(args.dataset, args.data_path, is_train=True, transform=CenterCrop(args.image_size))
    batches = tt.step_batches(train_set, targs.batch_size, targs.seed, start, targs.num_workers)
    eval_images = held_out_images(args, targs.num_eval_images)
    grid = tt.spread(len(eval_images), 32)  # the images shown in reconstruction PNGs, from every class
    meta = {"config": json.dumps(OmegaConf.to_container(cfg, resolve=True))}

    log = open(os.path.join(args.results_dir, "log.jsonl"), "a")
    pbar = progress(range(start, targs.iterations), initial=start, total=targs.iterations, dynamic_ncols=True)
    t0 = time.time()
    for step in pbar:
        x = next(batches)
        if targs.flip:
            x = tt.random_flip(x, targs.seed, step)
        lr = optimizer.param_groups[0]["lr"]
        loss, parts, idx, z = tt.optimize_step(model, optimizer, to_tokenizer_input(x, model), targs)
        scheduler.step()
        usage.update(step, idx)
        done = step + 1
        if tt.restart_due(done, targs):
            tt.restart_dead_codes(model, usage.dead(step), z, targs.seed, step)

        if done % targs.log_every == 0 or done == targs.iterations:
            record = {"step": done, "loss": loss.item(), **parts, "codes_used": usage.used(step),
                      "lr": lr, "elapsed_s": round(time.time() - t0, 1)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            pbar.set_postfix(rec=f"{parts['rec']:.4f}", vq=f"{parts['vq']:.4f}", codes=record["codes_used"])
        if done % targs.sample_every == 0:
            recs, _ = tt.reconstruct(model, eval_images[grid])
            tt.save_recon_grid(eval_images[grid], recs, os.path.join(args.results_dir, "recon", f"{done:07d}.png"))
        if done % targs.ckpt_every == 0 or done == targs.iterations:
            tt.save_state(ckpt_dir, done, model, optimizer, scheduler, usage, meta, targs.keep_checkpoints)
    pbar.close()
    log.close()

    metrics = export(model, cfg, args.results_dir, eval_images, max(start, targs.iterations))
    print(f"held-out reconstruction ({metrics['num_images']} images): mse {metrics['mse']:.5f} "
          f"psnr {metrics['psnr']:.2f} dB, {metrics['codes_used']}/{model.codebook_size} codes used "
          f"(perplexity {metrics['code_perplexity']:.1f}); training took {time.time() - t0:.0f}s", flush=True)
    print(f"wrote {os.path.join(args.results_dir, 'vq.safetensors')}", flush=True)
    return metrics


if __name__ == "__main__":
    require_versions(accelerate=False)
    try:
        main()
    except (ConfigError, CheckpointError) as e:  # a wrong setting, a damaged state, a full disk: one line
        sys.exit(f"error: {e}")
