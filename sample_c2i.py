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

from RandAR.sampling.cli import add_decoding_args, add_model_args, add_run_args, run_sampling
from RandAR.utils.logger import line_buffered_output


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_run_args(p)
    add_decoding_args(p)
    p.add_argument("--num-fid-samples", type=int, default=50000)
    return p.parse_args(argv)


def main(argv=None):
    line_buffered_output()
    run_sampling(parse_args(argv))


if __name__ == "__main__":
    main()
