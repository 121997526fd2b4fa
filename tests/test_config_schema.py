"""Config schemas (RandAR.utils.config_schema), train_c2i.py's checks before any work, and checkpoint retention."""
import ast
import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import train_c2i
from RandAR.model.builder import build_randar
from RandAR.training.checkpoint_folders import checkpoint_name, prune_checkpoints
from RandAR.training.export import export_steps, is_checkpoint_step
from RandAR.training.vq import load_train_config
from RandAR.utils.checkpoint import export_config, save_export
from RandAR.utils.compat import LEGACY_TARGETS, OFFICIAL_UNUSED_KEYS
from RandAR.utils.config import instantiate_from_config, load_config
from RandAR.utils.config_schema import ConfigError, RandARConfig
from RandAR.sampling.inputs import check_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "randar", "randar_tiny.yaml")
XL = os.path.join(ROOT, "configs", "randar", "randar_xl_0.7b_llamagen.yaml")
TOY_VQ = os.path.join(ROOT, "configs", "tokenization", "toy_vq.yaml")


def edited(tmp_path, source, old, new, name="edited.yaml"):
    text = open(source).read()
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    return str(path)


@pytest.mark.parametrize("old,new,key,closest", [
    ("  warm_up_iters: 5", "  warmup_iters: 5", "lr_scheduler.warmup_iters", "lr_scheduler.warm_up_iters"),
    ("  max_grad_norm: 1.0", "  max_grad_nrom: 1.0", "optimizer.max_grad_nrom", "optimizer.max_grad_norm"),
    ("  skip_grad_norm: 10", "  skip_grad_nrom: 10", "optimizer.skip_grad_nrom", "optimizer.skip_grad_norm"),
    ("    n_layer: 2", "    n_layers: 2", "ar_model.params.n_layers", "ar_model.params.n_layer"),
    ("    codebook_size: 64", "    codebook_sizes: 64", "tokenizer.params.codebook_sizes",
     "tokenizer.params.codebook_size"),
    ("    root_dir:", "    root_dri:", "dataset.params.root_dri", "dataset.params.root_dir"),
    ("  mixed_precision: \"no\"", "  mixed_precison: \"no\"", "accelerator.mixed_precison",
     "accelerator.mixed_precision"),
    ("max_iters: 50", "max_iter: 50", "max_iter", "max_iters"),
])
def test_misspelt_yaml_key_names_the_closest(tmp_path, old, new, key, closest):
    path = edited(tmp_path, TINY, old, new)
    with pytest.raises(ConfigError, match=re.escape(f"unknown key `{key}`; did you mean `{closest}`?")):
        load_config(path)


def test_overrides_are_checked_against_the_schema():
    typo = "bad override (optimizer.max_grad_nrom=2.0): unknown key `optimizer.max_grad_nrom`; did you mean " \
           "`optimizer.max_grad_norm`?"
    with pytest.raises(ConfigError, match=re.escape(typo)):
        load_config(TINY, ["optimizer.max_grad_nrom=2.0"])
    with pytest.raises(ConfigError, match="max_iters"):
        load_config(TINY, ["max_iters=abc"])
    # a valid key the file leaves out: the schema knows it
    cfg = load_config(TINY, ["visualize_num=4", "ar_model.params.class_dropout_prob=0.0"])
    assert cfg.visualize_num == 4 and cfg.ar_model.params.class_dropout_prob == 0.0


def test_tokenizer_configs_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("`train.warmup_iter`; did you mean `train.warmup_iters`?")):
        load_config(edited(tmp_path, TOY_VQ, "  warmup_iters: 25", "  warmup_iter: 25"))
    with pytest.raises(ConfigError, match=re.escape("did you mean `model.params.z_channels`?")):
        load_config(edited(tmp_path, TOY_VQ, "    z_channels: 64", "    z_channel: 64"))
    with pytest.raises(ConfigError, match=re.escape("did you mean `train.lr`?")):
        load_config(TOY_VQ, ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match=re.escape("toy_vq.yaml: train.recon_loss must be l1 or l2, got 'l3'")):
        load_train_config(TOY_VQ, ["train.recon_loss=l3"])
    with pytest.raises(ConfigError, match="train.iterations and train.batch_size must be > 0, got 0 and"):
        load_train_config(TOY_VQ, ["train.iterations=0"])


def test_official_unused_keys_are_accepted_by_name_only(tmp_path):
    """The original's keys no code reads load and are dropped where the config is read; any other key is an error."""
    extra = "\n".join(f"{k}: 1" for k in OFFICIAL_UNUSED_KEYS[""])
    path = edited(tmp_path, XL, "global_seed: 0", "global_seed: 0\n" + extra)
    path = edited(tmp_path, path, "    num_inference_steps: 88",
                  "    num_inference_steps: 88\n    caption_dim: 2048\n    max_batch_size: 32\n    max_seq_len: 2048"
                  "\n    zero_class_qk: True", "official.yaml")
    assert load_config(path) == load_config(XL)
    assert load_config(XL, ["fid_eval_every=3", "ar_model.params.zero_class_qk=false"]) == load_config(XL)
    with pytest.raises(ConfigError, match="unknown key `fid_every`"):
        load_config(edited(tmp_path, XL, "global_seed: 0", "global_seed: 0\nfid_every: 1"))
    with pytest.raises(ConfigError, match=re.escape("unknown key `ar_model.params.zero_class_q`")):
        load_config(XL, ["ar_model.params.zero_class_q=true"])
    # the documented list is the code's list
    doc = open(os.path.join(ROOT, "GETTING_STARTED.md")).read()
    for keys in OFFICIAL_UNUSED_KEYS.values():
        for k in keys:
            assert f"`{k}`" in doc, k


def original_format(cfg):
    """A shipped config as the original release writes it: the old module paths of its targets and the keys
    of ziqipang/RandAR's configs/randar/*.yaml that no code reads (with the original's values)."""
    cfg = OmegaConf.to_container(cfg)
    old = {new: legacy for legacy, new in LEGACY_TARGETS.items()}
    for section in ("ar_model", "dataset", "tokenizer", "model"):
        if section in cfg:
            cfg[section]["target"] = old.get(cfg[section]["target"], cfg[section]["target"])
    if "ar_model" in cfg:
        cfg["ar_model"]["params"]["zero_class_qk"] = True
        cfg.update({"exp_name": "randar_0.3b", "resume_from": None, "gpt_ckpt": "None", "fid_ref_path": "/x.npz",
                    "fid_save_dir": "/tmp", "fid_num_samples": 10000, "fid_eval_every": 500000})
    return cfg


SHIPPED = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.yaml"))
                 if "accelerate" not in p and not os.path.islink(p))


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_original_format_configs_load_to_the_shipped_canonical_config(tmp_path, path):
    shipped = OmegaConf.load(path)
    original = original_format(shipped)
    assert original != OmegaConf.to_container(shipped) or "model" in shipped  # tokenization targets are current
    OmegaConf.save(OmegaConf.create(original), tmp_path / "original.yaml")
    canonical = load_config(path)
    assert load_config(str(tmp_path / "original.yaml")) == canonical
    # so is the config a checkpoint carries, written by a version of the code that kept the original's form
    export = str(tmp_path / "old.safetensors")
    save_export(export, {"w": torch.zeros(1)}, original)
    assert export_config(export) == canonical


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_every_shipped_configs_sections_instantiate(path):
    """instantiate_from_config on the shipped YAML's sections as written, and as read."""
    for cfg in (OmegaConf.load(path), load_config(path)):
        with torch.device("meta"):
            models = {s: instantiate_from_config(cfg[s]) for s in ("ar_model", "tokenizer", "model") if s in cfg}
        assert models and all(isinstance(m, torch.nn.Module) for m in models.values())
        if "ar_model" in cfg:
            assert models["ar_model"].vocab_size == models["tokenizer"].codebook_size
            assert build_randar(cfg, device="meta").vocab_size == models["ar_model"].vocab_size


def _code_defaults():
    """`<section>.get("key", default)` calls in the code that reads training configs -> {(section, key): default}."""
    sections = {"cfg": "", "acc_cfg": "accelerator", "opt_cfg": "optimizer", "lr_cfg": "lr_scheduler"}
    found = {}
    paths = [os.path.join(ROOT, "train_c2i.py")]
    for pattern in ("RandAR/training/*.py", "RandAR/sampling/*.py"):
        paths += sorted(glob.glob(os.path.join(ROOT, pattern)))
    paths.remove(os.path.join(ROOT, "RandAR/training/vq.py"))  # reads tokenizer configs (VQTrainArgs)
    for path in paths:
        source = open(path).read()
        for var, key, default in re.findall(r"\b(\w+)\.get\(\"(\w+)\",\s*([^()]+?)\)", source):
            if var in sections:
                found[(sections[var], key)] = ast.literal_eval(default.strip())
    return found


def test_schema_defaults_equal_the_codes_defaults():
    defaults = OmegaConf.structured(RandARConfig)
    found = _code_defaults()
    assert len(found) >= 5  # the scan finds the reads it is meant to compare
    for (section, key), default in found.items():
        node = defaults[section] if section else defaults
        if default == {}:
            continue  # `.get("section", {})`: a missing section
        assert node[key] == default, f"{section}.{key}: schema {node[key]!r}, code {default!r}"


def test_sampling_reads_checked_configs(tmp_path):
    bad = edited(tmp_path, TINY, "    num_inference_steps: 6", "    num_inference_step: 6")
    with pytest.raises(ConfigError, match="did you mean `ar_model.params.num_inference_steps`"):
        check_inputs(bad, "nope.safetensors", "nope.pt")


# ---------------------------------------------------------------- train_c2i.py: errors before any work


def codes_folder(root, n=4):
    for i in range(n):
        os.makedirs(root / str(i % 2), exist_ok=True)
        np.save(root / str(i % 2) / f"{i}.npy", np.random.default_rng(i).integers(0, 64, (1, 16)))
    return str(root)


def train_argv(tmp_path, *extra):
    return ["--config", TINY, "--exp-name", "t", "--results-dir", str(tmp_path / "results"), *extra]


@pytest.mark.parametrize("case", ["missing data", "empty data", "missing vq", "missing gpt", "typo", "batch split",
                                  "schedule"])
def test_train_stops_before_writing_anything(tmp_path, case):
    data = codes_folder(tmp_path / "codes")
    (tmp_path / "empty").mkdir()
    extra, match = {
        "missing data": (["--data-path", str(tmp_path / "nope")], "data folder not found"),
        "empty data": (["--data-path", str(tmp_path / "empty")], "holds no code files"),
        "missing vq": (["--data-path", data, "--vq-ckpt", str(tmp_path / "vq.pt"), "--visualize-every", "5"],
                       "tokenizer checkpoint not found"),
        "missing gpt": (["--data-path", data, "--gpt-ckpt", str(tmp_path / "g.safetensors")], "--gpt-ckpt not found"),
        "typo": (["--data-path", data, "optimizer.skip_grad_nrom=3"], "did you mean `optimizer.skip_grad_norm`"),
        "batch split": (["--data-path", data, "global_batch_size=7", "accelerator.gradient_accumulation_steps=2"],
                        "global_batch_size 7"),
        "schedule": (["--data-path", data, "lr_scheduler.num_cycles=null"], "num_cycles is required"),
    }[case]
    with pytest.raises((train_c2i.InputError, ConfigError), match=re.escape(match)):
        train_c2i.main(train_c2i.parse_args(train_argv(tmp_path, *extra)))
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("value", ["no", "none", "fp32", "'no'"])
def test_mixed_precision_no_survives_yaml(value, tmp_path):
    """`accelerator.mixed_precision=no` (what the quickstart passes when the CPU is slow at bf16): YAML reads an
    unquoted no as false, which must still mean no mixed precision."""
    args = train_c2i.parse_args(["--exp-name", "x", "--config", TINY, f"accelerator.mixed_precision={value}"])
    assert train_c2i.resolve_config(args).accelerator.mixed_precision == "no"
    yaml = tmp_path / "c.yaml"
    yaml.write_text(open(TINY).read() + "\n")
    cfg = OmegaConf.load(yaml)
    cfg.accelerator.mixed_precision = False  # `mixed_precision: no` in a YAML file
    OmegaConf.save(cfg, yaml)
    args = train_c2i.parse_args(["--exp-name", "x", "--config", str(yaml)])
    assert train_c2i.resolve_config(args).accelerator.mixed_precision == "no"


def test_train_user_error_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "train_c2i.py", *train_argv(tmp_path, "--data-path", str(tmp_path / "nope"))],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [f"error: data folder not found: {tmp_path / 'nope'} (--data-path: "
                                             "the codes of tools/extract_latent_codes.py)"]
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------- retention


def fake_checkpoint(folder, step):
    os.makedirs(os.path.join(folder, checkpoint_name(step)))
    for suffix in (".safetensors", ".ema.safetensors"):
        open(os.path.join(folder, checkpoint_name(step) + suffix), "w").close()


def test_prune_keeps_the_last_states_and_the_milestone_exports(tmp_path):
    for step in (10, 20, 30, 40):
        fake_checkpoint(tmp_path, step)
    prune_checkpoints(str(tmp_path), 1, export_milestones=[20])
    assert sorted(os.listdir(tmp_path)) == sorted([
        checkpoint_name(20) + ".ema.safetensors", checkpoint_name(20) + ".safetensors",
        checkpoint_name(40), checkpoint_name(40) + ".ema.safetensors", checkpoint_name(40) + ".safetensors"])


def test_shipped_configs_keep_one_state_and_the_original_milestones():
    for name in ("randar_l_0.3b_llamagen", "randar_l_0.3b_maskgit", "randar_xl_0.7b_llamagen",
                 "randar_xxl_1.4b_llamagen"):
        cfg = load_config(os.path.join(ROOT, "configs", "randar", f"{name}.yaml"))
        assert cfg.keep_last_k == 1 and list(cfg.export_milestones) == [50000, 100000, 200000, 300000], name
    assert RandARConfig.keep_last_k == 1  # a config without the key


def test_training_run_keeps_last_state_milestones_and_final(tmp_path):
    """ckpt_every 10 over 30 steps, milestone 15 (not a multiple of ckpt_every), local and mirrored."""
    data = codes_folder(tmp_path / "codes", n=8)
    argv = train_argv(tmp_path, "--data-path", data, "--disk-location", str(tmp_path / "mirror"), "max_iters=30",
                      "ckpt_every=10", "log_every=10", "visualize_every=0", "accelerator.log_with=none",
                      "export_milestones=[15]", "--no-compile")
    r = subprocess.run([sys.executable, "train_c2i.py", *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, WANDB_MODE="offline"))
    assert r.returncode == 0, r.stderr[-3000:]
    want = sorted([checkpoint_name(15) + ".safetensors", checkpoint_name(30), checkpoint_name(30) + ".safetensors"])
    assert sorted(os.listdir(tmp_path / "results" / "t_bs_8_lr_0.001" / "checkpoints")) == want
    assert sorted(os.listdir(tmp_path / "mirror" / "t_bs_8_lr_0.001")) == want


# ---------------------------------------------------------------- the disk cost in the documentation


def test_documented_disk_cost_matches_the_parameter_counts():
    """The disk table of GETTING_STARTED.md: parameter counts of the original checkpoints (tests/fixtures key
    listings), equal to the models the configs build; checkpoints counted by the rule training saves by."""
    doc = open(os.path.join(ROOT, "GETTING_STARTED.md")).read()
    for name, label in (("randar_l_0.3b_llamagen", "RandAR-L (0.3B)"), ("randar_xl_0.7b_llamagen", "RandAR-XL (0.7B)")):
        cfg = load_config(os.path.join(ROOT, "configs", "randar", f"{name}.yaml"))
        assert cfg.ema is False and cfg.keep_last_k == 1
        listing = open(os.path.join(ROOT, "tests", "fixtures", f"keys_{name}.txt")).read()
        n = int(re.search(r"^# total_parameters: (\d+)$", listing, re.M).group(1))
        assert n == sum(p.numel() for p in build_randar(cfg, device="meta").parameters())
        full, export = 12 * n, 4 * n  # fp32 weights + 2 AdamW moments; fp32 weights
        exports = len(export_steps(cfg))  # the milestones and the last step
        saves = sum(is_checkpoint_step(cfg, s) for s in range(1, cfg.max_iters + 1))
        row = next(line for line in doc.splitlines() if line.startswith(f"| {label} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        gb = lambda b: f"{b / 1e9:.1f} GB"  # noqa: E731
        assert cells[1:6] == [f"{n:,}", gb(full), gb(export), gb(full + exports * export),
                              gb(2 * full + (exports + 1) * export)], row
        assert cells[6] == f"{gb(saves * (full + export))} ({saves} checkpoints)", row
        assert f"end of run (1 state + {exports} exports)" in doc and f"`ckpt_every` {cfg.ckpt_every}" in doc


def test_training_cadence_is_the_originals_and_flags_win():
    """The original train_c2i.py logged, checkpointed, visualised and loaded data with its flag defaults (20, 5000,
    2000, 16 workers), whatever its configs said: the shipped RandAR configs and the schema's defaults hold those
    values; a key=value override replaces the YAML's, and a flag replaces both."""
    original = {"log_every": 20, "ckpt_every": 5000, "visualize_every": 2000, "num_workers": 16}
    for name in ("randar_l_0.3b_llamagen", "randar_l_0.3b_maskgit", "randar_xl_0.7b_llamagen",
                 "randar_xxl_1.4b_llamagen"):
        cfg = load_config(os.path.join(ROOT, "configs", "randar", f"{name}.yaml"))
        assert {k: cfg[k] for k in original} == original, name
    assert {k: getattr(RandARConfig, k) for k in original} == original
    args = train_c2i.parse_args(["--exp-name", "x", "--config", XL, "ckpt_every=9", "log_every=3", "--ckpt-every", "7"])
    cfg = train_c2i.resolve_config(args)
    assert (cfg.ckpt_every, cfg.log_every, cfg.visualize_every) == (7, 3, 2000)
