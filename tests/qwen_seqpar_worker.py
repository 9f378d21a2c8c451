"""seqpar_worker.py's exact full-model check on the Qwen families, launched by tests/test_qwen_cli.py:

    torchrun --standalone --nproc_per_node 4 tests/qwen_seqpar_worker.py OUT.json

For a tiny Qwen2 (q/k/v biases) and a tiny Qwen3 (q/k norms, head_dim 32 != hidden / heads): parallel.build_model +
seqpar.enable + train.accumulate_gradients with (dp=1, sp=4) and (dp=2, sp=2) in float64, against one unsharded
model that sees the whole global batch: loss and every parameter gradient. Rank 0 writes them to OUT.json.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seqpar_worker as w  # noqa: E402  (it puts the repository root on the path)

import torch.distributed as dist  # noqa: E402

import parallel  # noqa: E402

FAMILIES = {"qwen2": dict(model_type="qwen2"), "qwen3": dict(model_type="qwen3", head_dim=32)}

if __name__ == "__main__":
    rank, world, _ = parallel.init_distributed()
    assert world == 4, "the exact checks need 4 processes"
    base, result = dict(w.MODEL), {}
    for name, overrides in FAMILIES.items():
        w.MODEL.clear()
        w.MODEL.update(base, **overrides)
        result[name] = w.model_checks(rank, world)
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
