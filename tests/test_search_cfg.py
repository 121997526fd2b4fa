"""tools/search_cfg_weights.py with a tiny random RandAR and a numpy feature extractor: a two-scale search under
torchrun, the results file, resume (only the missing scales), and the clear failures."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from RandAR.eval import fid
from helpers import load_script, write_tiny_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "randar", "randar_tiny.yaml")

# A FeatureExtractor without TensorFlow: per-channel mean and spread of the pixels, "class" from the mean colour.
EXTRACTOR = '''
import numpy as np

class MeanColor:
    def pool_features(self, images):
        x = images.astype(np.float64) / 255
        pool = np.concatenate([x.mean((1, 2)), x.std((1, 2))], 1)  # (N, 6)
        logits = pool[:, :3] * 4
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return pool, None, probs
'''


search = load_script("tools/search_cfg_weights.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Weights, a reference batch and the extractor module in one folder."""
    d = tmp_path_factory.mktemp("search")
    write_tiny_weights(d, CONFIG)
    ref = np.random.default_rng(0).integers(90, 170, size=(24, 8, 8, 3), dtype=np.uint8)
    np.savez(d / "ref.npz", arr_0=ref)
    (d / "tiny_extractor.py").write_text(EXTRACTOR)
    return d


def flags(d, results, *extra):
    return ["--exp-name", "tiny", "--config", CONFIG, "--gpt-ckpt", str(d / "gpt.safetensors"),
            "--vq-ckpt", str(d / "vq.safetensors"), "--cfg-scales-search", "1.5,2.5", "--cfg-scales-interval", "1.0",
            "--num-fid-samples-search", "8", "--num-fid-samples-final", "12", "--per-proc-batch-size", "3",
            "--ref-path", str(d / "ref.npz"), "--sample-dir", str(d / "samples"), "--results-path", str(results),
            "--evaluator", "tiny_extractor.MeanColor", *extra]


@pytest.fixture
def counters(setup, monkeypatch):
    """Import path for the extractor; counts of evaluations and of images sampled in this process."""
    monkeypatch.syspath_prepend(str(setup))
    calls = {"evaluated": [], "sampled": 0}
    evaluate_with, sample_batch = fid.evaluate_with, search.sample_batch

    def counting_evaluate(extractor, ref, sample, **kw):
        calls["evaluated"].append(os.path.basename(sample))
        return evaluate_with(extractor, ref, sample, **kw)

    def counting_sample(model, tokenizer, indices, *rest):
        calls["sampled"] += len(indices)
        return sample_batch(model, tokenizer, indices, *rest)

    monkeypatch.setattr(fid, "evaluate_with", counting_evaluate)
    monkeypatch.setattr(search, "sample_batch", counting_sample)
    return calls


def test_search_two_scales_under_torchrun_then_resume(setup, counters, tmp_path):
    d = setup
    results = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(d), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "tools/search_cfg_weights.py", *flags(d, results)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    first = json.loads(results.read_text())

    assert list(first["search"]) == ["1.5", "2.5"]
    fids = {k: v["fid"] for k, v in first["search"].items()}
    assert len(set(fids.values())) == 2 and all(np.isfinite(list(fids.values())))  # the scale matters
    best = min(fids, key=fids.get)
    assert first["best_cfg_scale"] == float(best)
    final = first["final"]
    assert final["cfg_scales"] == [1.0, float(best)] and final["num_samples"] == 12
    for entry in [*first["search"].values(), final]:
        assert set(fid.METRIC_NAMES) <= set(entry) and entry["sfid"] is None  # the extractor has no spatial part
    # The final run reuses the search's images at that scale: image i depends on i only.
    with np.load(first["search"][best]["sample_npz"]) as a, np.load(final["sample_npz"]) as b:
        assert a["arr_0"].shape == (8, 8, 8, 3) and b["arr_0"].shape == (12, 8, 8, 3)
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"][:8])

    # Forget one scale and the final numbers, as if the job had died after the first scale; re-run in-process
    # with one process: the PNGs are all there, so nothing is sampled, and only the missing scale is evaluated.
    partial = {"settings": first["settings"], "search": {"1.5": first["search"]["1.5"]}}
    results.write_text(json.dumps(partial))
    search.main(flags(d, results))
    assert counters["sampled"] == 0
    assert counters["evaluated"] == [os.path.basename(first["search"]["2.5"]["sample_npz"]),
                                     os.path.basename(final["sample_npz"])]
    assert json.loads(results.read_text()) == first  # the same numbers on 1 process as on 2

    counters["evaluated"].clear()  # everything recorded: nothing to do
    search.main(flags(d, results))
    assert counters["evaluated"] == [] and counters["sampled"] == 0

    with pytest.raises(SystemExit, match="other settings.*global_seed"):
        search.main(flags(d, results, "--global-seed", "1"))


def test_scale_grid():
    grid = search.scale_grid(2.0, 8.0, 0.2)
    assert len(grid) == 31 and grid[:3] == [2.0, 2.2, 2.4] and grid[-1] == 8.0
    assert [search.scale_key(s) for s in grid[:2]] == ["2.0", "2.2"]
    assert search.scale_grid(1.5, 2.5, 1.0) == [1.5, 2.5]


def test_results_folder_gets_a_named_file(setup, counters, tmp_path):
    args = search.parse_args(flags(setup, tmp_path / "res"))
    spec = dict(cfg_scales=(1.0, 2.5), num_inference_steps=6, image_size=8, image_size_eval=8, precision="none",
                temperature=1.0, top_k=0, top_p=1.0, global_seed=0, class_sampling="random")
    expected = tmp_path / "res" / "tiny-gpt-size-8-8-steps-6-fp32-seed-0-search.json"  # no cfg in the name
    assert search.results_file(args, spec, "gpt") == str(expected)


def test_missing_inception_graph_fails_before_sampling(setup, counters, tmp_path):
    missing = str(tmp_path / "nowhere.pb")
    argv = flags(setup, tmp_path / "r.json")
    argv[argv.index("--evaluator") + 1] = "adm"
    with pytest.raises(SystemExit, match=f"(?s){missing}.*{fid.INCEPTION_URL}"):
        search.main(argv + ["--inception-path", missing])
    assert counters["sampled"] == 0 and not (tmp_path / "r.json").exists()


def test_resolution_extrapolation_flags_with_search_flags_fail_clearly(setup, counters, tmp_path):
    """main() hands --cfg-scales/--spatial-cfg-scales to resolution-extrapolation sampling (the documented command,
    tests/test_applications.py); search flags given with them would be ignored there, so main() stops first."""
    argv = flags(setup, tmp_path / "r.json") + ["--cfg-scales", "3.0,3.0", "--spatial-cfg-scales", "2.5,2.5"]
    with pytest.raises(SystemExit) as e:
        search.main(argv)
    message = str(e.value)
    assert message.startswith("error: --cfg-scales-search, --cfg-scales-interval, --num-fid-samples-search, ")
    assert "--ref-path" in message and "--results-path" in message and "resolution-extrapolation" in message
    assert "--gpt-ckpt" not in message and "--sample-dir" not in message  # the flags both take are fine
    assert counters["sampled"] == 0 and not os.listdir(tmp_path)


def other_checkpoint(d, folder):
    """Another model saved as gpt.safetensors: the same file name, as every training's iters_XXXXXXXX exports."""
    folder.mkdir()
    state = load_file(str(d / "gpt.safetensors"))
    state["output.weight"] = state["output.weight"].flip(0).contiguous()
    save_file(state, str(folder / "gpt.safetensors"))
    return folder / "gpt.safetensors"


def test_other_checkpoint_of_the_same_name_does_not_resume(setup, counters, tmp_path):
    d = setup
    argv = flags(d, tmp_path / "res") + ["--sample-dir", str(tmp_path / "samples")]
    search.main(argv)
    [results] = list((tmp_path / "res").iterdir())
    first = json.loads(results.read_text())
    counters["sampled"] = 0
    counters["evaluated"].clear()

    other = str(other_checkpoint(d, tmp_path / "other"))
    argv_other = list(argv)
    argv_other[argv_other.index("--gpt-ckpt") + 1] = other
    with pytest.raises(SystemExit, match=r"^error: .*search\.json holds results made with other settings "
                                         r"\(gpt_ckpt: .*--force"):
        search.main(argv_other)
    # A fresh results file, but the sample folders are the first model's: those stop it too.
    fresh = list(argv_other)
    fresh[fresh.index("--results-path") + 1] = str(tmp_path / "fresh.json")
    with pytest.raises(SystemExit, match=r"stamp\.json records another sampling run \(gpt_ckpt: "):
        search.main(fresh)
    assert counters["sampled"] == 0 and counters["evaluated"] == []
    assert json.loads(results.read_text()) == first

    search.main(argv_other + ["--force"])  # afresh: every scale sampled and evaluated again with the other model
    assert counters["sampled"] == 8 + 8 + 12 - 8  # the final run reuses its scale's search images
    redone = json.loads(results.read_text())
    assert redone["settings"]["gpt_ckpt"] != first["settings"]["gpt_ckpt"]
    assert [v["fid"] for v in redone["search"].values()] != [v["fid"] for v in first["search"].values()]

    counters["sampled"] = 0
    counters["evaluated"].clear()
    search.main(argv_other)  # the same inputs: everything is recorded, nothing to do
    assert counters["sampled"] == 0 and counters["evaluated"] == []


def test_results_record_the_adm_backend(monkeypatch, tmp_path):
    """Numbers of the tf and the torch backend are not mixed in one results file (they agree to about 1e-6,
    not bit for bit); other evaluators have no backend."""
    from types import SimpleNamespace
    monkeypatch.setattr(search, "run_stamp", lambda inputs, settings: {"sampling": settings})
    (tmp_path / "ref.npz").write_bytes(b"ref")
    args = SimpleNamespace(exp_name="x", num_fid_samples_search=8, ref_path=str(tmp_path / "ref.npz"),
                           evaluator="adm", evaluator_path=None, eval_backend="tf")
    tf_settings = search.run_settings(args, None, {"cfg_scales": (1.0, 2.0)})
    path = str(tmp_path / "search.json")
    search.write_json(search.load_results(path, tf_settings), path)
    args.eval_backend = "torch"
    with pytest.raises(search.StampMismatchError, match="eval_backend"):
        search.load_results(path, search.run_settings(args, None, {"cfg_scales": (1.0, 2.0)}))
    args.evaluator = "tiny_extractor.MeanColor"
    assert search.run_settings(args, None, {"cfg_scales": (1.0, 2.0)})["eval_backend"] is None
