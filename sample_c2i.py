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
`--debug` writes a grid of the first batch to <sample-dir>/<run-name>-debug.png and exits.
"""
import argparse
import sys


from RandAR.utils.checkpoint import CheckpointMismatchError
from RandAR.utils.distributed import cleanup, init_distributed
from RandAR.utils.sample_io import (PACK_TIMEOUT, add_sampling_args, check_inputs, load_models, parse_pair, sample_run,
                                    spec_from_args)

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_args(p)
    p.add_argument("--cfg-scales", default="1.0,4.0",
                   help="linear CFG from the first scale (nothing decoded) to the second (all decoded); "
                        "a,a for a constant scale; guidance is off when the second is <= 1")
    p.add_argument("--num-fid-samples", type=int, default=50000)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg_scales = parse_pair(args.cfg_scales, "--cfg-scales")
        inputs = check_inputs(args)  # paths and cheap compatibility first: nothing is built before they pass
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    dist = init_distributed(timeout=PACK_TIMEOUT)
    try:
        model, tokenizer = load_models(args, dist.device, inputs)
        spec = spec_from_args(args, model, tokenizer, cfg_scales, dist.device)
    except (FileNotFoundError, ValueError, CheckpointMismatchError) as e:
        sys.exit(f"error: {e}")
    sample_run(args, dist, model, tokenizer, spec, inputs)
    cleanup()


if __name__ == "__main__":
    main()
