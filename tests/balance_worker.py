"""Launched by tests/test_balance.py under torchrun: a few steps of train.py's own setup and step functions on
each of several configs in turn, in one launch (float64), saving every step's loss and full gradients (rank 0
writes OUT.pt: {config path: [{"loss", "grads"} per step]}).

usage: torchrun --nproc_per_node N tests/balance_worker.py OUT.pt STEPS CONFIG[@RESUME_AT] [CONFIG...]
With @RESUME_AT, that config's data stream is reopened after that many steps and continued from its saved
cursor, as a resumed run reopens it. One launch for several configs: a torchrun start (interpreters, torch
imports, gloo) costs more on 2 cores than the steps themselves; each config's setup builds its own mesh, data
and model from its seed, so nothing carries from one config to the next."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import balance  # noqa: E402
import parallel  # noqa: E402
import settings  # noqa: E402
import train  # noqa: E402
from common import exit_process  # noqa: E402


def run(config, steps, resume_at, rank, world, device):
    cfg = settings.load_config([config])
    dp, accumulation = settings.validate(cfg, world)
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
    return results


def main(out, steps, *configs):
    rank, world, device = parallel.init_distributed()
    results = {}
    for spec in configs:
        config, _, resume_at = spec.partition("@")
        results[config] = run(config, int(steps), int(resume_at) if resume_at else None, rank, world, device)
    if rank == 0:
        torch.save(results, out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    exit_process(main, *sys.argv[1:])  # without the interpreter teardown that can abort a gloo rank
