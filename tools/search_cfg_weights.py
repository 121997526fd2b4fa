"""Search the CFG scale for FID: a sweep on a few samples, then the full evaluation at the best scale.

    torchrun --nproc_per_node 8 tools/search_cfg_weights.py --config configs/randar/randar_l_0.3b_llamagen.yaml \
        --exp-name randar_0.3b --gpt-ckpt randar_0.3b_llamagen_360k.safetensors --vq-ckpt vq_ds16_c2i.pt \
        --cfg-scales-search 2.0,8.0 --cfg-scales-interval 0.2 --num-fid-samples-search 10000 \
        --num-fid-samples-final 50000 --ref-path VIRTUAL_imagenet256_labeled.npz --results-path ./results \
        --sample-dir /tmp --per-proc-batch-size 128 --num-inference-steps 88

For each scale s of the grid, sample with linear CFG from 1.0 to s (as sample_c2i.py, into
<sample-dir>/<run-name>/, packed as <run-name>-<N>.npz) and evaluate; the results JSON is rewritten after
every scale and a re-run skips the scales already in it. Then sample --num-fid-samples-final images at the
scale with the lowest FID (its first images are the search's: an image depends on its index only) and record
the final numbers. One process group for the whole run: sampling is spread over the ranks, rank 0 evaluates.

--results-path: a .json file, or a folder that gets <exp-name>-<ckpt>-...-search.json. Its `settings` record
what the numbers depend on (content fingerprints of the checkpoints and of the reference batch, the resolved
config, the sampling settings, the evaluator); a re-run resumes from the file only when they are equal, and
otherwise stops naming the fields that differ. Each scale's sample folder has its own stamp (as sample_c2i.py).
--force starts afresh: the results file and the sample folders of this run are removed and made again.

With --cfg-scales a,b --spatial-cfg-scales c,d (the original guide's section 6) this script runs
tools/resolution_extrapolation.py with the same arguments instead, which takes none of the search's own flags.

--evaluator: `adm` (ADM's TF Inception-v3, graph from --evaluator-path / $RANDAR_INCEPTION_PATH), `toy` (the CPU
quickstart's classifier, checkpoint from --evaluator-path), or the dotted path of any class whose no-argument
instance has RandAR.eval.fid.FeatureExtractor's `pool_features` (see RandAR/eval/extractors.py).
"""
import argparse
import importlib.util
import json
import math
import os
import sys
import time
from dataclasses import replace
from datetime import timedelta

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.eval import fid  # noqa: E402
from RandAR.eval.extractors import EVALUATORS, build_extractor  # noqa: E402
from RandAR.model.generate import CompiledDecoder, generate  # noqa: E402
from RandAR.model.orders import random_permutations  # noqa: E402
from RandAR.sampling.inputs import (USER_ERRORS, add_decoding_args, add_model_args, add_run_args, check_at_least_one,  # noqa: E402
                                    check_for_model, check_inputs, ckpt_name, decode_config, load_models, parse_pair,
                                    resolve_precision, run_stamp, sampling_settings)
from RandAR.sampling.folder import (batches, claim_run_folder, class_labels, image_seeds, my_missing_indices,  # noqa: E402
                                    png_name, run_name, save_debug_grid)
from RandAR.sampling.image_io import save_png  # noqa: E402
from RandAR.utils.atomic import write_json  # noqa: E402
from RandAR.utils.distributed import (barrier, broadcast_object, cleanup,  # noqa: E402
                                      create_npz_from_sample_folder, init_distributed)
from RandAR.utils.run_stamp import StampMismatchError, differences_text, file_fingerprint, remove_outputs  # noqa: E402
from RandAR.utils.progress import line_buffered_output  # noqa: E402

# Ranks wait in a collective while rank 0 packs and evaluates (50k images with precision/recall: long).
EVAL_TIMEOUT = timedelta(hours=6)
SEARCH_ERRORS = USER_ERRORS + (ImportError,)  # ImportError: an --evaluator class path that does not import
EXTRAPOLATION_FLAGS = ("--cfg-scales", "--spatial-cfg-scales")  # these run resolution extrapolation instead
EXTRAPOLATION_TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resolution_extrapolation.py")


def add_search_args(p: argparse.ArgumentParser) -> list:
    """The search's own flags; returns their option strings."""
    actions = [
        p.add_argument("--cfg-scales-search", default="2.0,8.0", help="lowest,highest final CFG scale to try"),
        p.add_argument("--cfg-scales-interval", type=float, default=0.2),
        p.add_argument("--num-fid-samples-search", type=int, default=10000),
        # --num-fid-samples-report is the original script's name for it.
        p.add_argument("--num-fid-samples-final", "--num-fid-samples-report", type=int, default=50000),
        p.add_argument("--ref-path", default=None, help="reference batch, e.g. VIRTUAL_imagenet256_labeled.npz"),
        p.add_argument("--results-path", default="results", help="the results .json, or a folder for it"),
        p.add_argument("--evaluator", default="adm", help=f"one of {EVALUATORS} or a dotted class path"),
        p.add_argument("--evaluator-path", "--inception-path", default=None,
                       help=f"adm: classify_image_graph_def.pb (default ${fid.INCEPTION_ENV} or "
                            f"{fid.DEFAULT_INCEPTION_PATH}); toy: the classifier checkpoint"),
        p.add_argument("--eval-backend", default="tf", choices=fid.BACKENDS,
                       help="adm: run the Inception graph with TensorFlow or PyTorch (no TensorFlow; CUDA if "
                            "available)"),
        p.add_argument("--eval-batch-size", type=int, default=64, help="images per feature-extractor call"),
    ]
    return [o for a in actions for o in a.option_strings]


def build_parser() -> argparse.ArgumentParser:
    """sample_c2i.py's flags but --cfg-scales and --num-fid-samples (the search picks both), and the search's."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_run_args(p)
    add_decoding_args(p, cfg_scales=None)
    add_search_args(p)
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.ref_path is None and not args.debug:
        p.error("--ref-path (the reference .npz, e.g. VIRTUAL_imagenet256_labeled.npz) is required")
    return args


def run_extrapolation_instead(argv):
    """The original guide's resolution-extrapolation command (section 6) names this script: run
    tools/resolution_extrapolation.py with its arguments, unless search-only flags came with them (say which,
    rather than that script's bare "unrecognized arguments")."""
    search_only = set(add_search_args(argparse.ArgumentParser()))
    given = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in search_only]
    if given:
        sys.exit(f"error: {', '.join(given)}: with {' / '.join(EXTRAPOLATION_FLAGS)} this script runs "
                 f"resolution-extrapolation sampling (documentation section 6), which takes none of the CFG "
                 f"search's flags; drop them, or drop {' / '.join(EXTRAPOLATION_FLAGS)} to search "
                 f"(sample_c2i.py --cfg-scales a,b samples at one scale)")
    spec = importlib.util.spec_from_file_location("resolution_extrapolation", EXTRAPOLATION_TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main(argv)


def scale_grid(lo: float, hi: float, interval: float) -> list:
    """lo, lo + interval, ..., up to hi inclusive (a tolerance keeps 8.0 in 2.0..8.0 by 0.2)."""
    if interval <= 0 or hi < lo:
        raise ValueError(f"need lowest <= highest and a positive interval, got {lo},{hi} by {interval}")
    n = math.floor((hi - lo) / interval + 1e-6)
    return [round(lo + i * interval, 4) for i in range(n + 1)]


def scale_key(scale: float) -> str:
    return str(round(scale, 4))


def results_file(args, settings: dict, ckpt: str) -> str:
    if args.results_path.endswith(".json"):
        return args.results_path
    return os.path.join(args.results_path, f"{run_name(args.exp_name, ckpt, settings, with_cfg=False)}-search.json")


def run_settings(args, inputs, settings: dict) -> dict:
    """What the recorded numbers depend on besides the scale (a run stamp, RandAR.utils.run_stamp); a re-run
    must match them to reuse the file."""
    s = run_stamp(inputs, {k: v for k, v in settings.items() if k != "cfg_scales"})
    evaluator_file = args.evaluator_path if args.evaluator_path and os.path.isfile(args.evaluator_path) else None
    s.update(exp_name=args.exp_name, num_fid_samples_search=args.num_fid_samples_search,
             ref_path=file_fingerprint(args.ref_path), evaluator=args.evaluator,
             evaluator_path=file_fingerprint(evaluator_file) if evaluator_file else None,
             eval_backend=args.eval_backend if args.evaluator == "adm" else None)  # torch and tf agree to ~1e-6
    return s


def load_results(path: str, settings: dict, force: bool = False) -> dict:
    """The results so far (a fresh record when none, or with `force`); an error when they were made with other
    settings, naming them."""
    if force:
        remove_outputs([path])
    if not os.path.isfile(path):
        return {"settings": settings, "search": {}}
    with open(path) as f:
        results = json.load(f)
    diff = differences_text(results.get("settings", {}), settings)
    if diff:
        raise StampMismatchError(f"{path} holds results made with other settings ({diff}); pass --force "
                                 f"to start the search afresh (removes them), or another --results-path")
    return results


def on_main(dist, fn):
    """fn() on rank 0 (None elsewhere). If it fails with a user error, every rank exits with its message, so no
    rank is left waiting in a collective."""
    value, error = None, None
    if dist.is_main:
        try:
            value = fn()
        except SEARCH_ERRORS as e:
            error = str(e)
    error = broadcast_object(error)
    if error:
        sys.exit(f"error: {error}")
    return value


@torch.no_grad()
def sample_batch(model, tokenizer, indices, decode, args, size_eval, decoder=None):
    """Images `indices` -> uint8 (B, size_eval, size_eval, 3), as sample_c2i.py makes them."""
    device = model.tok_embeddings.weight.device
    labels = class_labels(indices, model.num_classes, args.global_seed, args.class_sampling)
    seeds = image_seeds(args.global_seed, indices)
    order = None
    if model.position_order != "raster":
        order = random_permutations(len(seeds), [model.block_size], seeds)[0].to(device)
    codes = generate(model, torch.tensor(labels, device=device), decode, token_order=order,
                     seeds=torch.tensor(seeds, device=device), decoder=decoder)
    return tokenizer.decode_codes_to_img(codes, size_eval), labels


def main(argv=None):
    line_buffered_output()
    argv = sys.argv[1:] if argv is None else list(argv)
    if {a.split("=", 1)[0] for a in argv} & set(EXTRAPOLATION_FLAGS):  # the original guide's section 6
        return run_extrapolation_instead(argv)
    args = parse_args(argv)
    try:  # every check that needs no model, before anything is built or written
        if not args.debug and not os.path.isfile(args.ref_path):
            raise FileNotFoundError(f"reference batch {args.ref_path} not found (--ref-path)")
        scales = scale_grid(*parse_pair(args.cfg_scales_search, "--cfg-scales-search"), args.cfg_scales_interval)
        decode = decode_config(args, cfg_scales=(1.0, scales[-1]))
        check_at_least_one(per_proc_batch_size=args.per_proc_batch_size)
        inputs = check_inputs(args.config, args.gpt_ckpt, args.vq_ckpt)
    except SEARCH_ERRORS as e:
        sys.exit(f"error: {e}")
    dist = init_distributed(timeout=EVAL_TIMEOUT)
    try:
        model, tokenizer = load_models(inputs, dist.device, args.precision)
        decode, size = check_for_model(model, tokenizer, decode, args.image_size)
    except SEARCH_ERRORS as e:
        sys.exit(f"error: {e}")
    decoder = CompiledDecoder(model) if args.compile else None  # compiled at its first call
    size_eval = args.image_size_eval or size
    base = sampling_settings(decode, image_size=size, image_size_eval=size_eval,
                             precision=resolve_precision(args.precision, dist.device),
                             global_seed=args.global_seed, class_sampling=args.class_sampling)
    ckpt = ckpt_name(args.gpt_ckpt)

    if args.debug:  # one grid per scale: a look at the sweep before paying for it
        if dist.is_main:
            for s in scales:
                path = os.path.join(args.sample_dir, run_name(args.exp_name, ckpt, {**base, "cfg_scales": (1.0, s)})
                                    + "-debug.png")
                start = time.time()
                images, labels = sample_batch(model, tokenizer, range(args.per_proc_batch_size),
                                              replace(decode, cfg_scales=(1.0, s)), args, size_eval, decoder)
                save_debug_grid(images, labels, path, time.time() - start)
        cleanup()
        return

    path = results_file(args, base, ckpt)
    results = on_main(dist, lambda: load_results(path, run_settings(args, inputs, base), args.force))
    # The extractor fails before any sampling, not after it.
    extractor = on_main(dist, lambda: build_extractor(args.evaluator, args.evaluator_path, backend=args.eval_backend))
    todo = broadcast_object([s for s in scales if scale_key(s) not in results["search"]] if dist.is_main else None)
    if dist.is_main:
        print(f"CFG scales {scales}: {len(scales) - len(todo)} already in {path}", flush=True)
    forced = set()  # with --force, each sample folder is started afresh once (the final run reuses a search's)

    def sample_and_evaluate(scale: float, num: int) -> dict:
        """`num` images at linear CFG 1.0 -> scale over all ranks; rank 0 packs and evaluates them."""
        scale_decode = replace(decode, cfg_scales=(1.0, scale))
        settings = {**base, "cfg_scales": (1.0, scale)}
        folder = os.path.join(args.sample_dir, run_name(args.exp_name, ckpt, settings))
        claim_run_folder(folder, run_stamp(inputs, settings), dist, args.force and scale not in forced)
        forced.add(scale)
        mine, total = my_missing_indices(folder, num, dist)
        for batch in batches(mine, total, args.per_proc_batch_size, dist, desc=f"cfg 1.0-{scale}"):
            images, _ = sample_batch(model, tokenizer, batch, scale_decode, args, size_eval, decoder)
            for index, image in zip(batch, images):
                save_png(image, os.path.join(folder, png_name(index)))
        barrier()

        def evaluate():
            npz = create_npz_from_sample_folder(folder, num, f"{folder}-{num}.npz")
            metrics = fid.evaluate_with(extractor, args.ref_path, npz, batch_size=args.eval_batch_size)
            return {**metrics, "cfg_scales": [1.0, scale], "num_samples": num, "sample_npz": npz}
        return on_main(dist, evaluate)

    for s in todo:
        out = sample_and_evaluate(s, args.num_fid_samples_search)
        if dist.is_main:
            results["search"][scale_key(s)] = out
            write_json(results, path)
            print(f"cfg {s}: " + ", ".join(f"{k} {out[k]}" for k in fid.METRIC_NAMES), flush=True)

    best = broadcast_object(min(scales, key=lambda s: results["search"][scale_key(s)]["fid"])
                            if dist.is_main else None)
    final = results.get("final") if dist.is_main else None
    done = broadcast_object(final is not None and final["cfg_scales"][-1] == best
                            and final["num_samples"] == args.num_fid_samples_final)
    if not done:
        out = sample_and_evaluate(best, args.num_fid_samples_final)
        if dist.is_main:
            results.update(best_cfg_scale=best, final=out)
            write_json(results, path)
    if dist.is_main:
        final = results["final"]
        print(f"best CFG scale {best} (linear from 1.0); on {final['num_samples']} samples: "
              + ", ".join(f"{k} {final[k]}" for k in fid.METRIC_NAMES) + f"\nresults: {path}", flush=True)
        if hasattr(extractor, "close"):
            extractor.close()
    cleanup()


if __name__ == "__main__":
    main()
