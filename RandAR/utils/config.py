"""Config handling: the single `target`/`params` instantiator and YAML loading with overrides and schema checks."""
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from RandAR.utils.config_schema import ConfigError, check_config
from RandAR.utils.targets import get_obj_from_str


def instantiate_from_config(config, ignore: Sequence[str] = (), **extra_params):
    """Build `target(**params, **extra_params)` from a `{target, params}` mapping, leaving out the params named
    in `ignore` (keys a config may carry that the class does not take)."""
    if "target" not in config:
        raise KeyError(f"expected a `target` key to instantiate, got keys {list(config.keys())}")
    params = config.get("params", None) or {}
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    params = {k: v for k, v in dict(params).items() if k not in ignore}
    return get_obj_from_str(config["target"])(**params, **extra_params)


def load_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a YAML config, apply `key.sub=value` overrides (OmegaConf dotlist) and check the result against its
    schema (RandAR.utils.config_schema): unknown keys, in the file or in an override, and values of the wrong
    type raise ConfigError naming the key and the closest valid one; keys the file leaves out get their defaults.
    """
    cfg = OmegaConf.load(path)
    check_config(cfg, path)  # the file alone first, so an error says whether the file or an override is wrong
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except Exception as e:  # a malformed override (omegaconf's errors)
            raise ConfigError(f"bad override {list(overrides)} for config {path}: {e}") from e
        return check_config(cfg, f"{path}: bad override ({' '.join(overrides)})")
    return check_config(cfg, path)


def to_plain(cfg: Any):
    """OmegaConf node -> plain python containers (for json/safetensors metadata)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
