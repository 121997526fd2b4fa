"""Config handling: the single `target`/`params` instantiator and YAML loading with overrides."""
import importlib
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf


def get_obj_from_str(path: str):
    """'package.module.Name' -> the object it names."""
    module, name = path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot import '{path}' named by a config `target`: {e}") from e


def instantiate_from_config(config, **extra_params):
    """Build `target(**params, **extra_params)` from a `{target, params}` mapping."""
    if "target" not in config:
        raise KeyError(f"expected a `target` key to instantiate, got keys {list(config.keys())}")
    params = config.get("params", None) or {}
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    return get_obj_from_str(config["target"])(**dict(params), **extra_params)


def load_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a YAML config and apply `key.sub=value` overrides (OmegaConf dotlist).

    An override of a key the config does not have is an error (a typo would otherwise be silently ignored).
    """
    cfg = OmegaConf.load(path)
    if overrides:
        OmegaConf.set_struct(cfg, True)
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except Exception as e:  # omegaconf raises ConfigKeyError / ValidationError
            raise ValueError(f"bad override {list(overrides)} for config {path}: {e}") from e
        OmegaConf.set_struct(cfg, False)
    return cfg


def to_plain(cfg: Any):
    """OmegaConf node -> plain python containers (for json/safetensors metadata)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
