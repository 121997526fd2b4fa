"""Config handling: the single `target`/`params` instantiator and config reading (YAML files with overrides,
a checkpoint's carried config): canonical form (RandAR.utils.compat), then schema checks."""
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from RandAR.utils.compat import canonical_config
from RandAR.utils.config_schema import ConfigError, check_config
from RandAR.utils.config_schema import get_obj_from_str


def instantiate_from_config(config, **extra_params):
    """Build `target(**params, **extra_params)` from a `{target, params}` mapping (a section of a config read by
    `load_config` or `read_config`)."""
    if "target" not in config:
        raise KeyError(f"expected a `target` key to instantiate, got keys {list(config.keys())}")
    params = config.get("params", None) or {}
    if isinstance(params, DictConfig):
        params = OmegaConf.to_container(params, resolve=True)
    return get_obj_from_str(config["target"])(**dict(params), **extra_params)


def read_config(cfg, source: str) -> DictConfig:
    """A config as it is read (a mapping or DictConfig: a YAML file's, a checkpoint's carried one) in canonical
    form (RandAR.utils.compat: old targets renamed, the official unused keys dropped), checked against its
    schema and completed with its defaults (RandAR.utils.config_schema.check_config)."""
    data = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else cfg
    return check_config(OmegaConf.create(canonical_config(data)), source)


def load_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a YAML config, apply `key.sub=value` overrides (OmegaConf dotlist) and read the result (`read_config`):
    unknown keys, in the file or in an override, and values of the wrong type raise ConfigError naming the key
    and the closest valid one; keys the file leaves out get their defaults. The original release's configs load
    unchanged, to the same canonical config as this code's."""
    raw = OmegaConf.load(path)
    cfg = read_config(raw, path)  # the file alone first, so an error says whether the file or an override is wrong
    if overrides:
        try:
            cfg = OmegaConf.merge(raw, OmegaConf.from_dotlist(list(overrides)))
        except Exception as e:  # a malformed override (omegaconf's errors)
            raise ConfigError(f"bad override {list(overrides)} for config {path}: {e}") from e
        return read_config(cfg, f"{path}: bad override ({' '.join(overrides)})")
    return cfg


def to_plain(cfg: Any):
    """OmegaConf node -> plain python containers (for json/safetensors metadata)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg
