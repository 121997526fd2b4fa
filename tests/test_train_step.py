"""train_c2i.py's optimizer-step helpers: the update-skip rules against an independent computation, the shipped
configs' rule, unwrapping under any Accelerate, and the version floors checked at start-up."""
import glob
import os
import runpy
import sys

import pytest
import torch
from omegaconf import OmegaConf

from RandAR.training import step
from RandAR.utils import versions
from RandAR.utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator
    return Accelerator(cpu=True)


def _model_with_grads(scale):
    """Three tensors whose gradients are fixed numbers times `scale`."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2, bias=False))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * scale
    return model


def _independent(grads, max_norm):
    """(global norm before clipping, sum of per-tensor norms after clipping), in float64 from the formulas."""
    grads = [g.double() for g in grads]
    total = sum((g ** 2).sum() for g in grads).sqrt().item()
    coef = min(1.0, max_norm / (total + 1e-6))
    return total, sum((g * coef).pow(2).sum().sqrt().item() for g in grads)


@pytest.mark.parametrize("scale", [0.05, 20.0])  # below and above max_grad_norm: unclipped and clipped
@pytest.mark.parametrize("rule", ["sum_clipped", "global_norm"])
def test_skip_rules_against_independent_computation(accelerator, rule, scale):
    grads = [p.grad.clone() for p in _model_with_grads(scale).parameters()]
    total, sum_clipped = _independent(grads, max_norm=1.0)
    measure = sum_clipped if rule == "sum_clipped" else total
    for limit, want_skip in ((measure * 0.999, True), (measure * 1.001, False)):
        model = _model_with_grads(scale)
        opt_cfg = OmegaConf.create({"max_grad_norm": 1.0, "skip_grad_iter": 5, "skip_grad_norm": limit,
                                    "skip_grad_rule": rule})
        norm, skip, stop = step.clip_and_check(accelerator, model, torch.tensor(1.0), opt_cfg, 5, False)
        assert norm.item() == pytest.approx(total, rel=1e-5)
        assert (skip, stop) == (want_skip, False), (rule, scale, limit, measure)
        # before skip_grad_iter nothing finite is skipped, whatever the rule
        model = _model_with_grads(scale)
        assert not step.clip_and_check(accelerator, model, torch.tensor(1.0), opt_cfg, 4, False)[1]


def test_the_two_rules_disagree_where_the_release_differs(accelerator):
    """A large gradient clipped to norm 1 over three tensors: the global norm before clipping is far above 10,
    the sum of the clipped per-tensor norms is below 10: only the global-norm rule skips."""
    for rule, want in (("sum_clipped", False), ("global_norm", True)):
        opt_cfg = OmegaConf.create({"max_grad_norm": 1.0, "skip_grad_norm": 10.0, "skip_grad_rule": rule})
        assert step.clip_and_check(accelerator, _model_with_grads(20.0), torch.tensor(1.0), opt_cfg, 0,
                                        False)[1] is want


def test_sum_of_grad_norms_is_the_sum_of_norms():
    model = _model_with_grads(3.0)
    want = sum(p.grad.double().norm().item() for p in model.parameters())
    assert step.sum_of_grad_norms(model.parameters()).item() == pytest.approx(want, rel=1e-6)


def test_shipped_configs_use_the_release_rule_and_bad_rules_fail():
    configs = sorted(glob.glob(os.path.join(ROOT, "configs", "randar", "*.yaml")))
    assert configs
    for path in configs:
        assert step.skip_rule(load_config(path).optimizer) == "sum_clipped", path
    with pytest.raises(ValueError, match="skip_grad_rule: 'sum' is not one of sum_clipped, global_norm"):
        step.skip_rule(OmegaConf.create({"skip_grad_rule": "sum"}))


def test_unwrap_strips_accelerate_and_compile_wrappers(accelerator):
    model = torch.nn.Linear(2, 2)
    compiled = torch.compile(model)  # wrapping only: nothing is compiled until it is called
    assert step.unwrap(accelerator, compiled) is model
    assert step.unwrap(accelerator, model) is model


@pytest.mark.parametrize("have, fsdp2, needed", [
    ({"torch": "2.3.1", "accelerate": "1.15.0"}, False, "torch>=2.4"),
    ({"torch": "2.13.0", "accelerate": "0.30.1"}, False, "accelerate>=0.31.0"),
    ({"torch": "2.5.1", "accelerate": "1.15.0"}, True, "torch>=2.6"),
    ({"torch": "2.6.0", "accelerate": "1.2.0"}, True, "accelerate>=1.6.0"),
    ({"torch": "2.4.0", "accelerate": "0.31.0"}, False, None),
    ({"torch": "2.6.0", "accelerate": "1.6.0"}, True, None),
])
def test_version_floors(monkeypatch, have, fsdp2, needed):
    monkeypatch.setattr(versions, "installed", lambda package: have[package])
    problem = versions.version_problem(fsdp2=fsdp2)
    if needed is None:
        assert problem is None
    else:
        assert needed in problem and "\n" not in problem


def test_train_c2i_checks_versions_before_anything(monkeypatch, tmp_path, capsys):
    """`python train_c2i.py ...` under a too old torch stops with the one-line message, writing nothing."""
    monkeypatch.setattr(versions, "installed", lambda package: {"torch": "2.2.0"}.get(package, "99"))
    monkeypatch.setattr(sys, "argv", ["train_c2i.py", "--exp-name", "x", "--results-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(os.path.join(ROOT, "train_c2i.py"), run_name="__main__")
    assert str(stop.value) == ("error: torch 2.2.0 is too old: this code needs torch>=2.4; "
                               "pip install -U 'torch>=2.4'")
    assert os.listdir(tmp_path) == []


def test_fsdp2_floor_applies_under_an_fsdp2_launch(monkeypatch):
    monkeypatch.setattr(versions, "installed", lambda package: {"torch": "2.5.0"}.get(package, "99"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(SystemExit, match="torch>=2.6 for FSDP2"):
        versions.require_versions()
    monkeypatch.setenv("FSDP_VERSION", "1")
    versions.require_versions()  # FSDP1 is refused later, by train_c2i, with its own message


def test_requirements_state_the_checked_floors():
    lines = open(os.path.join(ROOT, "requirements.txt")).read().splitlines()
    assert f"torch>={versions.TORCH_MIN}" in lines
    assert f"accelerate>={versions.ACCELERATE_MIN}" in lines
