"""Progress output: a terminal gets tqdm's live bar, a log (not a terminal) a line at most every 30 s."""
import io
import os
import re
import subprocess

import pytest
import tqdm.std

from RandAR.utils import progress as progress_module
from RandAR.utils.progress import LOG_INTERVAL_S, progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Clock:
    """tqdm's time source, advanced by hand: no sleeps."""

    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(tqdm.std, "time", c)  # tqdm reads the clock through this name
    return c


def test_log_gets_a_line_every_interval_with_rate_and_eta(clock):
    log = io.StringIO()
    steps, dt = 1000, 0.5  # 500 s of work
    for i in progress(range(steps), file=log, desc="train"):
        clock.t += dt
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    # the opening line, one per full interval (printed at the first update after it), the closing line
    assert len(lines) == 1 + int(steps * dt // LOG_INTERVAL_S) + 1, lines
    assert lines[0].startswith("train:   0%") and lines[-1].startswith("train: 100%")
    for line in lines[1:-1]:
        assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[0-9.]+it/s\]$", line), line  # elapsed<ETA, rate
    assert re.search(r"1000/1000 \[08:20<00:00, +2.00it/s\]$", lines[-1]), lines[-1]


def test_log_throttles_manual_updates_and_postfix_refreshes(clock):
    log = io.StringIO()
    bar = progress(total=100, file=log, unit="img")
    for i in range(100):
        clock.t += 1.0
        bar.update(1)
        bar.set_postfix(loss=f"{i:.3f}")  # refreshes on every call in plain tqdm
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 + 100 // int(LOG_INTERVAL_S) + 1, lines
    assert lines[-1].startswith("100%") and "loss=99.000" in lines[-1]


def test_terminal_keeps_tqdms_live_bar(clock):
    term = _Terminal()
    for _ in progress(range(50), file=term):
        clock.t += 1.0
    assert term.getvalue().count("\r") > 40  # redrawn in place, about once per update


def test_disabled_bar_prints_nothing(clock):
    log = io.StringIO()
    for _ in progress(range(10), file=log, disable=True):
        clock.t += 100
    assert log.getvalue() == ""


def test_every_progress_bar_goes_through_the_helper():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    helper = os.path.relpath(progress_module.__file__, REPO)
    offenders = [f for f in files if f != helper and not f.startswith("tests/")
                 and re.search(r"^\s*(from tqdm|import tqdm)", open(os.path.join(REPO, f)).read(), re.M)]
    assert offenders == [], f"use RandAR.utils.progress.progress instead of tqdm in {offenders}"
