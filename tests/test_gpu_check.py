"""benchmarks/gpu_check.sh cannot rot: its --dry-run (every step, on CPU, tiny shapes) passes and leaves the
summary table; a run out of time still leaves it; the generation benchmark refuses to time a compiled decode step
that recompiles or falls back to eager."""
import os
import re
import subprocess
import sys

import pytest

from helpers import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["env", "fixtures_generate", "fixtures_forward", "fixtures_train", "precompile", "speed_l", "speed_xl",
         "train_speed", "fid_backends"]


def run_check(out, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("RANDAR_INCEPTION_PATH", "ORIGINAL_REPO",
                                                              "GPU_CHECK_BUDGET")}
    return subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=1200,
                          env={**base, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env})


def step_status(summary: str) -> dict:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| (\w+) \| ([^|]+) \| [^|]+ \| [^|]+ \|$", summary, re.M)
            if m.group(1) in STEPS}


def test_dry_run_passes_every_step_and_writes_the_table(tmp_path):
    r = run_check(tmp_path)
    summary = (tmp_path / "summary.md").read_text()
    assert r.returncode == 0, summary + r.stdout[-3000:] + r.stderr[-3000:]
    status = step_status(summary)
    assert list(status) == STEPS
    assert all(status[s] == "ok" for s in STEPS[:-1]), status
    assert status["fid_backends"] == "skipped: RANDAR_INCEPTION_PATH not set"
    # Each correctness step wrote its checks, all passed; the speed steps timed eager and compiled at both step
    # counts and batch sizes, the compiled step built one graph per batch size.
    for step, n in [("fixtures_generate", 3), ("fixtures_forward", 4), ("fixtures_train", 3)]:
        rows = re.findall(r"^\| [^|]+ \| (ok|\*\*FAIL\*\*) \|", (tmp_path / f"{step}.md").read_text(), re.M)
        assert rows == ["ok"] * n, step
    speed = (tmp_path / "speed_l.md").read_text()
    timed = re.findall(r"^\| randar_tiny \| (\d) \| (ours|compiled) \| (\d+) \| [^|]+\|[^|]+\|[^|]+\|[^|]+\|[^|]+\| "
                       r"([-\d]+) \|$", speed, re.M)
    assert sorted(timed) == sorted((b, i, s, "1" if i == "compiled" else "-")
                                   for b in "12" for i in ("ours", "compiled") for s in ("16", "6"))
    assert "| tiny | bf16 | 8 | False | True |" in (tmp_path / "train_speed.md").read_text()


def test_a_run_out_of_time_still_leaves_the_table_and_fails(tmp_path):
    r = run_check(tmp_path, GPU_CHECK_BUDGET="20")
    assert r.returncode == 1
    status = step_status((tmp_path / "summary.md").read_text())
    assert list(status) == STEPS
    assert status["env"] == "ok"
    cut = [s for s in STEPS if "TIMEOUT" in status[s] or "budget spent" in status[s]]
    assert "speed_xl" in cut and "train_speed" in cut, status


@pytest.fixture
def bench(monkeypatch):
    """bench_generate.main() in-process on the tiny config, compiled with dynamo's eager backend."""
    import torch._dynamo
    torch._dynamo.reset()
    module = load_script("benchmarks/bench_generate.py")
    monkeypatch.setattr(sys, "argv", ["bench_generate.py", "--configs", "configs/randar/randar_tiny.yaml", "--device",
                                      "cpu", "--batch-sizes", "2", "--steps", "16", "6", "--repeats", "1",
                                      "--compile", "--compile-backend", "eager"])
    return module


def with_piece_size(monkeypatch, size_of):
    """Feed the static decode step pieces of size_of(chunk) rows (a shape that changes = a recompile)."""
    import RandAR.model.generate as gen
    real = gen.decode_in_pieces
    monkeypatch.setattr(gen, "decode_in_pieces",
                        lambda step, x, f, start, n, chunk: real(step, x, f, start, n, size_of(x.shape[1])))


def test_bench_generate_times_one_graph_per_batch(bench, capsys):
    bench.main()
    assert "bs  2 compiled warm-up compiled 1 graph(s)" in capsys.readouterr().out


def test_bench_generate_refuses_a_step_that_recompiles_per_step_count(bench, monkeypatch):
    with_piece_size(monkeypatch, lambda rows: rows)  # the chunk's own size: a shape per step count
    with pytest.raises(SystemExit, match="expected exactly 1 per batch size"):
        bench.main()


def test_bench_generate_refuses_a_timed_run_that_recompiles(bench, monkeypatch):
    import torch._dynamo
    with_piece_size(monkeypatch, lambda rows: 8 if torch._dynamo.config.error_on_recompile else 16)
    with pytest.raises(SystemExit, match="recompiled during a timed run"):
        bench.main()
