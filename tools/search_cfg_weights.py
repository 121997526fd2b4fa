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

With --cfg-scales a,b --spatial-cfg-scales c,d (documentation section 6) this script runs resolution-
extrapolation sampling instead (tools/resolution_extrapolation.py),
which takes none of the search's own flags.

--evaluator: `adm` (ADM's TF Inception-v3, graph from --evaluator-path / $RANDAR_INCEPTION_PATH), `toy` (the CPU
quickstart's classifier, checkpoint from --evaluator-path), or the dotted path of any class whose no-argument
instance has RandAR.eval.fid.FeatureExtractor's `pool_features` (see RandAR/eval/extractors.py).
"""
import argparse
import json
import math
import os
import sys
from dataclasses import replace
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from RandAR.eval import fid  # noqa: E402
from RandAR.eval.extractors import EVALUATORS, build_extractor  # noqa: E402
from RandAR.sampling.cli import (USER_ERRORS, add_decoding_args, add_model_args, add_run_args,  # noqa: E402
                                 check_at_least_one, extrapolation_parser, parse_pair, run_extrapolation,
                                 spec_from_flags)
from RandAR.sampling.folder import sample_to_folder, save_debug_grid  # noqa: E402
from RandAR.sampling.inputs import check_inputs, ckpt_name, load_models, run_stamp_of  # noqa: E402
from RandAR.utils.atomic import write_json  # noqa: E402
from RandAR.utils.distributed import (broadcast_object, cleanup, create_npz_from_sample_folder,  # noqa: E402
                                      init_distributed)
from RandAR.utils.run_stamp import StampMismatchError, differences_text, file_fingerprint, remove_outputs  # noqa: E402
from RandAR.utils.logger import line_buffered_output  # noqa: E402

# Ranks wait in a collective while rank 0 packs and evaluates (50k images with precision/recall: long).
EVAL_TIMEOUT = timedelta(hours=6)
SEARCH_ERRORS = USER_ERRORS + (ImportError,)  # ImportError: an --evaluator class path that does not import
EXTRAPOLATION_FLAGS = ("--cfg-scales", "--spatial-cfg-scales")  # these run resolution extrapolation instead


def add_sampling_flags(p: argparse.ArgumentParser):
    """sample_c2i.py's flags but --cfg-scales and --num-fid-samples (the search picks both)."""
    add_model_args(p)
    add_run_args(p)
    add_decoding_args(p, cfg_scales=None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sampling_flags(p)
    p.add_argument("--cfg-scales-search", default="2.0,8.0", help="lowest,highest final CFG scale to try")
    p.add_argument("--cfg-scales-interval", type=float, default=0.2)
    p.add_argument("--num-fid-samples-search", type=int, default=10000)
    # --num-fid-samples-report is the original script's name for it.
    p.add_argument("--num-fid-samples-final", "--num-fid-samples-report", type=int, default=50000)
    p.add_argument("--ref-path", default=None, help="reference batch, e.g. VIRTUAL_imagenet256_labeled.npz")
    p.add_argument("--results-path", default="results", help="the results .json, or a folder for it")
    p.add_argument("--evaluator", default="adm", help=f"one of {EVALUATORS} or a dotted class path")
    p.add_argument("--evaluator-path", "--inception-path", default=None,
                   help=f"adm: classify_image_graph_def.pb (default ${fid.INCEPTION_ENV} or "
                        f"{fid.DEFAULT_INCEPTION_PATH}); toy: the classifier checkpoint")
    p.add_argument("--eval-backend", default="tf", choices=fid.BACKENDS,
                   help="adm: run the Inception graph with TensorFlow or PyTorch (no TensorFlow; CUDA if available)")
    p.add_argument("--eval-batch-size", type=int, default=64, help="images per feature-extractor call")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.ref_path is None and not args.debug:
        p.error("--ref-path (the reference .npz, e.g. VIRTUAL_imagenet256_labeled.npz) is required")
    return args


def scale_grid(lo: float, hi: float, interval: float) -> list:
    """lo, lo + interval, ..., up to hi inclusive (a tolerance keeps 8.0 in 2.0..8.0 by 0.2)."""
    if interval <= 0 or hi < lo:
        raise ValueError(f"need lowest <= highest and a positive interval, got {lo},{hi} by {interval}")
    n = math.floor((hi - lo) / interval + 1e-6)
    return [round(lo + i * interval, 4) for i in range(n + 1)]


def scale_key(scale: float) -> str:
    return str(round(scale, 4))


def results_file(args, spec, ckpt: str) -> str:
    if args.results_path.endswith(".json"):
        return args.results_path
    return os.path.join(args.results_path, f"{spec.run_name(args.exp_name, ckpt, with_cfg=False)}-search.json")


def run_settings(args, inputs, spec) -> dict:
    """What the recorded numbers depend on besides the scale (a run stamp, RandAR.utils.run_stamp); a re-run
    must match them to reuse the file."""
    s = run_stamp_of(inputs, spec)
    del s["sampling"]["cfg_scales"]
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


def check_and_build_extractor(args):
    """The feature extractor of --evaluator, before any sampling."""
    return build_extractor(args.evaluator, args.evaluator_path, backend=args.eval_backend)


def check_search_inputs(args):
    """The checks that need no model: the sampling inputs, the reference batch, the scale grid."""
    if not args.debug and not os.path.isfile(args.ref_path):
        raise FileNotFoundError(f"reference batch {args.ref_path} not found (--ref-path)")
    scales = scale_grid(*parse_pair(args.cfg_scales_search, "--cfg-scales-search"), args.cfg_scales_interval)
    check_at_least_one(per_proc_batch_size=args.per_proc_batch_size)
    return check_inputs(args.config, args.gpt_ckpt, args.vq_ckpt), scales


def search_only_flags() -> set:
    """Flags of the search that resolution-extrapolation sampling does not take."""
    options = lambda parser: {o for action in parser._actions for o in action.option_strings}  # noqa: E731
    return options(build_parser()) - options(extrapolation_parser(__doc__))


def extrapolation_instead(argv):
    """The documented resolution-extrapolation command (section 6) names this script: run it, unless search-only
    flags came with it (say which, rather than the extrapolation parser's bare "unrecognized arguments")."""
    given = [a.split("=", 1)[0] for a in argv if a.split("=", 1)[0] in search_only_flags()]
    if given:
        sys.exit(f"error: {', '.join(given)}: with {' / '.join(EXTRAPOLATION_FLAGS)} this script runs "
                 f"resolution-extrapolation sampling (documentation section 6), which takes none of the CFG "
                 f"search's flags; drop them, or drop {' / '.join(EXTRAPOLATION_FLAGS)} to search "
                 f"(sample_c2i.py --cfg-scales a,b samples at one scale)")
    return run_extrapolation(extrapolation_parser(__doc__).parse_args(argv))


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


def sample_and_evaluate(args, dist, model, tokenizer, spec, extractor, num: int, ckpt: str, stamp: dict,
                        force: bool) -> dict:
    """Sample `num` images at `spec` over all ranks; rank 0 packs and evaluates them (None on other ranks)."""
    folder = os.path.join(args.sample_dir, spec.run_name(args.exp_name, ckpt))
    sample_to_folder(model, tokenizer, spec, folder, num, args.per_proc_batch_size, dist, stamp, force=force)

    def evaluate():
        npz = create_npz_from_sample_folder(folder, num, f"{folder}-{num}.npz")
        metrics = fid.evaluate_with(extractor, args.ref_path, npz, batch_size=args.eval_batch_size)
        return {**metrics, "cfg_scales": list(spec.cfg_scales), "num_samples": num, "sample_npz": npz}

    return on_main(dist, evaluate)


def main(argv=None):
    line_buffered_output()
    # Resolution extrapolation (documentation section 6): the documented command gives this script --cfg-scales
    # and --spatial-cfg-scales; those arguments are run by tools/resolution_extrapolation.py's code instead.
    argv = sys.argv[1:] if argv is None else list(argv)
    if {a.split("=", 1)[0] for a in argv} & set(EXTRAPOLATION_FLAGS):
        return extrapolation_instead(argv)
    args = parse_args(argv)
    try:
        inputs, scales = check_search_inputs(args)  # before anything is built or written
    except SEARCH_ERRORS as e:
        sys.exit(f"error: {e}")
    dist = init_distributed(timeout=EVAL_TIMEOUT)
    try:
        model, tokenizer = load_models(inputs, dist.device, args.precision, args.compile)
        base = spec_from_flags(args, model, tokenizer, dist.device, (1.0, scales[-1]))
    except SEARCH_ERRORS as e:
        sys.exit(f"error: {e}")
    ckpt = ckpt_name(args.gpt_ckpt)

    if args.debug:  # one grid per scale: a look at the sweep before paying for it
        if dist.is_main:
            for s in scales:
                spec = replace(base, cfg_scales=(1.0, s))
                path = os.path.join(args.sample_dir, spec.run_name(args.exp_name, ckpt) + "-debug.png")
                save_debug_grid(model, tokenizer, spec, path, args.per_proc_batch_size)
        cleanup()
        return

    path = results_file(args, base, ckpt)
    results = on_main(dist, lambda: load_results(path, run_settings(args, inputs, base), args.force))
    extractor = on_main(dist, lambda: check_and_build_extractor(args))  # fails before any sampling, not after it
    todo = broadcast_object([s for s in scales if scale_key(s) not in results["search"]] if dist.is_main else None)
    if dist.is_main:
        print(f"CFG scales {scales}: {len(scales) - len(todo)} already in {path}", flush=True)
    forced = set()  # with --force, each sample folder is started afresh once (the final run reuses a search's)

    def run_scale(scale, num):
        spec = replace(base, cfg_scales=(1.0, scale))
        force = args.force and scale not in forced
        forced.add(scale)
        return sample_and_evaluate(args, dist, model, tokenizer, spec, extractor, num, ckpt,
                                   run_stamp_of(inputs, spec), force)

    for s in todo:
        out = run_scale(s, args.num_fid_samples_search)
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
        out = run_scale(best, args.num_fid_samples_final)
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
