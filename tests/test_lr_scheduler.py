"""LR schedules against the values of the original code (tests/fixtures/lr_schedules.json), with the two
documented fixes: `constant` honours its warm-up, and no schedule climbs back after num_training_steps."""
import json
import os

import pytest
import torch

from RandAR.training.lr_schedule import get_scheduler, scheduler_from_config

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "lr_schedules.json")
with open(FIXTURE) as f:
    REF = json.load(f)
ENTRIES = {e["label"]: e for e in REF["schedules"]}


def lrs(kwargs, n=REF["last_step"] + 1, base_lr=REF["optimizer"]["lr"]):
    """lr after k calls of scheduler.step(), k = 0..n-1 (the fixture's procedure)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = get_scheduler(optimizer=opt, **kwargs)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def assert_close(got, want, rtol=1e-12):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, rel=rtol, abs=1e-20), f"step {k}: {g} != {w}"


@pytest.mark.parametrize("label", ["cosine", "cosine_default_num_cycles", "linear", "constant_with_warmup"])
def test_values_match_original_until_end_of_training(label):
    e = ENTRIES[label]
    end = e["get_scheduler_kwargs"]["num_training_steps"]
    got = lrs(e["get_scheduler_kwargs"])
    assert_close(got[:end + 1], e["lr"][:end + 1])
    # Fix: after the end the rate holds its last value (the original cosine climbs back).
    assert_close(got[end + 1:], [e["lr"][end]] * (len(got) - end - 1))


def test_cosine_original_climbs_back_but_ours_does_not():
    e = ENTRIES["cosine"]
    assert e["lr"][-1] > e["lr"][100] * 2  # the quirk being fixed
    assert lrs(e["get_scheduler_kwargs"])[-1] == pytest.approx(e["lr"][100], rel=1e-12)


def test_constant_honours_warm_up():
    # Fix: `constant` with warm-up arguments gives the constant_with_warmup values (the original ignored them).
    got = lrs(ENTRIES["constant"]["get_scheduler_kwargs"])
    assert_close(got, ENTRIES["constant_with_warmup"]["lr"])
    # Without warm-up it is the original's plain constant.
    assert_close(lrs({"name": "constant"}), ENTRIES["constant"]["lr"])


def test_resume_from_state_dict_continues_identically():
    kwargs = ENTRIES["cosine"]["get_scheduler_kwargs"]
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=4e-4)
    sched = get_scheduler(optimizer=opt, **kwargs)
    for _ in range(37):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=4e-4)
    sched2 = get_scheduler(optimizer=opt2, **kwargs)
    sched2.load_state_dict(state)
    opt2.load_state_dict(opt.state_dict())
    for _ in range(5):
        opt.step(), opt2.step()
        sched.step()
        sched2.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
    assert opt.param_groups[0]["lr"] == ENTRIES["cosine"]["lr"][42]


def test_config_section_and_errors():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=4e-4)
    cfg = {"type": "cosine", "warm_up_iters": 10, "min_lr_ratio": 0.05, "num_cycles": 0.5}
    sched = scheduler_from_config(opt, cfg, max_iters=100)
    for _ in range(55):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(ENTRIES["cosine"]["lr"][55], rel=1e-12)
    with pytest.raises(ValueError, match="num_cycles"):
        scheduler_from_config(opt, {"type": "cosine", "warm_up_iters": 1}, max_iters=10)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        get_scheduler("step", opt)
    with pytest.raises(ValueError, match="num_training_steps"):
        get_scheduler("linear", opt, num_warmup_steps=1)
