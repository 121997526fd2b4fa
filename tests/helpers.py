"""Helpers shared by the tests that drive the command-line scripts."""
import importlib.util
import os

import torch

from RandAR.model.builder import build_randar
from RandAR.model.tokenizers import build_tokenizer
from RandAR.utils.checkpoint import save_model_safetensors
from RandAR.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath: str):
    """Import a script of the repository (e.g. 'tools/inpaint.py') as a module, to call its main() in-process."""
    name = os.path.splitext(os.path.basename(relpath))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_weights(folder, config_path: str):
    """Random RandAR and tokenizer weights of `config_path` as <folder>/gpt.safetensors and vq.safetensors,
    as a user would pass them. The output head is randomised: it starts at zero, where every token is equally
    likely and CFG changes nothing."""
    cfg = load_config(config_path)
    torch.manual_seed(0)
    model = build_randar(cfg)
    torch.nn.init.normal_(model.output.weight, std=0.3)
    save_model_safetensors(model, os.path.join(str(folder), "gpt.safetensors"))
    save_model_safetensors(build_tokenizer(cfg.tokenizer), os.path.join(str(folder), "vq.safetensors"))
