"""Launched by tests/test_sft.py under torchrun: one step's loss and full gradients on SFT sequences (labels only on
assistant tokens), exactly as train.py computes them, in float64 with FSDP2 and activation checkpointing.

usage: torchrun --nproc_per_node N tests/sft_worker.py SEQUENCES.pt OUT.pt
SEQUENCES.pt holds a global batch of (input_ids, labels, cu_seqlens) triples; rank r of N takes the r-th contiguous
1/N of it, so the ranks hold unequal numbers of assistant tokens."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import parallel  # noqa: E402
import train  # noqa: E402
from common import exit_process  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from train_worker import config  # noqa: E402  the same tiny float64 model as the pre-training check


def main(sequences, out):
    rank, world, device = parallel.init_distributed()
    mesh = init_device_mesh("cpu", (world,))
    model = parallel.build_model(config(), mesh, device, log=lambda msg: None)
    batch = torch.load(sequences, weights_only=True)
    per_rank = len(batch) // world
    mine = [data.Sequence(*s) for s in batch[rank * per_rank:(rank + 1) * per_rank]]
    loss = train.accumulate_gradients(model, train.micro_batches(mine, 1), device)
    grads = {name.replace("_checkpoint_wrapped_module.", ""): p.grad.full_tensor()
             for name, p in model.named_parameters()}
    if rank == 0:
        torch.save({"loss": loss, "grads": grads}, out)
    torch.distributed.barrier()  # leave together (see train_worker.py)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    exit_process(main, sys.argv[1], sys.argv[2])  # see common.exit_process
