"""Outpainting with a class-conditional RandAR, zero-shot: the input fills one region of the canvas and the rest
is generated.

    python tools/outpaint.py --config configs/randar/randar_xl_0.7b_llamagen.yaml \
        --gpt-ckpt randar_0.7b_llamagen_360k.safetensors --vq-ckpt vq_ds16_c2i.pt \
        --image in.png --class-id 207 --region center --extrapolation-factor 2 --output-dir samples/outpaint

The canvas is the model's token grid times --extrapolation-factor (1: the training resolution; 2: a 512 px
canvas for a 256 px model, with the resolution-extrapolation RoPE table, see --ntk-boundary). --region puts
the input in the centre (a square of side --region-size x the canvas), or on the left/right/top/bottom
(full height/width, --region-size of the other side); e.g. --region center --region-size 0.5
--extrapolation-factor 2 keeps a 256 px input at its own scale in the middle of a 512 px canvas. The input is
resized to cover the region and centre-cut (ADM centre crop for a square region), then tokenised; its tokens
are known and come first in the order, the others are generated in random order with parallel decoding and
CFG. By default nothing is blended: the output is the decoded tokens (as in the paper); --paste-known WIDTH
pastes the input back over its region, feathered over WIDTH pixels.

Writes <output-dir>/<image stem>_outpaint_{i:03d}.png per sample (pasted with --paste-known) and
<image stem>_outpaint_comparison.png, captioned: the input as fitted to its region, the canvas with the cells to
generate in grey, the tokenizer's reconstruction of the known cells, the samples (then the pasted ones). Non-RGB images are
converted to RGB.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.applications.editing import OUTPAINT_REGIONS, complete_images, place_region, region_box  # noqa: E402
from RandAR.applications.resolution_extrapolation import extrapolation_grid, extrapolation_rope  # noqa: E402
from RandAR.model.generate import CompiledDecoder  # noqa: E402
from RandAR.sampling.inputs import (USER_ERRORS, add_editing_args, check_at_least_one, check_for_model,  # noqa: E402
                                    check_inputs, decode_config, load_models)
from RandAR.sampling.image_io import GREY, encode_image, fit_to_box, open_rgb, save_results  # noqa: E402
from RandAR.sampling.folder import image_seeds  # noqa: E402
from RandAR.utils.progress import line_buffered_output  # noqa: E402
from RandAR.utils.images import cells_to_pixels, paste_known  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_editing_args(p, default_output_dir="samples/outpaint")
    p.add_argument("--region", choices=OUTPAINT_REGIONS, default="center", help="where the input goes")
    p.add_argument("--region-size", type=float, default=0.5,
                   help="the region's side (center) or width/height (left, right / top, bottom) as a fraction "
                        "of the canvas side, rounded to whole tokens")
    p.add_argument("--extrapolation-factor", type=float, default=1.0,
                   help="canvas side / training resolution (the token grid times it must be whole)")
    p.add_argument("--ntk-boundary", type=int, default=2,
                   help="with --extrapolation-factor > 1: RoPE frequencies below this index (per axis) are "
                        "extrapolated, the others interpolated")
    return p.parse_args(argv)


def main(argv=None):
    line_buffered_output()
    args = parse_args(argv)
    try:  # the flags and inputs, checked before the models are built
        image = open_rgb(args.image)
        decode = decode_config(args)
        check_at_least_one(num_samples=args.num_samples, batch_size=args.batch_size)
        inputs = check_inputs(args.config, args.gpt_ckpt, args.vq_ckpt)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer = load_models(inputs, device, args.precision)
        decode, _ = check_for_model(model, tokenizer, decode, None, class_id=args.class_id)
        patch = tokenizer.downsample_factor
        grid = extrapolation_grid(model, args.extrapolation_factor)
        rope = None if grid == model.grid_size else extrapolation_rope(model, args.extrapolation_factor,
                                                                       args.ntk_boundary).to(device)
        top, left, h, w = box = region_box(args.region, grid, args.region_size)
        region = fit_to_box(image, h * patch, w * patch)
        tokens, known = place_region(encode_image(tokenizer, region, device), box, grid)
        print(f"canvas {grid}x{grid} tokens ({grid * patch} px), input in {h}x{w} tokens at ({top}, {left}); "
              f"{int((~known).sum())} tokens to generate, {args.num_samples} sample(s) of class {args.class_id}",
              flush=True)
        seeds = image_seeds(args.seed, range(args.num_samples))  # sample i's order and draws
        decoder = CompiledDecoder(model) if args.compile else None
        results = complete_images(model, tokenizer, decode, args.class_id, seeds, args.batch_size, tokens, known,
                                  grid * patch, freqs_cis=rope, decoder=decoder)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    canvas = np.full((grid * patch, grid * patch, 3), GREY, dtype=np.uint8)
    canvas[top * patch:(top + h) * patch, left * patch:(left + w) * patch] = region
    generated = cells_to_pixels((~known).view(grid, grid).cpu().numpy(), patch)
    pasted = None if args.paste_known is None else paste_known(results, canvas, generated, args.paste_known)
    recon = tokenizer.decode_codes_to_img(tokens, grid * patch)[0]
    recon[generated] = GREY
    panels = {"input": region, "masked input": canvas, "tokenizer\nreconstruction": recon}
    stem = os.path.splitext(os.path.basename(args.image))[0] + "_outpaint"
    paths = save_results(results, panels, args.output_dir, stem, pasted)
    print("wrote " + ", ".join(paths), flush=True)


if __name__ == "__main__":
    main()
