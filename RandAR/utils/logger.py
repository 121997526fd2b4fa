"""Logging for training: the main process writes to stdout and `<experiment>/log.txt`; the others only warn.
The same figures go to wandb through Accelerate (`init_wandb`).

`MetricMeter` sums per-step figures on the device (no host synchronisation per step) and turns them into
the numbers logged every `log_every` steps.
"""
import logging
import os
import resource
import sys
import time
import uuid
from typing import Dict, Optional

import torch

from RandAR.utils.atomic import atomic_open


def create_logger(log_dir: Optional[str], rank: int = 0, name: str = "randar.train") -> logging.Logger:
    """log_dir given (main process): INFO and up to stdout and log_dir/log.txt (appended: a resumed run
    continues the same file). log_dir None (other ranks): WARNING and up to stderr, tagged with the rank."""
    logger = logging.getLogger(name if log_dir else f"{name}.rank{rank}")
    logger.handlers.clear()  # a second call in the same process (tests) must not duplicate lines
    logger.propagate = False
    if log_dir is not None:
        fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(log_dir, "log.txt"))]
        logger.setLevel(logging.INFO)
    else:
        fmt = logging.Formatter(f"[%(asctime)s rank {rank}] %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        handlers = [logging.StreamHandler(sys.stderr)]
        logger.setLevel(logging.WARNING)
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger


def init_wandb(accelerator, exp_dir: str, run_name: str, project: str = "RandAR", entity: Optional[str] = None,
               offline: bool = False, config: Optional[dict] = None):
    """Start the wandb tracker of `accelerator` (main process). The run id is kept in exp_dir/wandb_run_id.txt,
    so relaunches of one experiment continue one wandb run; files go to exp_dir/wandb/."""
    if offline:
        os.environ["WANDB_MODE"] = "offline"  # no network needed; `wandb sync exp_dir/wandb/offline-run-*` later
    id_file = os.path.join(exp_dir, "wandb_run_id.txt")
    run_id = open(id_file).read().strip() if os.path.exists(id_file) else ""
    if not run_id:
        run_id = uuid.uuid4().hex[:12]
        with atomic_open(id_file) as f:
            f.write(run_id)
    accelerator.init_trackers(project, config=config, init_kwargs={"wandb": {
        "entity": entity, "name": run_name, "dir": exp_dir, "id": run_id, "resume": "allow"}})


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory allocated by this process (CUDA), else the peak resident set size of the process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # kilobytes on Linux


class MetricMeter:
    """Running sums over one logging interval. Tensors stay on the device until `summary` is called."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self):
        self.loss = torch.zeros((), device=self.device)
        self.grad_norm = torch.zeros((), device=self.device)
        self.steps = 0
        self.skipped = 0
        self.start = time.time()

    def update(self, loss: torch.Tensor, grad_norm: torch.Tensor, skipped: bool):
        self.loss += loss.detach().float()
        self.grad_norm += grad_norm.detach().float()
        self.steps += 1
        self.skipped += int(skipped)

    def summary(self, reduce_mean, tokens_per_step: int, lr: float, total_skipped: int) -> Dict[str, float]:
        """reduce_mean: averages a tensor over processes (accelerator.reduce(..., "mean")); call on all ranks."""
        n = max(self.steps, 1)
        loss = reduce_mean(self.loss / n).item()
        grad_norm = (self.grad_norm / n).item()  # already the global norm on every rank
        elapsed = max(time.time() - self.start, 1e-9)
        return {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": lr,
            "skipped_steps": float(self.skipped),
            "skipped_steps_total": float(total_skipped),
            "step_time": elapsed / n,
            "tokens_per_sec": tokens_per_step * n / elapsed,
            "peak_memory_gb": peak_memory_gb(self.device),
        }


def format_metrics(step: int, metrics: Dict[str, float]) -> str:
    return (f"step {step:08d} | loss {metrics['loss']:.4f} | grad norm {metrics['grad_norm']:.4f} | "
            f"lr {metrics['lr']:.3e} | skipped {int(metrics['skipped_steps'])} "
            f"(total {int(metrics['skipped_steps_total'])}) | step time {metrics['step_time']:.3f}s | "
            f"tokens/s {metrics['tokens_per_sec']:.0f} | peak mem {metrics['peak_memory_gb']:.2f} GB")
