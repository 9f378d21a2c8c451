"""Launched by tests/test_loss.py under torchrun: gradients of one step with the fused loss on and off, under FSDP2
(every block and the root) with checkpointed blocks and a tied head, in float64. Prints the largest difference."""
import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import Llama, LlamaConfig  # noqa: E402

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)  # the same weights on every rank before sharding
model = Llama(LlamaConfig.tiny(vocab_size=300, tie_word_embeddings=True, initializer_range=0.2)).double()
model.loss_chunk_size = 16
for i, block in enumerate(model.model.layers):
    model.model.layers[i] = checkpoint_wrapper(block)
    fully_shard(model.model.layers[i])
fully_shard(model)
g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
ids = torch.randint(0, 300, (60,), generator=g)
labels = ids.roll(-1)
labels[:17] = -100  # a prompt: a chunk without labels, and one with some
cu = torch.tensor([0, 25, 60], dtype=torch.int32)
grads = {}
for fused in (True, False):
    model.fused_loss = fused
    loss, n = model(ids, cu_seqlens=cu, labels=labels)
    (loss / 7.0).backward()
    grads[fused] = [p.grad.full_tensor() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
diff = max((a - b).abs().max().item() for a, b in zip(grads[True], grads[False]))
norm = max(a.abs().max().item() for a in grads[True])
if rank == 0:
    print(f"max grad difference {diff:.3e} (largest gradient {norm:.3e})")
dist.destroy_process_group()
