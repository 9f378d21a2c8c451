"""
Continued long-context training, ProLong style: `torchrun --nproc_per_node N train.py configs/NAME.py
[--key=value]` (or `python train.py ...` for one process). What can be set, and the checks every value
passes before any work, are in settings.py.

One optimizer step consumes `tokens_per_step` tokens: sequences of `seq_len` tokens, `micro_batch_sequences`
of them packed into each micro-batch (each keeps its own document boundaries), as many micro-batches per rank
as it takes (gradient accumulation). The loss is exact: every rank sums per-token losses, the valid-label
count of the whole step is all-reduced *before* the backward passes, and each micro-batch backpropagates sum /
global count; FSDP then sums (not averages) gradients across ranks. So the gradient is the mean over all valid
tokens of the step whatever the world size, accumulation or document lengths.

Parallelism (parallel.py builds it): FSDP2 (`fully_shard`) on every transformer block and at the root, fp32
master weights with bf16 compute, activation checkpointing per block. With `sp_size > 1` ranks form a
(data-parallel x sequence-parallel) mesh: the ranks of one SP group share a sequence, each holds a contiguous
slice, and Ulysses all-to-alls (seqpar.py) enter through the attention call. Even one process runs under a
process group (a world of one), so there is a single code path. Checkpoints and exact resume: checkpoint.py.

Read in order: the optimizer and its learning-rate schedule; one optimizer step (micro-batches, gradient
accumulation, validation loss); the run: main, setup (everything before the first step), the loop.
"""
import signal
import sys

import common

if __name__ == "__main__":
    common.exit_on_interrupt()  # Ctrl-C while torch imports: one line and 130, not a traceback

import errno
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

import attention
import balance
import checkpoint
import data
import parallel
import settings
import throughput
from common import UserError
from model import check_token_ids
from parallel import init_distributed
from settings import ConfigError, labels_cross, load_config, resolved, validate


# ----------------------------------------------------------------------------------------------------------
# the optimizer and its schedule


def build_optimizer(model, cfg):
    # no weight decay on norm weights (the only 1-D parameters of Llama)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=1e-8)


def lr_at(step, cfg):
    """Linear warmup over warmup_fraction of the steps, then cosine decay from lr to min_lr."""
    warmup = max(1, round(cfg["warmup_fraction"] * cfg["max_steps"]))
    if step < warmup:
        return cfg["lr"] * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg["max_steps"] - warmup)
    return cfg["min_lr"] + 0.5 * (cfg["lr"] - cfg["min_lr"]) * (1 + math.cos(math.pi * min(progress, 1.0)))


# ----------------------------------------------------------------------------------------------------------
# one optimizer step


def micro_batches(sequences, per_micro_batch, sort=True):
    """Concatenate consecutive sequences into micro-batches (boundaries kept), then (sort=True) order them by
    the sum of squared document lengths, descending, so that every rank reaches its attention-heavy ones at
    the same time. The order changes only the speed: the step's loss and gradient are sums over all
    micro-batches."""
    batches = []
    for i in range(0, len(sequences), per_micro_batch):
        group = sequences[i:i + per_micro_batch]
        offsets = torch.tensor([0] + [len(s.input_ids) for s in group]).cumsum(0)
        cu = torch.cat([torch.as_tensor(s.cu_seqlens[:-1], dtype=torch.int32) + int(o)
                        for s, o in zip(group, offsets)] + [offsets[-1:].int()])
        batches.append(data.Sequence(torch.cat([torch.as_tensor(s.input_ids) for s in group]),
                                     torch.cat([torch.as_tensor(s.labels) for s in group]), cu))
    return data.order_microbatches(batches) if sort else batches


def step_batches(r, cost):
    """This rank's micro-batches of the next step. balance_steps: the whole step's sequences (all ranks')
    spread by `cost` so that each micro-step's ranks carry equal work (data.balance_step); else this rank's
    own sequences, sorted (sort_microbatches) as the paper does. The same global sequences either way."""
    per_micro = r.cfg["micro_batch_sequences"]
    if r.cfg["balance_steps"]:
        sequences = r.train_data.balanced_step(r.sequences_per_rank, per_micro, cost)
        return micro_batches([as_tensors(s) for s in sequences], per_micro, sort=False)
    sequences = [as_tensors(next(r.train_data)) for _ in range(r.sequences_per_rank)]
    return micro_batches(sequences, per_micro, r.cfg["sort_microbatches"])


def accumulate_gradients(model, batches, device, split=None):
    """Forward and backward over this rank's micro-batches of one step. Returns the mean loss over the
    valid tokens of the step on all ranks. `split` (seqpar) first cuts each batch down to this rank's slice
    of it."""
    if split is not None:
        batches = [split(b) for b in batches]
    count = sum(int((b.labels != -100).sum()) for b in batches)
    n_valid = torch.tensor(float(count), dtype=torch.float64, device=device)
    dist.all_reduce(n_valid)  # before any backward: every micro-batch divides by the step's global count
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for b in batches:
        loss, _ = forward(model, b, device)
        (loss / n_valid.clamp(min=1)).backward()
        loss_sum += loss.detach().double()
    dist.all_reduce(loss_sum)
    return (loss_sum / n_valid.clamp(min=1)).item()


def train_step(model, optimizer, batches, device, grad_clip, split=None):
    """One optimizer step. Returns (loss, gradient norm before clipping)."""
    loss = accumulate_gradients(model, batches, device, split)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
        grad_norm = grad_norm.full_tensor()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm.item()


@torch.no_grad()
def validation_loss(model, sequences, device, split=None):
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for b in sequences:
        loss, n = forward(model, split(b) if split else b, device)
        loss_sum += loss.double()
        count += n
    dist.all_reduce(loss_sum)
    dist.all_reduce(count)
    return (loss_sum / count.clamp(min=1)).item()


def forward(model, batch, device):
    """(summed loss, valid labels) of one packed batch; a sequence-parallel slice carries its global
    positions.

    Token ids and labels are checked here, on the host, so that the model need not sync with the GPU to do it;
    cu_seqlens stays on the host too (attention.prepare reads it there and copies it to the device once)."""
    vocab = model.config.vocab_size
    try:
        check_token_ids(batch.input_ids, vocab)
        check_token_ids(batch.labels, vocab, "labels")
    except ValueError as e:
        raise data.DataError(str(e)) from None
    positions = getattr(batch, "position_ids", None)
    # cu_seqlens as a numpy array: FSDP2's root pre-forward moves every tensor argument to the GPU, and
    # attention.prepare would copy it back to the host for its checks, a sync per micro-batch
    cu = torch.as_tensor(batch.cu_seqlens).numpy()
    return model(batch.input_ids.to(device, non_blocking=True), cu_seqlens=cu,
                 labels=batch.labels.to(device, non_blocking=True),
                 position_ids=None if positions is None else positions.to(device))


def as_tensors(seq):
    return data.Sequence(*(torch.as_tensor(x) for x in seq))


# ----------------------------------------------------------------------------------------------------------
# the run


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.default_int_handler)  # imports done: Ctrl-C raises KeyboardInterrupt
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip().split("\n\n")[0])
        return
    rank, cfg = 0, None
    try:
        rank, world, device = init_distributed()
        log = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)
        cfg = load_config(argv)
        dp, accumulation = validate(cfg, world)
        if device.type == "cpu":  # decided on rank 0 for all: a timing probe's noise must not split the ranks
            dtype = settings.cpu_compute_dtype(cfg, argv, log) if rank == 0 else None
            cfg["compute_dtype"] = parallel.broadcast_object(dtype)
        settings.check_init_from(cfg["init_from"])
        train(setup(cfg, rank, world, dp, accumulation, device, log))
    except (UserError, OSError) as e:  # an OSError: a full disk while writing metrics.jsonl, say
        if rank == 0:
            why = str(e) if isinstance(e, UserError) else checkpoint.describe(e, e.filename) \
                if e.errno == errno.ENOSPC else f"{e.filename or 'a file'}: {e.strerror}"
            common.log(f"error: {why}")
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.exit(2)
    except KeyboardInterrupt:  # checkpoints are only ever renamed into place, so nothing is half-written
        if rank == 0:
            name = cfg and checkpoint.read_latest_name(cfg["out_dir"])
            common.log("error: interrupted; " + (
                f"{os.path.join(cfg['out_dir'], name)} is the latest checkpoint: continue with --resume=True"
                if name else "no checkpoint was written yet"))
        sys.exit(130)
    dist.barrier()  # leave together: a rank tearing down gloo while another still works can abort the process
    dist.destroy_process_group()


@dataclass
class Run:
    """What the loop works with; setup() builds it."""
    cfg: dict
    rank: int
    world: int
    dp: int
    accumulation: int  # micro-batches per rank per step
    device: torch.device
    log: object
    tokenizer: object = None
    train_data: object = None  # data.Mixture
    val: list = field(default_factory=list)  # this rank's held-out sequences
    model: object = None
    optimizer: object = None
    split: object = None  # seqpar's cut of a batch to this rank's slice; None without sequence parallelism
    eos_token_ids: list = None
    step: int = 0

    @property
    def sequences_per_rank(self):  # per step
        return self.accumulation * self.cfg["micro_batch_sequences"]


def setup(cfg, rank, world, dp, accumulation, device, log):
    """Everything before the first step, cheapest first: the run directory, the attention kernels, the data
    (opened and checked before the slow model build), the model and optimizer, then a resumed or handed-off
    state."""
    r = Run(cfg, rank, world, dp, accumulation, device, log)
    out_dir = cfg["out_dir"]
    resume_from = resume_point(cfg, log)
    try:
        backend = attention.activate(device, cfg["attention_backend"])
    except ValueError as e:
        raise ConfigError(f"attention_backend: {e}") from None
    # FSDP shards over all ranks; the (dp, sp) mesh says which ranks share a sequence
    mesh = init_device_mesh(device.type, (dp, cfg["sp_size"]), mesh_dim_names=("dp", "sp"))
    fsdp_mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("fsdp",))
    # the init checkpoint's own tokenizer, a local directory or a hub id (Qwen's is not Llama-3's);
    # neither: Llama-3's
    r.tokenizer = data.load_tokenizer(cfg["tokenizer"] or cfg["init_from"])
    open_data(r, mesh.get_local_rank("dp"))
    if device.type == "cuda":  # before the slow model build: a config that cannot fit stops here, in one line
        import memory
        memory.check_fits(cfg, world, device, log)
    open_model(r, fsdp_mesh, backend)
    if cfg["sp_size"] > 1:
        import seqpar
        r.split = seqpar.enable(r.model, mesh["sp"].get_group(), mesh.get_local_rank("sp"))
    r.optimizer = build_optimizer(r.model, cfg)
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        for stale in checkpoint.remove_stale(out_dir):
            log(f"removed {stale}: a checkpoint save cut short by a crash")
    dist.barrier()
    restore(r, resume_from)
    if rank == 0:
        checkpoint.trim_metrics(out_dir, r.step)
    return r


def resume_point(cfg, log):
    """The checkpoint to continue from (resume=True), or None. Without resume=True, a run directory that
    already holds a run is refused: its checkpoints are not overwritten."""
    out_dir = cfg["out_dir"]
    resume_from = checkpoint.latest(out_dir) if cfg["resume"] else None
    if cfg["resume"] and resume_from is None:
        log(f"resume=True: no checkpoint in {out_dir} yet, so this run starts from step 0")
    if not cfg["resume"] and os.path.exists(os.path.join(out_dir, "latest")):
        raise ConfigError(f"{out_dir} already holds a run's checkpoints: resume=True to continue it, or "
                          f"choose another out_dir")
    return resume_from


def open_data(r, dp_rank):
    """This rank's training stream and held-out sequences, checked against the run's tokenizer."""
    cfg = r.cfg
    r.train_data = data.Mixture(resolved(cfg["mixture"], cfg["data_root"]), cfg["seq_len"], seed=cfg["seed"],
                                dp_rank=dp_rank, dp_size=r.dp, allow_repeat=cfg["allow_repeat"],
                                num_sequences=cfg["max_steps"] * r.sequences_per_rank * r.dp,
                                cross_document_labels=labels_cross(cfg))
    r.train_data.check_tokenizer(r.tokenizer)
    if cfg["val_mixture"]:
        val_data = data.Mixture(resolved(cfg["val_mixture"], cfg["data_root"]), cfg["seq_len"],
                                seed=cfg["seed"] + 1, dp_rank=dp_rank, dp_size=r.dp, allow_repeat=True,
                                cross_document_labels=labels_cross(cfg))
        val_data.check_tokenizer(r.tokenizer)
        r.val = [as_tensors(val_data.sequence(g)) for g in range(dp_rank, cfg["val_sequences"], r.dp)]


def open_model(r, mesh, backend):
    """The sharded model (parallel.build_model) on the attention backend that setup activated, checked
    against the run's tokenizer; and the ids that end its generation, which its checkpoints will name."""
    tokenizer = r.tokenizer
    model = parallel.build_model(r.cfg, mesh, r.device, r.log)
    model.attention_backend = backend
    if not r.cfg["init_from"]:  # a fresh model's config.json names its tokenizer's ids, not Llama-3's
        model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_id, tokenizer.eos_id
    if model.config.vocab_size < tokenizer.n_vocab:
        raise ConfigError(f"tokenizer {tokenizer.name} has {tokenizer.n_vocab} ids but the model's "
                          f"vocabulary is {model.config.vocab_size}")
    # a model fine-tuned on chat data ends its turns with <|eot_id|>: generation (and evaluate.py's --chat
    # auto) must know, as Llama-3 Instruct's generation_config.json says
    eos = model.config.eos_token_id
    ends = set(eos) if isinstance(eos, list) else {eos}
    r.eos_token_ids = sorted(ends | r.train_data.end_of_turn_ids(tokenizer))
    r.model = model


def restore(r, resume_from):
    """Continue a run exactly from its checkpoint, or (stage hand-off) take init_from's optimizer state."""
    cfg = r.cfg
    if resume_from:
        state = checkpoint.resume(r.model, r.optimizer, r.train_data, resume_from, cfg["param_dtype"])
        r.step = state["step"]
        r.log(f"resumed from {resume_from} at step {r.step} (saved by {state['world_size']} ranks, now "
              f"{r.world})")
    elif cfg["init_from"] and cfg["load_optimizer"]:
        checkpoint.load_optimizer(r.model, r.optimizer, cfg["init_from"])  # weights came with the model
        r.log(f"optimizer state from {cfg['init_from']}; learning-rate schedule restarted")


def train(r):
    """The loop: one optimizer step per iteration; logs, validation and checkpoints at their intervals."""
    cfg, steps = r.cfg, r.cfg["max_steps"]
    r.log(f"training: {steps} steps of {cfg['tokens_per_step']:,} tokens; {r.world} ranks (dp {r.dp} x sp "
          f"{cfg['sp_size']}), {r.accumulation} micro-batches of {cfg['micro_batch_sequences']} x "
          f"{cfg['seq_len']} tokens per rank per step")
    if r.step == 0:
        validate_now(r)
    peak, source = throughput.mfu_peak(cfg["peak_flops"], r.device, getattr(torch, cfg["compute_dtype"]))
    r.log(f"MFU against {peak / 1e12:,.3f} TFLOP/s per device ({source})" if peak else
          f"MFU not shown: {source}")
    step_times, cost = [], balance.flop_cost(r.model.config)
    while r.step < steps:
        t0 = time.perf_counter()
        batches = step_batches(r, cost)
        lr = lr_at(r.step, cfg)
        for group in r.optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm = train_step(r.model, r.optimizer, batches, r.device, cfg["grad_clip"], r.split)
        flops = throughput.global_flops(r.model.config, batches, cfg["sp_size"], r.device)
        r.step += 1
        step_times.append(time.perf_counter() - t0)  # loss.item() in train_step already waited for the GPU
        if r.step % cfg["log_interval"] == 0 or r.step == steps:
            log_step(r, dict(loss=loss, lr=lr, grad_norm=grad_norm), flops, step_times, peak)
        if cfg["eval_interval"] and r.step % cfg["eval_interval"] == 0 and r.step < steps:
            validate_now(r)
        if (cfg["checkpoint_interval"] and r.step % cfg["checkpoint_interval"] == 0) or r.step == steps:
            save(r)
    validate_now(r)


def validate_now(r):
    if r.val:
        loss = validation_loss(r.model, r.val, r.device, r.split)
        r.log(f"step {r.step:>6} | validation loss {loss:.4f}")
        checkpoint.append_metrics(r.rank, r.cfg["out_dir"], {"step": r.step, "val_loss": loss})


def save(r):
    cfg = r.cfg
    path = checkpoint.save(r.model, r.optimizer, cfg["out_dir"], r.step, {"data": r.train_data.state_dict(),
                           "rng": torch.get_rng_state().tolist(), "config": cfg}, r.tokenizer,
                           keep=cfg["keep_checkpoints"], hf_weights=cfg["hf_weights"],
                           hf_dtype=cfg["hf_dtype"] and getattr(torch, cfg["hf_dtype"]),
                           max_position_embeddings=cfg["seq_len"], eos_token_ids=r.eos_token_ids)
    r.log(f"checkpoint saved: {path}")


def log_step(r, record, flops, step_times, peak):
    """One line to the log and one record to metrics.jsonl: loss, throughput, MFU, memory, time left."""
    speed = throughput.measure(step_times, r.cfg["tokens_per_step"], flops, peak, r.world, r.device)
    record = dict(step=r.step, **record, **speed)
    r.log(throughput.step_line(record, r.cfg["max_steps"], step_times))
    checkpoint.append_metrics(r.rank, r.cfg["out_dir"], record)


if __name__ == "__main__":
    common.exit_process(main)
