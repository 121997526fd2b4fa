"""Run a script with Accelerate in FSDP mode on CPU processes: the test helper of tests/test_train_fsdp.py.

Accelerate turns FSDP on only for accelerator process groups: under `cpu=True` a torchrun group is MULTI_CPU and
the FSDP environment that `accelerate launch` hands its processes (ACCELERATE_USE_FSDP, FSDP_VERSION, ...) is
ignored. This wrapper lets the AcceleratorState the script builds take the branch it takes on GPUs (distributed
type FSDP, with the plugin read from that environment) and changes nothing else, so `accelerator.prepare` shards
the model with `fully_shard` over the gloo group and checkpoints, gathers and clips as it does on GPUs.

    torchrun --nproc_per_node 2 tests/fsdp_cpu.py train_c2i.py ...   (environment: fsdp_launch_env in the tests)

With RANDAR_TEST_SHARDS_DIR set, each process also saves, right after `accelerator.prepare`, what it holds of
every parameter of the prepared model (`shards_<rank>.pt`: name -> local tensor, whether it is a DTensor, its
placements and mesh size), so that the tests check the sharding itself.
"""
import os
import runpy
import sys

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from torch.distributed.tensor import DTensor

_accelerator_state_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP  # what the MULTI_GPU branch of AcceleratorState sets
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = self.distributed_type  # as AcceleratorState does


_accelerator_prepare = Accelerator.prepare


def _prepare_and_save_shards(self, *args, **kwargs):
    prepared = _accelerator_prepare(self, *args, **kwargs)
    models = [m for m in (prepared if isinstance(prepared, (tuple, list)) else [prepared])
              if isinstance(m, torch.nn.Module)]
    if models:
        shards = {}
        for name, p in models[0].named_parameters():
            is_dtensor = isinstance(p, DTensor)
            shards[name] = {"local": (p.to_local() if is_dtensor else p).detach().clone(), "dtensor": is_dtensor,
                            "placements": [(type(x).__name__, getattr(x, "dim", None)) for x in p.placements]
                            if is_dtensor else [],
                            "mesh_size": p.device_mesh.size() if is_dtensor else 0}
        torch.save(shards, os.path.join(os.environ["RANDAR_TEST_SHARDS_DIR"], f"shards_{self.process_index}.pt"))
    return prepared


if __name__ == "__main__":
    AcceleratorState.__init__ = _init_with_fsdp_on_cpu
    if os.environ.get("RANDAR_TEST_SHARDS_DIR"):
        Accelerator.prepare = _prepare_and_save_shards
    script = os.path.abspath(sys.argv[1])
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")
