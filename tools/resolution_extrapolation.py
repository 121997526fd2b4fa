"""Zero-shot resolution extrapolation: a 256 px RandAR (16x16 tokens) samples 512 px images (32x32 tokens).

    torchrun --nproc_per_node 8 tools/resolution_extrapolation.py --config configs/randar/randar_xl_0.7b_llamagen.yaml \
        --exp-name randar_0.7b_extrapolation --gpt-ckpt randar_0.7b_llamagen_360k.safetensors \
        --vq-ckpt vq_ds16_c2i.pt --cfg-scales 3.0,3.0 --spatial-cfg-scales 2.5,2.5 --num-inference-steps 1024 \
        --per-proc-batch-size 8 --num-fid-samples 50000 --sample-dir ./samples

Each image: first its low-resolution version (every --extrapolation-factor-th row and column) as an ordinary
image of the model's grid, then the other tokens of the large grid in random order with parallel decoding,
the low-resolution tokens as known context, under the extrapolation RoPE table (--ntk-boundary) and class CFG
plus, with --spatial-cfg-scales > 1, spatial CFG (a third branch that hides --spatial-masking-ratio of the
low-resolution context). --num-inference-steps applies to each of the two passes (default: the config's;
-1 or at least the token count: one token per step).

Writes <sample-dir>/<run-name>/{i:06d}.png, <sample-dir>/<run-name>.npz and the run's stamp as sample_c2i.py
does (resume, --force, --debug, any number of processes). The original guide's `tools/search_cfg_weights.py
... --cfg-scales 3.0,3.0 --spatial-cfg-scales 2.5,2.5` runs this script.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.applications.resolution_extrapolation import (extrapolation_grid, extrapolation_rope,  # noqa: E402
                                                          generate_resolution_extrapolation)
from RandAR.model.generate import CompiledDecoder  # noqa: E402
from RandAR.sampling.inputs import (USER_ERRORS, add_decoding_args, add_extrapolation_args, add_model_args,  # noqa: E402
                                    add_run_args, check_at_least_one, check_for_model, check_inputs, ckpt_name,
                                    decode_config, load_models, parse_pair, resolve_precision, run_stamp,
                                    sampling_settings)
from RandAR.sampling.folder import (PACK_TIMEOUT, batches, claim_run_folder, class_labels, image_seeds,  # noqa: E402
                                    my_missing_indices, png_name, run_name, save_debug_grid)
from RandAR.sampling.image_io import save_png  # noqa: E402
from RandAR.utils.distributed import barrier, cleanup, create_npz_from_sample_folder, init_distributed  # noqa: E402
from RandAR.utils.progress import line_buffered_output  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_run_args(p)
    add_decoding_args(p, cfg_scales="3.0,3.0")
    add_extrapolation_args(p)
    p.add_argument("--num-fid-samples", type=int, default=50000)
    return p.parse_args(argv)


def extrapolation_settings(args) -> dict:
    """The extrapolation flags, checked."""
    if args.extrapolation_factor < 2:
        raise ValueError(f"--extrapolation-factor must be >= 2, got {args.extrapolation_factor}")
    if not 0.0 <= args.spatial_masking_ratio <= 1.0:
        raise ValueError(f"--spatial-masking-ratio must be in [0, 1], got {args.spatial_masking_ratio}")
    return dict(spatial_cfg_scales=parse_pair(args.spatial_cfg_scales, "--spatial-cfg-scales"),
                spatial_masking_ratio=args.spatial_masking_ratio, extrapolation_factor=args.extrapolation_factor,
                ntk_boundary=args.ntk_boundary)


@torch.no_grad()
def sample_batch(model, tokenizer, indices, decode, extrapolation, args, size_eval, decoder=None):
    """Images `indices` -> uint8 (B, size_eval, size_eval, 3); labels and seeds as sample_c2i.py's, so image i's
    low-resolution pass is the image sample_c2i.py makes for index i with the same settings."""
    device = model.tok_embeddings.weight.device
    labels = class_labels(indices, model.num_classes, args.global_seed, args.class_sampling)
    seeds = torch.tensor(image_seeds(args.global_seed, indices), dtype=torch.long)
    ids, _ = generate_resolution_extrapolation(model, torch.tensor(labels, device=device), decode=decode, seeds=seeds,
                                               decoder=decoder, **extrapolation)
    return tokenizer.decode_codes_to_img(ids, size_eval), labels


def main(argv=None):
    line_buffered_output()
    args = parse_args(argv)
    try:  # every check that needs no model, before anything is built or written
        decode = decode_config(args)
        extrapolation = extrapolation_settings(args)
        check_at_least_one(per_proc_batch_size=args.per_proc_batch_size)
        inputs = check_inputs(args.config, args.gpt_ckpt, args.vq_ckpt)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    dist = init_distributed(timeout=PACK_TIMEOUT)
    try:
        model, tokenizer = load_models(inputs, dist.device, args.precision)
        if model.position_order == "raster":
            raise ValueError("resolution extrapolation needs a random-order model (position_order: random)")
        extrapolation_rope(model, args.extrapolation_factor, args.ntk_boundary)  # checks --ntk-boundary
        decode, size = check_for_model(
            model, tokenizer, decode, args.image_size, grid=extrapolation_grid(model, args.extrapolation_factor),
            guided=decode.cfg_scales[-1] > 1.0 or extrapolation["spatial_cfg_scales"][-1] > 1.0,
            fix="use --cfg-scales 1.0,1.0 --spatial-cfg-scales 1.0,1.0")
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    decoder = CompiledDecoder(model) if args.compile else None  # compiled at its first call
    size_eval = args.image_size_eval or size
    settings = sampling_settings(decode, image_size=size, image_size_eval=size_eval,
                                 precision=resolve_precision(args.precision, dist.device),
                                 global_seed=args.global_seed, class_sampling=args.class_sampling, **extrapolation,
                                 second_pass_schedule="original")  # stamped: earlier folders used another one
    folder = os.path.join(args.sample_dir, run_name(args.exp_name, ckpt_name(args.gpt_ckpt), settings))

    if args.debug:  # a grid of the first batch, for a look before a long run
        if dist.is_main:
            start = time.time()
            images, labels = sample_batch(model, tokenizer, range(args.per_proc_batch_size), decode, extrapolation,
                                          args, size_eval, decoder)
            save_debug_grid(images, labels, f"{folder}-debug.png", time.time() - start)
        cleanup()
        return

    claim_run_folder(folder, run_stamp(inputs, settings), dist, args.force)  # resume only the same run
    mine, total = my_missing_indices(folder, args.num_fid_samples, dist)
    start = time.time()
    for batch in batches(mine, total, args.per_proc_batch_size, dist, desc=f"cfg {decode.cfg_scales[0]}-"
                                                                           f"{decode.cfg_scales[1]}"):
        images, _ = sample_batch(model, tokenizer, batch, decode, extrapolation, args, size_eval, decoder)
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
