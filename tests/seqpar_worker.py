"""Multi-process checks for seqpar.py, launched by tests/test_seqpar.py:

    torchrun --standalone --nproc_per_node N tests/seqpar_worker.py MODE OUT.json      (or plain python: a
    world of 1)

MODE exact (4 processes), float64:
    attention: Ulysses attention with sp = 4 and sp = 2 (on sub-groups) against attention.attend on the full
    sequence in this process: output and q/k/v gradients, and the bytes each exchange sends;
    model: parallel.build_model + seqpar.enable + train.accumulate_gradients with (dp=1, sp=4) and (dp=2, sp=2)
    against an unsharded Llama that sees the whole global batch in this process: loss and every parameter
    gradient.
MODE train: a few train.train_step calls (fp32, AdamW) with sp = world size (1 = no sequence parallelism).
Rank 0 writes what it measured to OUT.json; the test asserts on it. Any rank failing exits non-zero.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

import attention
import data
import seqpar
import parallel
import settings
import train
from common import exit_process
from model import Llama

torch.set_num_threads(1)


def packs(seed, lengths_list, vocab, ignore_every=7):
    """Packed micro-batches with the given document lengths; some labels ignored, as real data has."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for lengths in lengths_list:
        T = sum(lengths)
        ids = torch.randint(0, vocab, (T,), generator=g)
        cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        labels = torch.full((T,), -100)
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
            labels[a:b - 1] = ids[a + 1:b]  # each document's last token predicts nothing
        labels[torch.randint(0, ignore_every, (T,), generator=g) == 0] = -100
        out.append(data.Sequence(ids, labels, cu))
    return out


# ----------------------------------------------------------------------------------------------------------
# attention

class CountingAllToAll:
    """Wraps dist.all_to_all_single to record the bytes this rank sends to other ranks, per call."""

    def __init__(self):
        self.original, self.sent = dist.all_to_all_single, []

    def __call__(self, output, input, *args, group=None, **kwargs):
        n = dist.get_world_size(group)
        self.sent.append(input.numel() * input.element_size() * (n - 1) // n)
        return self.original(output, input, *args, group=group, **kwargs)


def attention_checks(rank, world):
    counter = CountingAllToAll()
    dist.all_to_all_single = counter  # seqpar calls dist.all_to_all_single: every exchange is counted
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank must create both groups
    groups = {4: dist.group.WORLD, 2: pairs[rank // 2]}
    # 48 tokens: for sp = 4 slices end at 12, 24, 36 and documents straddle all of them; one single-document
    # pack
    packs_cu = [[0, 5, 17, 18, 41, 48], [0, 48], [0, 3, 3, 30, 48]]
    head_cases = [(4, 4), (8, 2), (4, 1), (8, 4)]  # MHA; GQA; MQA; for sp=4: GQA with H_kv == sp
    results = []
    for sp, group in sorted(groups.items()):
        sp_rank = dist.get_rank(group)
        ops = seqpar.ulysses_ops(group)
        for H, K in head_cases:
            for cu_list in packs_cu:
                T, D = cu_list[-1], 8
                cu = torch.tensor(cu_list, dtype=torch.int32)
                g = torch.Generator().manual_seed(1000 * H + 10 * K + len(cu_list))  # the same on every rank
                q, k, v = (torch.randn(T, h, D, generator=g, dtype=torch.float64) for h in (H, K, K))
                grad_out = torch.randn(T, H, D, generator=g, dtype=torch.float64)
                # the reference: one process, whole sequence
                ref = [x.clone().requires_grad_() for x in (q, k, v)]
                ref_out = attention.attend(*ref, attention.prepare(cu, T, "cpu"))
                ref_out.backward(grad_out)
                # sequence parallel: this rank's slice of everything
                n = T // sp
                mine = slice(sp_rank * n, (sp_rank + 1) * n)
                local = [x[mine].clone().requires_grad_() for x in (q, k, v)]
                counter.sent.clear()
                out = ops.attend(*local, ops.prepare(cu, n, "cpu"))
                forward_sent = list(counter.sent)
                out.backward(grad_out[mine])
                backward_sent = counter.sent[len(forward_sent):]
                err = max([float((out - ref_out[mine]).detach().abs().max())] +
                          [float((a.grad - b.grad[mine]).abs().max()) for a, b in zip(local, ref)])
                results.append(dict(sp=sp, heads=H, kv_heads=K, cu=cu_list, tokens_per_rank=n, head_dim=D,
                                    max_err=err, forward_sent=forward_sent, backward_sent=backward_sent,
                                    formula=seqpar.bytes_per_layer(n, H, K, D, sp, bytes_per_element=8),
                                    grad_norm=float(sum(x.grad.norm() for x in ref))))
    dist.all_to_all_single = counter.original
    everyone = [None] * world
    dist.all_gather_object(everyone, results)
    return [r for rank_results in everyone for r in rank_results]


# ----------------------------------------------------------------------------------------------------------
# model

MODEL = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, intermediate_size=96)


def build_model(cfg, mesh):
    return parallel.build_model(cfg, mesh, torch.device("cpu"), lambda msg: None)


def full_grads(model):
    return {name.replace("_checkpoint_wrapped_module.", ""): p.grad.full_tensor() for name, p in
            model.named_parameters()}


def model_checks(rank, world):
    # a global batch of four packs: documents straddle slice boundaries, and two lengths need padding for sp =
    # 4
    batches = packs(7, [[10, 30, 1, 23], [62], [5, 5, 40, 11], [33, 31]], MODEL["vocab_size"])
    fsdp_mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    results, reference = [], None
    for dp, sp in [(1, 4), (2, 2)]:
        cfg = dict(settings.DEFAULTS, param_dtype="float64", compute_dtype="float64", sp_size=sp, model="tiny",
                   model_overrides=MODEL)
        mesh = init_device_mesh("cpu", (dp, sp), mesh_dim_names=("dp", "sp"))
        model = build_model(cfg, fsdp_mesh)
        split = seqpar.enable(model, mesh["sp"].get_group(), mesh.get_local_rank("sp"))
        if reference is None:  # the same weights, in one unsharded model that sees the whole batch
            weights = {n.replace("_checkpoint_wrapped_module.", ""): p.full_tensor() for n, p in
                       model.named_parameters()}
            ref = Llama(model.config).to(torch.float64)
            ref.load_state_dict(weights, strict=True)
            total, count = 0, 0
            for b in batches:
                loss, n_valid = ref(b.input_ids, cu_seqlens=b.cu_seqlens, labels=b.labels)
                total, count = total + loss, count + n_valid
            (total / count).backward()
            reference = (float((total / count).detach()), {n: p.grad for n, p in ref.named_parameters()})
        dp_rank = mesh.get_local_rank("dp")
        mine = batches[dp_rank::dp]  # as data.Mixture deals global sequences to data-parallel ranks
        loss = train.accumulate_gradients(model, mine, torch.device("cpu"), split)
        grads = full_grads(model)
        ref_loss, ref_grads = reference
        assert set(grads) == set(ref_grads), (sorted(grads), sorted(ref_grads))
        results.append(dict(dp=dp, sp=sp, loss=loss, ref_loss=ref_loss, n_params=len(grads),
                            ulysses=model.attention_ops.sp,
                            max_grad_err={n: float((grads[n] - ref_grads[n]).abs().max()) for n in grads},
                            ref_grad_max={n: float(ref_grads[n].abs().max()) for n in grads}))
    return results


# ----------------------------------------------------------------------------------------------------------
# train

def train_mode(rank, world, steps=4):
    sp = world
    cfg = dict(settings.DEFAULTS, param_dtype="float32", compute_dtype="float32", sp_size=sp, model="tiny",
               model_overrides=MODEL, lr=1e-2, min_lr=1e-3, max_steps=steps, warmup_fraction=0.0,
               grad_clip=1.0)
    fsdp_mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("fsdp",))
    mesh = init_device_mesh("cpu", (1, sp), mesh_dim_names=("dp", "sp"))
    model = build_model(cfg, fsdp_mesh)
    split = seqpar.enable(model, mesh["sp"].get_group(), mesh.get_local_rank("sp")) if sp > 1 else None
    optimizer = train.build_optimizer(model, cfg)
    batches = packs(100, [[20, 9, 35], [64], [3, 50, 11]], MODEL["vocab_size"])  # each step: the loss falls
    losses, norms = [], []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = train.lr_at(step, cfg)
        loss, norm = train.train_step(model, optimizer, batches, torch.device("cpu"), cfg["grad_clip"], split)
        losses.append(loss)
        norms.append(norm)
    held_out = packs(999, [[40, 24], [13, 51]], MODEL["vocab_size"])
    val = train.validation_loss(model, held_out, torch.device("cpu"), split)
    return dict(sp=sp, losses=losses, grad_norms=norms, val_loss=val)


def main(mode, out_path):
    rank, world, _ = parallel.init_distributed()
    if mode == "exact":
        assert world == 4, "the exact checks need 4 processes"
        result = dict(attention=attention_checks(rank, world), model=model_checks(rank, world))
    else:
        result = train_mode(rank, world)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    exit_process(main, sys.argv[1], sys.argv[2])  # see common.exit_process
