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

Writes <sample-dir>/<run-name>/{i:06d}.png, <sample-dir>/<run-name>.npz and the run's stamp like sample_c2i.py
(resumable when the stamp matches, --force to start afresh; the same images on any number of processes; plain
`python` runs one process). --debug writes
<sample-dir>/<run-name>-debug.png, a grid of the first --per-proc-batch-size images, and stops. The
documentation's `torchrun tools/search_cfg_weights.py ... --cfg-scales 3.0,3.0 --spatial-cfg-scales 2.5,2.5
--num-inference-steps 1024 --debug` runs this.

The folder, resume, per-index labels and seeds, .npz packing and --debug grid are RandAR.sampling's; the
extrapolation itself is RandAR.applications.resolution_extrapolation. --config may be left out for a checkpoint
exported by train_c2i.py, which carries its config.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.sampling.cli import extrapolation_parser, run_extrapolation  # noqa: E402
from RandAR.utils.logger import line_buffered_output  # noqa: E402


def main(argv=None):
    """Sample --num-fid-samples extrapolated images into <sample-dir>/<run-name>/ and pack <run-name>.npz; with
    --debug, write <run-name>-debug.png (a grid of the first --per-proc-batch-size images) and stop."""
    line_buffered_output()
    run_extrapolation(extrapolation_parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    main()
