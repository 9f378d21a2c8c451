"""
How a run's processes hold one model: the process group (torchrun's, or a world of one so that there is a
single code path), work done once on rank 0 and shared with the others, and the model sharded with FSDP2.

The idea: every rank builds the model on the meta device (no memory, no init), wraps and shards it, and only
then are real weights poured in, all from rank 0's full copy (init_from, or a fresh init seeded on rank 0):
so every world size starts from bit-identical weights, and only rank 0 ever reads the checkpoint. Rank 0's
failures reach the other ranks too (on_rank0): one ConfigError everywhere, not a traceback on rank 0 while the
others wait forever in the next collective.
"""
import datetime
import os

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

import data
import settings
from model import Llama
from settings import ConfigError


def init_distributed():
    """torchrun's environment when present, else a world of one (same code path, no launcher needed)."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if device_type == "cuda" else "gloo"
    if "RANK" in os.environ:
        local_rank = int(os.environ["LOCAL_RANK"])
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        # rank 0 alone reads or downloads init_from (16-32 GB) while the others wait in a collective: NCCL's
        # default 10 minutes would end the job before step 1 on a download slower than ~27 MB/s
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    else:
        local_rank = 0
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    device = torch.device(device_type, local_rank) if device_type == "cuda" else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def broadcast_object(obj):
    """Rank 0's obj, on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn, what):
    """fn() on rank 0 only, its result broadcast; a failure there becomes one ConfigError on every rank
    (instead of a traceback on rank 0 and the other ranks waiting forever)."""
    result, error = None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except (ValueError, OSError, KeyError, data.DataError) as e:
            error = f"{what}: {' '.join(str(e).split())}"
    result, error = broadcast_object((result, error))
    if error:
        raise ConfigError(error)
    return result


def build_model(cfg, mesh, device, log):
    """A model sharded with FSDP2 whose full weights come from rank 0 (an HF checkpoint or a seeded fresh
    init), so every world size starts from bit-identical weights."""
    config, full_state = full_weights(cfg)
    with torch.device("meta"):
        model = Llama(config, cross_document=cfg["cross_document"]).to(getattr(torch, cfg["param_dtype"]))
    model.attention_backend = cfg["attention_backend"]
    model.fused_loss = cfg["fused_loss"]
    shard(model, cfg, mesh)
    model.to_empty(device=device)
    set_model_state_dict(model, full_state,
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    n_params = sum(p.numel() for p in full_state.values()) if full_state else 0
    log(f"model: {broadcast_object(n_params) / 1e6:,.1f}M parameters, {config.num_hidden_layers} layers, "
        f"RoPE base {config.rope_theta:g}, compute {cfg['compute_dtype']}, master {cfg['param_dtype']}")
    return model


def full_weights(cfg):
    """(the model's LlamaConfig on every rank, its full state dict on rank 0 and {} elsewhere), with the run's
    RoPE base and length written into the config."""
    param_dtype = getattr(torch, cfg["param_dtype"])
    full_state, config = {}, None
    if cfg["init_from"]:
        def load():
            source = Llama.from_pretrained(cfg["init_from"], dtype=param_dtype)
            full_state.update(source.state_dict())
            return source.config
        config = on_rank0(load, f"init_from {cfg['init_from']}")
    else:
        config = settings.fresh_model_config(cfg)
        if dist.get_rank() == 0:
            torch.manual_seed(cfg["seed"])
            full_state = Llama(config).to(param_dtype).state_dict()
    if cfg["rope_theta"]:
        config.rope_theta = float(cfg["rope_theta"])
    # the checkpoint will say it was trained at seq_len (evaluate.py's default lengths go up to it)
    config.max_position_embeddings = max(config.max_position_embeddings, cfg["seq_len"])
    if cfg["sp_size"] > 1:
        import seqpar
        try:
            seqpar.check_heads(config, cfg["sp_size"])
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return config, full_state


def shard(model, cfg, mesh):
    """Each transformer block compiled (compile) and checkpointed (activation_checkpointing), then FSDP2 on
    every block and at the root: master weights in param_dtype, compute in compute_dtype."""
    compute_dtype = getattr(torch, cfg["compute_dtype"])
    blocks = model.model.layers
    for i, block in enumerate(blocks):
        if cfg["compile"]:
            block.compile()
        if cfg["activation_checkpointing"]:
            block = checkpoint_wrapper(block)
        blocks[i] = block
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype,
                              reduce_dtype=torch.promote_types(compute_dtype, torch.float32))
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for module in (*blocks, model):  # each FSDP module reduces its own parameters' gradients
        # Sum them across ranks (the loss is already divided by the global count), as a plain SUM: a divide
        # factor alone makes FSDP reduce with PREMUL_SUM, which gloo does not have.
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)
