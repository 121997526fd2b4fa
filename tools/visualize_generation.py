"""Random order at work: a few images being decoded, step by step, with parallel decoding and one token per step.

    python tools/visualize_generation.py --config configs/randar/randar_xl_0.7b_llamagen.yaml \
        --gpt-ckpt randar_0.7b_llamagen_360k.safetensors --vq-ckpt vq_ds16_c2i.pt --output-dir samples/vis

Each image gets one random token order (from its seed, as sample_c2i.py) and is generated twice, with the same
order, class and seed: in --num-inference-steps parallel steps (default 8) and one token per step. The decoding loop needs no hook: the
order, the schedule (RandAR.model.generate.parallel_decoding_schedule, the loop's own) and the final tokens say
which cells are known after every step. A frame shows the known cells with their pixels in the final image and
the others in grey: tokens never change once drawn, and decoding the final grid once (rather than each partial
grid, with some filler token in the unknown cells) keeps the convolutional decoder's view of a cell's neighbours
from changing what a known cell looks like from one frame to the next, so the last frame is the final image.

Writes <output-dir>/generation.gif (one frame per step; a run that has finished holds its final image) and
generation_strip.png (one row per image and run; the columns are the parallel run's steps, and the other runs
are shown after as many tokens as it had then, with their own step number).
"""
import argparse
import os
import sys
from dataclasses import replace
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.model.generate import CompiledDecoder, DecodeConfig, generate, parallel_decoding_schedule  # noqa: E402
from RandAR.model.orders import random_permutations  # noqa: E402
from RandAR.sampling.folder import class_labels, image_seeds  # noqa: E402
from RandAR.sampling.image_io import GREY  # noqa: E402
from RandAR.sampling.inputs import (USER_ERRORS, add_decoding_args, add_model_args, check_for_model,  # noqa: E402
                                    check_inputs, decode_config, load_models)
from RandAR.utils.atomic import atomic_path  # noqa: E402
from RandAR.utils.images import cells_to_pixels, labelled_row  # noqa: E402
from RandAR.utils.progress import line_buffered_output  # noqa: E402


def known_after_each_step(order: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """order (B, N) generation order, counts tokens per step -> bool (S, B, N) raster: cells known after step s."""
    B, N = order.shape
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(N).expand(B, N))  # step rank of each cell
    done = torch.tensor(np.cumsum(counts))
    return ranks[None] < done[:, None, None]


def decoding_frames(final: np.ndarray, known: torch.Tensor, patch: int) -> np.ndarray:
    """final uint8 (B, H, W, 3), known bool (S, B, N) -> uint8 (S, B, H, W, 3): known cells as in the final image,
    the others grey."""
    grid = final.shape[1] // patch
    frames = np.full((known.shape[0],) + final.shape, GREY, dtype=np.uint8)
    for s, step in enumerate(known.cpu().numpy()):
        for b, cells in enumerate(step):
            pixels = cells_to_pixels(cells.reshape(grid, grid), patch)
            frames[s, b][pixels] = final[b][pixels]
    return frames


def run_name(steps: int, n: int) -> str:
    return "one token per step" if len(parallel_decoding_schedule(n, steps)) == n else f"{steps} steps"


@torch.no_grad()
def decode_runs(model, tokenizer, labels: Sequence[int], seeds: Sequence[int], steps: Sequence[int],
                decode: DecodeConfig, decoder: Optional[CompiledDecoder] = None):
    """Each image generated once per entry of `steps` (decode's other settings) in its own seeded order -> per
    run: (frames uint8 (S, B, H, W, 3), counts, final uint8 (B, H, W, 3))."""
    device = model.tok_embeddings.weight.device
    N, patch = model.block_size, tokenizer.downsample_factor
    cond = torch.tensor(list(labels), device=device)
    order = random_permutations(len(seeds), [N], seeds)[0].to(device)
    runs = []
    for n_steps in steps:
        codes = generate(model, cond, replace(decode, num_inference_steps=n_steps), token_order=order,
                         seeds=torch.tensor(list(seeds), dtype=torch.long, device=device), decoder=decoder)
        final = tokenizer.decode_codes_to_img(codes, model.grid_size * patch)
        counts = parallel_decoding_schedule(N, n_steps)
        runs.append((decoding_frames(final, known_after_each_step(order.cpu(), counts), patch), counts, final))
    return runs


def caption(name: str, counts: Sequence[int], s: int) -> str:
    return f"{name}\nstep {s + 1}/{len(counts)}: +{counts[s]} ({sum(counts[:s + 1])} tokens)"


def animation_frames(runs, names: List[str], max_frames: int) -> List[np.ndarray]:
    """One picture per shown step: the images in rows, the runs side by side. Every step of the shortest run is
    shown; the longer runs' steps are thinned to about max_frames frames."""
    lengths = [len(counts) for _, counts, _ in runs]
    shown = sorted(set(range(min(lengths))) | set(np.linspace(0, max(lengths) - 1, max_frames).round().astype(int)))
    pictures = []
    for k in shown:
        rows = []
        for b in range(runs[0][0].shape[1]):
            panels = [frames[min(k, len(counts) - 1), b] for frames, counts, _ in runs]
            rows.append(labelled_row(panels, [caption(name, counts, min(k, len(counts) - 1))
                                              for name, (_, counts, _) in zip(names, runs)]))
        pictures.append(np.concatenate(rows))
    return pictures


def strip(runs, names: List[str]) -> np.ndarray:
    """Rows: each image under each run; columns: the first run's steps, the other runs shown after as many tokens."""
    rows = []
    first_counts = runs[0][1]
    for b in range(runs[0][0].shape[1]):
        for (frames, counts, _), name in zip(runs, names):
            done = np.cumsum(counts)
            steps = [int(np.searchsorted(done, t)) for t in np.cumsum(first_counts)]
            rows.append(labelled_row([frames[s, b] for s in steps], [caption(name, counts, s) for s in steps]))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def save_gif(pictures: List[np.ndarray], path: str, ms: int, hold_ms: int, colors: int = 128) -> str:
    """One palette for all frames, from the first and the last (between them they hold every colour: grey, and the
    final image's), without dithering: a pixel that does not change keeps its index, so the GIF stores only what
    changes from one frame to the next (about half the size of per-frame palettes)."""
    palette = Image.fromarray(np.concatenate([pictures[0], pictures[-1]])).quantize(
        colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    frames = [Image.fromarray(p).quantize(palette=palette, dither=Image.Dither.NONE) for p in pictures]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], loop=0, optimize=True,
                       duration=[ms] * (len(frames) - 1) + [hold_ms])
    return path


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_decoding_args(p)
    p.set_defaults(num_inference_steps=8)  # the parallel run; the other decodes one token per step
    p.add_argument("--num-images", type=int, default=3)
    p.add_argument("--class-ids", default=None,
                   help="comma-separated classes, one per image (default: drawn from --seed, as sample_c2i.py)")
    p.add_argument("--seed", type=int, default=0, help="with an image's index, gives its order and draws")
    p.add_argument("--max-frames", type=int, default=64, help="about this many frames in the animation")
    p.add_argument("--frame-ms", type=int, default=120, help="display time of one frame (the last: 2 s)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--output-dir", default="samples/visualize")
    return p.parse_args(argv)


def main(argv=None):
    line_buffered_output()
    args = parse_args(argv)
    try:
        steps = [args.num_inference_steps, -1]
        decode = decode_config(args)
        if args.num_images < 1 or args.max_frames < 1:
            raise ValueError("--num-images and --max-frames must be >= 1")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, tokenizer = load_models(check_inputs(args.config, args.gpt_ckpt, args.vq_ckpt), device,
                                       args.precision)
        decode, _ = check_for_model(model, tokenizer, decode, None)
        labels = ([int(c) for c in args.class_ids.split(",")] if args.class_ids else
                  class_labels(range(args.num_images), model.num_classes, args.seed))
        if not all(0 <= c < model.num_classes for c in labels):
            raise ValueError(f"--class-ids {args.class_ids}: this model has classes 0..{model.num_classes - 1}")
        decoder = CompiledDecoder(model) if args.compile else None
        runs = decode_runs(model, tokenizer, labels, image_seeds(args.seed, range(len(labels))), steps, decode,
                           decoder)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    names = [run_name(s, model.block_size) for s in steps]
    gif = save_gif(animation_frames(runs, names, args.max_frames), os.path.join(args.output_dir, "generation.gif"),
                   args.frame_ms, 2000)
    png = os.path.join(args.output_dir, "generation_strip.png")
    with atomic_path(png) as tmp:
        Image.fromarray(strip(runs, names)).save(tmp, format="PNG")
    print(f"wrote {gif}, {png}", flush=True)
    return runs


if __name__ == "__main__":
    main()
