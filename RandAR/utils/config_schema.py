"""Schemas of the YAML configs: every key a config may hold, its type and its default.

Two kinds of config:
- a RandAR config (configs/randar/*.yaml, the `config.yaml` a training run saves): `RandARConfig`, read by
  train_c2i.py, sample_c2i.py, the CFG search, the zero-shot tools and the code extractor;
- a tokenizer config (configs/tokenization/*.yaml): `TokenizationConfig` (`model:` and the optional `train:`
  of tools/train_tokenizer.py, `VQTrainArgs`).

Sections holding `target`/`params` (ar_model, dataset, tokenizer, model) are checked against the constructor
that `target` names: `params` may hold exactly its arguments. The other sections are the dataclasses below,
merged as OmegaConf structured configs (which converts and type-checks the values and fills the defaults).

A key that is not in the schema is an error naming the closest valid key: a misspelt `warmup_iters` or
`max_grad_nrom` would otherwise be silently ignored. The configs checked here are canonical (RandAR.utils.compat:
the official keys no code reads are dropped and old targets renamed where a config is read).
"""
import dataclasses
import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf

from RandAR.utils.compat import TARGET_SECTIONS


def get_obj_from_str(path: str):
    """A config `target`, 'package.module.Name' (canonical by then: RandAR.utils.compat) -> the object it names."""
    module, name = path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot import '{path}' named by a config `target`: {e}") from e

# The original training exported model weights it kept at these steps (RandAR-L/XL, 360k iterations).
ORIGINAL_EXPORT_MILESTONES = [50000, 100000, 200000, 300000]


class ConfigError(ValueError):
    """A config or override that does not fit its schema; the message names the source, the key and the fix."""


@dataclass
class TargetSection:
    """`target: package.module.Class` and `params:` (the constructor's arguments)."""
    target: str = MISSING
    params: Optional[Dict[str, Any]] = None


@dataclass
class AcceleratorConfig:
    gradient_accumulation_steps: int = 1
    mixed_precision: Optional[str] = "no"  # no | fp16 | bf16 (none, fp32 = no)
    log_with: Optional[str] = None  # wandb | none


@dataclass
class OptimizerConfig:
    """AdamW; weight decay on tensors of 2 or more dimensions only."""
    lr: float = MISSING
    weight_decay: float = MISSING
    beta1: float = MISSING
    beta2: float = MISSING
    max_grad_norm: float = 0.0  # 0 = no clipping
    skip_grad_iter: int = 0  # the skip rule applies from this optimizer step on
    skip_grad_norm: Optional[float] = None  # None = never skip for a large norm
    skip_grad_rule: str = "sum_clipped"  # or global_norm; checked by RandAR.training.step.skip_rule


@dataclass
class LRSchedulerConfig:
    type: str = MISSING  # cosine | linear | constant | constant_with_warmup
    warm_up_iters: int = 0
    min_lr_ratio: float = 0.05
    num_cycles: Optional[float] = None  # required by cosine (0.5 = one half-cosine)


@dataclass
class RandARConfig:
    """A RandAR config. Step counts are optimizer steps."""
    ar_model: Optional[TargetSection] = None
    dataset: Optional[TargetSection] = None
    tokenizer: Optional[TargetSection] = None
    accelerator: AcceleratorConfig = field(default_factory=AcceleratorConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_scheduler: LRSchedulerConfig = field(default_factory=LRSchedulerConfig)
    max_iters: int = MISSING
    global_batch_size: int = MISSING
    ema: bool = False
    ema_decay: float = 0.9999
    # the original train_c2i.py's flag defaults (its configs' values of these keys were never read)
    num_workers: int = 16
    log_every: int = 20
    ckpt_every: int = 5000  # 0 = only at the end (and at export_milestones)
    visualize_every: int = 2000  # 0 = off
    visualize_num: int = 32
    keep_last_k: int = 1  # full training states kept (locally and in the mirror); <= 0 keeps all
    export_milestones: List[int] = field(default_factory=lambda: list(ORIGINAL_EXPORT_MILESTONES))
    global_seed: int = 0
    results_dir: str = "results/"
    vq_ckpt: Optional[str] = None
    wandb_entity: Optional[str] = None
    wandb_project: Optional[str] = None
    wandb_run_name: Optional[str] = None
    wandb_offline: bool = False


@dataclass
class VQTrainArgs:
    """The `train:` section of a tokenization config (defaults for keys it leaves out)."""
    iterations: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio after warmup
    warmup_iters: int = 50
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables
    recon_loss: str = "l2"  # l2 | l1
    recon_weight: float = 1.0
    edge_weight: float = 0.0  # l1 on horizontal/vertical pixel differences
    codebook_weight: float = 1.0  # on vq + commitment + entropy losses (beta and entropy ratio live in the model)
    restart_dead_codes_every: int = 0  # steps; 0 disables
    restart_until: float = 0.75  # fraction of the iterations after which codes stay put, so the decoder settles
    usage_window: int = 50  # steps over which a code counts as used (logging and restarts)
    flip: bool = True  # random horizontal flips
    bf16: bool = False  # encoder and decoder under bfloat16 autocast (the code lookup stays float32)
    num_workers: int = 0  # DataLoader workers; 0 decodes in the training process
    log_every: int = 20
    sample_every: int = 250  # reconstruction PNGs
    ckpt_every: int = 250
    keep_checkpoints: int = 2
    num_eval_images: int = 500  # held-out images for the final MSE / code-usage report
    seed: int = 0

    def __post_init__(self):
        if self.recon_loss not in ("l1", "l2"):
            raise ConfigError(f"train.recon_loss must be l1 or l2, got {self.recon_loss!r}")
        if self.iterations <= 0 or self.batch_size <= 0:
            raise ConfigError(f"train.iterations and train.batch_size must be > 0, got {self.iterations} and "
                              f"{self.batch_size}")


@dataclass
class TokenizationConfig:
    model: TargetSection = field(default_factory=TargetSection)
    train: Optional[VQTrainArgs] = None


def _unknown(source: str, full_key: str, valid: Sequence[str]) -> ConfigError:
    prefix, key = full_key.rpartition(".")[0], full_key.rpartition(".")[2]
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = (f"did you mean `{(prefix + '.' if prefix else '') + close[0]}`?" if close
            else f"valid keys here: {', '.join(sorted(valid))}")
    return ConfigError(f"{source}: unknown key `{full_key}`; {hint}")


def constructor_arguments(target: str) -> Optional[List[str]]:
    """The keyword arguments the class `target` accepts, or None when it takes **kwargs (anything goes)."""
    params = inspect.signature(get_obj_from_str(target)).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_target_section(data, where: str, source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: `{where}` must be a mapping with `target` and `params`, got {data!r}")
    _check_keys(data, TargetSection, where, source)
    if "target" not in data:
        raise ConfigError(f"{source}: `{where}` has no `target` (the class to build, e.g. "
                          f"RandAR.model.randar_gpt.RandARTransformer)")
    try:
        valid = constructor_arguments(str(data["target"]))
    except ImportError as e:
        raise ConfigError(f"{source}: `{where}.target`: {e}") from e
    params = data.get("params") or {}
    if valid is not None:
        for key in params:
            if key not in valid:
                raise _unknown(source, f"{where}.params.{key}", valid)


def _check_keys(data: dict, schema, where: str, source: str):
    """Every key of `data` is a field of the dataclass `schema`; recurses."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in data.items():
        full = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise _unknown(source, full, list(fields))
        if key in TARGET_SECTIONS and not where:
            if value is not None:
                _check_target_section(value, full, source)
            continue
        sub = _dataclass_of(fields[key].type)
        if sub is not None and isinstance(value, dict):
            _check_keys(value, sub, full, source)


def _dataclass_of(annotation):
    """The dataclass in `X` or `Optional[X]`, else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def schema_for(data: dict):
    """The schema of a loaded config: a tokenizer config has `model:`, everything else is a RandAR config."""
    return TokenizationConfig if "model" in data and "ar_model" not in data else RandARConfig


def check_config(cfg: DictConfig, source: str) -> DictConfig:
    """Check every key of `cfg` against its schema, convert the values to the schema's types and fill the
    defaults. Returns a plain (not struct) DictConfig; target sections are kept as written (their defaults are
    the constructor's). Raises ConfigError naming `source`, the key and the closest valid key."""
    data = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a mapping of keys, got {type(data).__name__}")
    schema = schema_for(data)
    _check_keys(data, schema, "", source)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), data)
    except Exception as e:  # omegaconf ValidationError: a value of the wrong type
        raise ConfigError(f"{source}: {str(e).splitlines()[0]} (key `{getattr(e, 'full_key', '?')}`)") from e
    out = OmegaConf.to_container(merged)
    for f in dataclasses.fields(schema):  # an absent optional section stays absent: code asks `"tokenizer" in cfg`
        if f.name not in data and out.get(f.name) is None and _dataclass_of(f.type) is not None:
            del out[f.name]
    for section in TARGET_SECTIONS:
        if section in data:
            out[section] = data[section]
    return OmegaConf.create(out)
