"""Launched by tests/test_balance.py under torchrun: a few steps of train.py's own setup and step functions on a
config (float64), saving every step's loss and full gradients (rank 0 writes OUT.pt).

usage: torchrun --nproc_per_node N tests/balance_worker.py CONFIG OUT.pt STEPS [RESUME_AT]
With RESUME_AT, the data stream is reopened after that many steps and continued from its saved cursor, as a
resumed run reopens it."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import balance  # noqa: E402
import train  # noqa: E402

config, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
resume_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
rank, world, device = train.init_distributed()
cfg = train.load_config([config])
dp, accumulation = train.validate(cfg, world)
r = train.setup(cfg, rank, world, dp, accumulation, device, lambda msg: None)
cost = balance.flop_cost(r.model.config)
results = []
for step in range(steps):
    if step == resume_at:
        state = r.train_data.state_dict()
        train.open_data(r, r.train_data.dp_rank)
        r.train_data.load_state_dict(state)
    batches = train.step_batches(r, cost)
    loss = train.accumulate_gradients(r.model, batches, device, r.split)
    grads = {n: p.grad.full_tensor().clone() for n, p in r.model.named_parameters()}
    results.append({"loss": loss, "grads": grads})
    r.optimizer.step()
    r.optimizer.zero_grad(set_to_none=True)
if rank == 0:
    torch.save(results, out)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
