"""Config `target:` strings: the class a dotted path names (configs are canonical by then, RandAR.utils.compat)."""
import importlib


def get_obj_from_str(path: str):
    """'package.module.Name' -> the object it names."""
    module, name = path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"cannot import '{path}' named by a config `target`: {e}") from e
