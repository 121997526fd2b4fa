"""Compatibility with the original release's configs and with files written by earlier versions of this code.

Applied where a config or a codes manifest is read, once: RandAR.utils.config.load_config (YAML files and their
overrides), RandAR.utils.checkpoint.export_config (the config an export carries) and
RandAR.dataset.latent.read_manifest. Everything after those sees the canonical form: targets under their current
module paths, and none of the official keys that no code reads.
"""
from typing import Dict, Sequence

# Module paths that the original's configs, and the configs, exports and codes manifests of earlier versions of
# this code, name: old target -> current target.
LEGACY_TARGETS = {
    "RandAR.dataset.imagenet.INatLatentDataset": "RandAR.dataset.latent.LatentCodeDataset",
    "RandAR.model.tokenizer.VQModel": "RandAR.model.tokenizers.llamagen_vq.VQModel",
    "RandAR.model.maskgit_tokenizer.MaskGITTokenizer": "RandAR.model.tokenizers.maskgit_vqgan.MaskGITTokenizer",
}

# Keys of the official configs (ziqipang/RandAR) that this code reads from nowhere: accepted by name and dropped.
# Top level: the original took the experiment name, initial weights and FID settings from flags (exp_name,
# gpt_ckpt) or never read them (resume_from, fid_*). ar_model.params: arguments of the original
# RandARTransformer that have no effect there (see RandAR.model.randar_gpt.RandARTransformer).
OFFICIAL_UNUSED_KEYS: Dict[str, Sequence[str]] = {
    "": ("exp_name", "resume_from", "gpt_ckpt", "fid_ref_path", "fid_save_dir", "fid_num_samples",
         "fid_eval_every"),
    "ar_model.params": ("caption_dim", "max_batch_size", "max_seq_len", "zero_class_qk"),
}

TARGET_SECTIONS = ("ar_model", "dataset", "tokenizer", "model")  # sections holding `target` and `params`


def canonical_target(path: str) -> str:
    """A `target` under its current module path."""
    return LEGACY_TARGETS.get(path, path)


def canonical_config(data):
    """A plain config mapping (RandAR or tokenization config) in canonical form, as a new mapping: legacy
    targets renamed, OFFICIAL_UNUSED_KEYS dropped. Anything else (a malformed config) is returned as it is, for
    the schema check to reject."""
    if not isinstance(data, dict):
        return data
    out = {k: v for k, v in data.items() if k not in OFFICIAL_UNUSED_KEYS[""]}
    for name in TARGET_SECTIONS:
        section = out.get(name)
        if not isinstance(section, dict):
            continue
        section = dict(section)
        if isinstance(section.get("target"), str):
            section["target"] = canonical_target(section["target"])
        unused = OFFICIAL_UNUSED_KEYS.get(f"{name}.params", ())
        if isinstance(section.get("params"), dict):
            section["params"] = {k: v for k, v in section["params"].items() if k not in unused}
        out[name] = section
    return out


def canonical_manifest(manifest: dict) -> dict:
    """A codes manifest (RandAR.dataset.latent.codes_manifest) with its tokenizer target under its current path."""
    if manifest.get("tokenizer_target"):
        return {**manifest, "tokenizer_target": canonical_target(manifest["tokenizer_target"])}
    return manifest
