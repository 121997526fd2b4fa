"""Compatibility module: the original code and its configs import these names from `RandAR.util`."""
from RandAR.utils.checkpoint import load_safetensors, save_model_safetensors  # noqa: F401
from RandAR.utils.config import get_obj_from_str, instantiate_from_config  # noqa: F401
