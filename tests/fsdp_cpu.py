"""Run a script with Accelerate in FSDP mode on CPU processes: the test helper of tests/test_train_fsdp.py.

Accelerate turns FSDP on only for accelerator process groups: under `cpu=True` a torchrun group is MULTI_CPU and
the FSDP environment that `accelerate launch` hands its processes (ACCELERATE_USE_FSDP, FSDP_VERSION, ...) is
ignored. This wrapper lets the AcceleratorState the script builds take the branch it takes on GPUs (distributed
type FSDP, with the plugin read from that environment) and changes nothing else, so `accelerator.prepare` shards
the model with `fully_shard` over the gloo group and checkpoints, gathers and clips as it does on GPUs.

    torchrun --nproc_per_node 2 tests/fsdp_cpu.py train_c2i.py ...   (environment: fsdp_launch_env in the tests)
"""
import os
import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_accelerator_state_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP  # what the MULTI_GPU branch of AcceleratorState sets
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = self.distributed_type  # as AcceleratorState does


if __name__ == "__main__":
    AcceleratorState.__init__ = _init_with_fsdp_on_cpu
    script = os.path.abspath(sys.argv[1])
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")
