"""Sample class-conditional images for FID: PNGs, then one .npz for the evaluator (DiT's sample_ddp.py scheme).

    torchrun --nproc_per_node 8 sample_c2i.py --exp-name randar_0.7b \
        --config configs/randar/randar_xl_0.7b_llamagen.yaml --gpt-ckpt randar_0.7b_llamagen_360k.safetensors \
        --vq-ckpt vq_ds16_c2i.pt --cfg-scales 1.0,4.0 --num-inference-steps 88 --sample-dir ./samples

writes <sample-dir>/<run-name>/{i:06d}.png for i < --num-fid-samples and then <sample-dir>/<run-name>.npz
(`arr_0`, uint8 [N, H, W, 3]). Plain `python` runs one process. Image i's label, seed and token order
depend only on --global-seed and i, so the result does not depend on the number of processes, and a killed
run, started again with the same flags, only makes the missing PNGs. <sample-dir>/<run-name>.stamp.json
records the checkpoints' content fingerprints, the config and the sampling settings: a run whose inputs
differ from the stamp's stops before sampling (--force: remove that run's outputs and start afresh).
`--debug` writes a grid of the first batch to <sample-dir>/<run-name>-debug.png and exits. --config may be left
out for a checkpoint exported by train_c2i.py, which carries its config.
"""
import argparse
import os
import sys
import time

import torch

from RandAR.model.generate import CompiledDecoder, generate
from RandAR.model.orders import random_permutations
from RandAR.sampling.inputs import (USER_ERRORS, add_decoding_args, add_model_args, add_run_args, check_at_least_one,
                                    check_for_model, check_inputs, ckpt_name, decode_config, load_models,
                                    resolve_precision, run_stamp, sampling_settings)
from RandAR.sampling.folder import (PACK_TIMEOUT, batches, claim_run_folder, class_labels, image_seeds,
                                    my_missing_indices, png_name, run_name, save_debug_grid)
from RandAR.sampling.image_io import save_png
from RandAR.utils.distributed import barrier, cleanup, create_npz_from_sample_folder, init_distributed
from RandAR.utils.progress import line_buffered_output


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_run_args(p)
    add_decoding_args(p)
    p.add_argument("--num-fid-samples", type=int, default=50000)
    return p.parse_args(argv)


@torch.no_grad()
def sample_batch(model, tokenizer, indices, decode, args, size_eval, decoder=None):
    """Images `indices` -> uint8 (B, size_eval, size_eval, 3), each from its own label, seed and order."""
    device = model.tok_embeddings.weight.device
    labels = class_labels(indices, model.num_classes, args.global_seed, args.class_sampling)
    seeds = image_seeds(args.global_seed, indices)
    order = None
    if model.position_order != "raster":
        order = random_permutations(len(seeds), [model.block_size], seeds)[0].to(device)
    codes = generate(model, torch.tensor(labels, device=device), decode, token_order=order,
                     seeds=torch.tensor(seeds, device=device), decoder=decoder)      # (B, N) raster
    # The float image is resized before rounding, as the original's decode_codes_to_img(codes, size_eval).
    return tokenizer.decode_codes_to_img(codes, size_eval), labels


def main(argv=None):
    line_buffered_output()
    args = parse_args(argv)
    try:  # every check that needs no model, before anything is built or written
        decode = decode_config(args)
        check_at_least_one(per_proc_batch_size=args.per_proc_batch_size)
        inputs = check_inputs(args.config, args.gpt_ckpt, args.vq_ckpt)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    dist = init_distributed(timeout=PACK_TIMEOUT)
    try:
        model, tokenizer = load_models(inputs, dist.device, args.precision)
        decode, size = check_for_model(model, tokenizer, decode, args.image_size)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    decoder = CompiledDecoder(model) if args.compile else None  # compiled at its first call
    size_eval = args.image_size_eval or size
    settings = sampling_settings(decode, image_size=size, image_size_eval=size_eval,
                                 precision=resolve_precision(args.precision, dist.device),
                                 global_seed=args.global_seed, class_sampling=args.class_sampling)
    folder = os.path.join(args.sample_dir, run_name(args.exp_name, ckpt_name(args.gpt_ckpt), settings))

    if args.debug:  # a grid of the first batch, for a look before a long run
        if dist.is_main:
            start = time.time()
            images, labels = sample_batch(model, tokenizer, range(args.per_proc_batch_size), decode, args, size_eval,
                                          decoder)
            save_debug_grid(images, labels, f"{folder}-debug.png", time.time() - start)
        cleanup()
        return

    claim_run_folder(folder, run_stamp(inputs, settings), dist, args.force)  # resume only the same run
    mine, total = my_missing_indices(folder, args.num_fid_samples, dist)
    start = time.time()
    for batch in batches(mine, total, args.per_proc_batch_size, dist, desc=f"cfg {decode.cfg_scales[0]}-"
                                                                           f"{decode.cfg_scales[1]}"):
        images, _ = sample_batch(model, tokenizer, batch, decode, args, size_eval, decoder)
        for index, image in zip(batch, images):
            save_png(image, os.path.join(folder, png_name(index)))
    barrier()
    if dist.is_main:
        secs = time.time() - start
        print(f"sampled {total} images in {secs:.1f}s ({total / max(secs, 1e-9):.2f} img/s)", flush=True)
        npz = create_npz_from_sample_folder(folder, args.num_fid_samples)
        print(f"wrote {npz} [{args.num_fid_samples} images of {size_eval}px]", flush=True)
    cleanup()


if __name__ == "__main__":
    main()
