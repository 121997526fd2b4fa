"""tools/visualize_generation.py on the tiny model: the frames show the decoding loop's schedule, cell by cell."""
import argparse
import os

import numpy as np
import torch
from PIL import Image

from RandAR.model.generate import DecodeConfig, parallel_decoding_schedule
from RandAR.sampling.image_io import GREY
from RandAR.sampling.inputs import check_inputs, load_models
from tests.helpers import ROOT, load_script

FIX = os.path.join(ROOT, "tests", "fixtures")
CONFIG = os.path.join(ROOT, "configs", "randar", "randar_tiny.yaml")
GPT, VQ = os.path.join(FIX, "randar_tiny.safetensors"), os.path.join(FIX, "vq_tiny.safetensors")


def test_frames_follow_the_schedule_and_end_on_the_sampled_image(tmp_path):
    vis = load_script("tools/visualize_generation.py")
    runs = vis.main(["--config", CONFIG, "--gpt-ckpt", GPT, "--vq-ckpt", VQ, "--num-images", "2",
                     "--num-inference-steps", "4", "--cfg-scales", "1.0,2.0", "--top-k", "8", "--max-frames", "8",
                     "--output-dir", str(tmp_path)])
    sample_c2i = load_script("sample_c2i.py")
    model, tokenizer = load_models(check_inputs(CONFIG, GPT, VQ), torch.device("cpu"))
    N, patch = model.block_size, tokenizer.downsample_factor
    for (frames, counts, final), steps in zip(runs, (4, -1)):
        assert counts == parallel_decoding_schedule(N, steps)  # the loop's own schedule
        assert frames.shape[0] == len(counts) and len(counts) == (N if steps == -1 else 4)
        # Cells (patch x patch) that are not blank: exactly the tokens decoded so far, with their final pixels.
        cells = frames.reshape(len(counts), 2, model.grid_size, patch, model.grid_size, patch, 3)
        final_cells = final.reshape(2, model.grid_size, patch, model.grid_size, patch, 3)
        shown = (cells != GREY).any(axis=(3, 5, 6))                                     # (S, B, g, g)
        assert (shown.sum(axis=(2, 3)) == np.cumsum(counts)[:, None]).all()
        assert shown[0].sum(axis=(1, 2)).tolist() == [1, 1]
        assert np.array_equal(np.where(shown[..., None, :, None, None], final_cells[None], GREY), cells)
        assert np.array_equal(frames[-1], final)
        # The final images are sample_c2i.py's: same labels, seeds, orders and sampling settings.
        decode = DecodeConfig((1.0, 2.0), steps, top_k=8)
        args = argparse.Namespace(global_seed=0, class_sampling="random")
        images, _ = sample_c2i.sample_batch(model, tokenizer, [0, 1], decode, args, final.shape[1])
        assert np.array_equal(final, images)
    # The strip: one row per image and run, one column per parallel step; the animation: all 16 one-token steps
    # thinned to 8 frames, plus every parallel step (0..3 are among them).
    assert Image.open(tmp_path / "generation_strip.png").size[0] > 4 * 128
    gif = Image.open(tmp_path / "generation.gif")
    expected = len(set(range(4)) | set(np.linspace(0, N - 1, 8).round().astype(int)))
    assert gif.n_frames == expected
