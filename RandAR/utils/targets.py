"""Config `target:` strings: the class a dotted path names, including paths of modules that have since moved."""
import importlib

# Module paths that configs, runs' config.yaml, exported checkpoints and codes manifests written before a
# module moved still name: old target -> current target.
LEGACY_TARGETS = {
    "RandAR.model.tokenizer.VQModel": "RandAR.model.tokenizers.llamagen_vq.VQModel",
    "RandAR.model.maskgit_tokenizer.MaskGITTokenizer": "RandAR.model.tokenizers.maskgit_vqgan.MaskGITTokenizer",
}


def canonical_target(path: str) -> str:
    """A config `target` under its current module path (compare targets through this)."""
    return LEGACY_TARGETS.get(path, path)


def get_obj_from_str(path: str):
    """'package.module.Name' (or a LEGACY_TARGETS name) -> the object it names."""
    module, name = canonical_target(path).rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot import '{path}' named by a config `target`: {e}") from e
