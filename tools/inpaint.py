"""Inpainting with a class-conditional RandAR, zero-shot: regenerate the masked part of an image.

    python tools/inpaint.py --config configs/randar/randar_xl_0.7b_llamagen.yaml \
        --gpt-ckpt randar_0.7b_llamagen_360k.safetensors --vq-ckpt vq_ds16_c2i.pt \
        --image in.png --mask mask.png --class-id 207 --num-samples 4 --output-dir samples/inpaint

The image is ADM-centre-cropped to the model's resolution (token grid x downsample factor, 256 px for the
official models) and tokenised. The mask has the image's size; white (>= 128) = regenerate, black = keep. A
token whose patch (downsample factor x downsample factor pixels) has no white pixel after the crop is known:
the known tokens come first in the order and enter the KV cache in one forward pass, then the others are
generated in random order with parallel decoding and CFG. By default nothing is blended: the output is the
decoded tokens (the kept region is the tokenizer's reconstruction of the input, as in the paper); --paste-known
WIDTH pastes the input back outside the regenerated cells, feathered over WIDTH pixels.

Writes <output-dir>/<image stem>_inpaint_{i:03d}.png per sample (pasted with --paste-known) and
<image stem>_inpaint_comparison.png, captioned: input, input with the regenerated cells in grey, the tokenizer's
reconstruction of the input, the samples (then the pasted ones). Non-RGB images are converted to RGB.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.applications.editing import complete_images, known_from_pixel_mask  # noqa: E402
from RandAR.model.generate import CompiledDecoder  # noqa: E402
from RandAR.sampling.inputs import (USER_ERRORS, add_editing_args, check_at_least_one, check_for_model,  # noqa: E402
                                    check_inputs, decode_config, load_models)
from RandAR.sampling.image_io import (crop_image_and_mask, encode_image, grey_out, open_mask,  # noqa: E402
                                      open_rgb, save_results)
from RandAR.sampling.folder import image_seeds  # noqa: E402
from RandAR.utils.progress import line_buffered_output  # noqa: E402
from RandAR.utils.images import cells_to_pixels, paste_known  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_editing_args(p, default_output_dir="samples/inpaint")
    p.add_argument("--mask", required=True, help="same size as --image; white = regenerate, black = keep")
    return p.parse_args(argv)


def main(argv=None):
    line_buffered_output()
    args = parse_args(argv)
    try:  # the flags and inputs, checked before the models are built
        image = open_rgb(args.image)
        mask = open_mask(args.mask, image.size)
        decode = decode_config(args)
        check_at_least_one(num_samples=args.num_samples, batch_size=args.batch_size)
        inputs = check_inputs(args.config, args.gpt_ckpt, args.vq_ckpt)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer = load_models(inputs, device, args.precision)
        decode, _ = check_for_model(model, tokenizer, decode, None, class_id=args.class_id)
        patch = tokenizer.downsample_factor
        size = model.grid_size * patch
        crop, pixel_mask = crop_image_and_mask(image, mask, size)
        known = known_from_pixel_mask(torch.from_numpy(pixel_mask), patch).to(device)
        if bool(known.all()):
            raise ValueError(f"the white region of {args.mask} lies outside the centre crop: nothing to regenerate")
        tokens = encode_image(tokenizer, crop, device)
        print(f"{int(known.sum())} of {known.numel()} tokens known, {int((~known).sum())} to generate, "
              f"{args.num_samples} sample(s) of class {args.class_id}", flush=True)
        seeds = image_seeds(args.seed, range(args.num_samples))  # sample i's order and draws
        decoder = CompiledDecoder(model) if args.compile else None
        results = complete_images(model, tokenizer, decode, args.class_id, seeds, args.batch_size, tokens,
                                  known[None], size, decoder=decoder)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    regenerated = cells_to_pixels((~known).view(model.grid_size, -1).cpu().numpy(), patch)
    pasted = None if args.paste_known is None else paste_known(results, crop, regenerated, args.paste_known)
    panels = {"input": crop, "masked input": grey_out(crop, ~known, patch),
              "tokenizer\nreconstruction": tokenizer.decode_codes_to_img(tokens, size)[0]}
    stem = os.path.splitext(os.path.basename(args.image))[0] + "_inpaint"
    paths = save_results(results, panels, args.output_dir, stem, pasted)
    print("wrote " + ", ".join(paths), flush=True)


if __name__ == "__main__":
    main()
