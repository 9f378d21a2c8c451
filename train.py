"""
Continued long-context training, ProLong style: `torchrun --nproc_per_node N train.py configs/NAME.py [--key=value]`
(or `python train.py ...` for one process).

Settings: DEFAULTS below, overridden by the config file (plain Python assignments), overridden by --key=value
(Python literals). An unknown key or a value of the wrong type stops the run at once, naming the closest key.

One optimizer step consumes `tokens_per_step` tokens: sequences of `seq_len` tokens, `micro_batch_sequences` of
them packed into each micro-batch (each keeps its own document boundaries), as many micro-batches per rank as it
takes (gradient accumulation). The loss is exact: every rank sums per-token losses, the valid-label count of the
whole step is all-reduced *before* the backward passes, and each micro-batch backpropagates sum / global count;
FSDP then sums (not averages) gradients across ranks. So the gradient is the mean over all valid tokens of the step
whatever the world size, accumulation or document lengths (tests/test_train.py checks this in float64).

Parallelism: FSDP2 (`fully_shard`) on every transformer block and at the root, fp32 master weights with bf16
compute (MixedPrecisionPolicy), activation checkpointing per block. With `sp_size > 1` ranks form a
(data-parallel x sequence-parallel) mesh: the ranks of one SP group share a sequence, each holds a contiguous slice,
and Ulysses all-to-alls (seqpar.py) enter through the attention call. Even one process runs under a process group
(a world of one), so there is a single code path.

Checkpoints (checkpoint.py) are Hugging Face directories (config.json, model.safetensors, tokenizer) plus the
training state sharded with torch.distributed.checkpoint (every rank writes its own part; a run resumes on another
world size, every tensor in its own dtype), written to a temporary name, renamed, and only then named in `latest`;
a crash at any moment leaves the previous checkpoint as the latest. `resume=True` continues from it exactly. Stage
hand-off (64K -> 512K): `init_from=<64K checkpoint> load_optimizer=True` takes weights and optimizer state,
restarts the LR schedule, and applies this config's RoPE base and mixture.
"""
import ast
import difflib
import json
import math
import os
import resource
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

import checkpoint
import data
from hf_checkpoint import is_local_path
from model import Llama, LlamaConfig, check_token_ids

DEFAULTS = dict(
    out_dir="runs/default",  # checkpoints, metrics.jsonl
    # model
    init_from=None,  # HF checkpoint directory or hub id; None: a fresh model of `model`
    model="tiny",  # LlamaConfig preset for fresh models: tiny, llama3_2_1b, llama3_8b
    model_overrides={},  # LlamaConfig fields for fresh models, e.g. {"num_hidden_layers": 4}
    rope_theta=None,  # replaces the checkpoint's RoPE base (ProLong: 8e6 at 64K, 1.28e8 at 512K)
    tokenizer=None,  # data.load_tokenizer spec; None: init_from's tokenizer, else the Llama-3 one
    cross_document=False,  # ablation: attention across document boundaries, positions run on
    cross_document_labels=None,  # None: follow cross_document (the paper's code with masks off also trains each
    # boundary's prediction: a document's last token predicts the next one's first); False: labels within documents
    attention_backend=None,  # None: picked from the device (attention.py)
    # data
    data_root=".",  # relative mixture paths are under this directory
    mixture=[],  # [{"path", "proportion", "length", "mode": "chunk"|"pack"}, ...] (data.py)
    val_mixture=None,  # held-out data, same format; None: no validation
    val_sequences=8,
    allow_repeat=False,  # reuse a domain that runs out instead of stopping
    seq_len=2048,
    micro_batch_sequences=1,  # sequences packed into one micro-batch
    sort_microbatches=True,  # order each rank's micro-batches by sum of squared document lengths (paper B.3)
    tokens_per_step=16384,
    # optimisation
    max_steps=100,
    lr=1e-5,
    min_lr=1e-6,
    warmup_fraction=0.1,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,
    param_dtype="float32",  # master weights and optimizer state
    compute_dtype="bfloat16",  # forward/backward (FSDP MixedPrecisionPolicy)
    activation_checkpointing=True,
    compile=False,
    sp_size=1,  # sequence-parallel group size (Ulysses)
    seed=0,
    # logging and checkpoints
    log_interval=1,
    eval_interval=0,  # 0: validate only at the start and the end
    checkpoint_interval=0,  # 0: only at the end
    keep_checkpoints=2,
    hf_weights=True,  # also write HF safetensors in every checkpoint (else: python checkpoint.py export)
    hf_dtype=None,  # dtype of those safetensors, e.g. "bfloat16"; None: the master weights' dtype
    resume=False,  # continue from out_dir/latest (from scratch, said in the log, when there is none yet)
    load_optimizer=False,  # also take the optimizer state of init_from (stage hand-off)
    peak_flops=None,  # per device, for MFU; None: looked up from the device
)


# names other trainers use, to point at ours
SYNONYMS = {"learning_rate": "lr", "min_learning_rate": "min_lr", "warmup_ratio": "warmup_fraction",
            "max_grad_norm": "grad_clip", "batch_size": "tokens_per_step", "seq_length": "seq_len",
            "max_seq_length": "seq_len", "gradient_checkpointing": "activation_checkpointing",
            "output_dir": "out_dir", "model_name_or_path": "init_from", "save_steps": "checkpoint_interval"}


class ConfigError(Exception):
    pass


# ----------------------------------------------------------------------------------------------------------------
# configuration


def load_config(argv):
    """DEFAULTS <- config file <- --key=value, checked against DEFAULTS' keys and types."""
    cfg, files = dict(DEFAULTS), [a for a in argv if not a.startswith("--")]
    for path in files:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path} not found")
        namespace = {}
        try:
            exec(compile(open(path).read(), path, "exec"), namespace)
        except SyntaxError as e:
            raise ConfigError(f"{path} line {e.lineno}: {e.msg} (config files are Python assignments)") from None
        except Exception as e:  # a NameError, an import that fails...
            line = next((f.lineno for f in reversed(__import__("traceback").extract_tb(e.__traceback__))
                         if f.filename == path), "?")
            raise ConfigError(f"{path} line {line}: {type(e).__name__}: {e}") from None
        cfg.update({k: v for k, v in namespace.items() if not k.startswith("_") and not callable(v)
                    and type(v).__name__ != "module"})
        check_keys(cfg, f"in {path}")
    for arg in (a for a in argv if a.startswith("--")):
        key, eq, value = arg[2:].partition("=")
        if not eq:
            raise ConfigError(f"{arg}: overrides are written --key=value")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a bare string
        cfg[key] = value
        check_keys(cfg, "on the command line")
    return cfg


def check_keys(cfg, where):
    for key, value in cfg.items():
        if key not in DEFAULTS:
            close = [SYNONYMS[key]] if key in SYNONYMS else difflib.get_close_matches(key, DEFAULTS, n=1)
            raise ConfigError(f"unknown setting {key!r} {where}" + (f"; did you mean {close[0]!r}?" if close else ""))
        default = DEFAULTS[key]
        if default is None or value is None or isinstance(value, type(default)):
            continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            cfg[key] = float(value)
            continue
        raise ConfigError(f"setting {key!r} {where} must be {type(default).__name__}, got {value!r}")


def validate(cfg, world_size):
    """Everything that can be checked before any long work: sizes, divisibility, proportions, files."""
    if world_size % cfg["sp_size"]:
        raise ConfigError(f"sp_size {cfg['sp_size']} does not divide the world size {world_size}")
    if cfg["seq_len"] % cfg["sp_size"]:
        raise ConfigError(f"seq_len {cfg['seq_len']} is not divisible by sp_size {cfg['sp_size']}")
    dp = world_size // cfg["sp_size"]
    per_micro_batch = cfg["seq_len"] * cfg["micro_batch_sequences"] * dp
    if cfg["tokens_per_step"] % per_micro_batch:
        raise ConfigError(f"tokens_per_step {cfg['tokens_per_step']} is not a multiple of seq_len x "
                          f"micro_batch_sequences x data-parallel size = {per_micro_batch}")
    for name in ("mixture",) + (("val_mixture",) if cfg["val_mixture"] else ()):
        try:
            data.check_mixture(cfg[name], cfg["seq_len"], root=cfg["data_root"], name=name)
        except data.DataError as e:
            raise ConfigError(str(e)) from None
    if cfg["max_steps"] < 1:
        raise ConfigError("max_steps must be at least 1")
    if cfg["hf_dtype"] not in (None, "float32", "bfloat16", "float16", "float64"):
        raise ConfigError(f"hf_dtype must be float32, bfloat16, float16 or float64, got {cfg['hf_dtype']!r}")
    return dp, cfg["tokens_per_step"] // per_micro_batch


def check_init_from(path):
    """A local init_from must be a whole HF directory; a hub id ('org/name') is fetched later by rank 0."""
    if not path:
        return
    if not is_local_path(path):
        return
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        raise ConfigError(f"init_from {path}: no such checkpoint directory")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ConfigError(f"init_from {path}: no config.json (an HF checkpoint directory holds config.json and "
                          f"*.safetensors)")
    if not any(f.endswith(".safetensors") for f in os.listdir(path)):
        hint = f"; write them with: python checkpoint.py export {path} {path}" if os.path.isdir(
            os.path.join(path, "train_state")) else ""
        raise ConfigError(f"init_from {path}: no *.safetensors weights{hint}")


def labels_cross(cfg):
    """Whether labels cross document boundaries: cross_document_labels, or cross_document when that is None."""
    return bool(cfg["cross_document"] if cfg["cross_document_labels"] is None else cfg["cross_document_labels"])


def resolved(mixture, root):
    return [dict(c, path=os.path.join(root, c["path"])) for c in mixture]


# ----------------------------------------------------------------------------------------------------------------
# processes, model, optimizer


def init_distributed():
    """torchrun's environment when present, else a world of one (same code path, no launcher needed)."""
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "nccl" if device_type == "cuda" else "gloo"
    if "RANK" in os.environ:
        local_rank = int(os.environ["LOCAL_RANK"])
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    else:
        local_rank = 0
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    device = torch.device(device_type, local_rank) if device_type == "cuda" else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def build_model(cfg, mesh, device, log):
    """A model sharded with FSDP2 whose full weights come from rank 0 (an HF checkpoint or a seeded fresh init),
    so every world size starts from bit-identical weights."""
    param_dtype, compute_dtype = getattr(torch, cfg["param_dtype"]), getattr(torch, cfg["compute_dtype"])
    full_state, config = {}, None
    if cfg["init_from"]:
        def load():
            source = Llama.from_pretrained(cfg["init_from"], dtype=param_dtype)
            full_state.update(source.state_dict())
            return source.config
        config = on_rank0(load, f"init_from {cfg['init_from']}")
    else:
        presets = {"tiny": LlamaConfig.tiny, "llama3_2_1b": LlamaConfig.llama3_2_1b,
                   "llama3_8b": LlamaConfig.llama3_8b}
        if cfg["model"] not in presets:
            raise ConfigError(f"model {cfg['model']!r} is not a preset ({', '.join(presets)})")
        try:
            config = presets[cfg["model"]](**cfg["model_overrides"])
        except (TypeError, ValueError) as e:  # a misspelt field, or heads that do not divide
            raise ConfigError(f"model_overrides {cfg['model_overrides']}: {e}") from None
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
    with torch.device("meta"):
        model = Llama(config, cross_document=cfg["cross_document"]).to(param_dtype)
    model.attention_backend = cfg["attention_backend"]
    blocks = model.model.layers
    for i, block in enumerate(blocks):
        if cfg["compile"]:
            block.compile()
        if cfg["activation_checkpointing"]:
            block = checkpoint_wrapper(block)
        blocks[i] = block
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.promote_types(compute_dtype, torch.float32))
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    for module in (*blocks, model):  # each FSDP module reduces its own parameters' gradients
        # Sum them across ranks (the loss is already divided by the global count), as a plain SUM: a divide factor
        # alone makes FSDP reduce with PREMUL_SUM, which gloo does not have.
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)
    model.to_empty(device=device)
    set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    n_params = sum(p.numel() for p in full_state.values()) if full_state else 0
    log(f"model: {broadcast_object(n_params) / 1e6:,.1f}M parameters, {config.num_hidden_layers} layers, "
        f"RoPE base {config.rope_theta:g}, compute {cfg['compute_dtype']}, master {cfg['param_dtype']}")
    return model


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


def broadcast_object(obj):
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn, what):
    """fn() on rank 0 only, its result broadcast; a failure there becomes one ConfigError on every rank (instead of
    a traceback on rank 0 and the other ranks waiting forever)."""
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


# ----------------------------------------------------------------------------------------------------------------
# one optimizer step


def micro_batches(sequences, per_micro_batch, sort=True):
    """Concatenate consecutive sequences into micro-batches (boundaries kept), then (sort=True) order them by the
    sum of squared document lengths, descending, so that every rank reaches its attention-heavy ones at the same
    time. The order changes only the speed: the step's loss and gradient are sums over all micro-batches."""
    batches = []
    for i in range(0, len(sequences), per_micro_batch):
        group = sequences[i:i + per_micro_batch]
        offsets = torch.tensor([0] + [len(s.input_ids) for s in group]).cumsum(0)
        cu = torch.cat([torch.as_tensor(s.cu_seqlens[:-1], dtype=torch.int32) + int(o)
                        for s, o in zip(group, offsets)] + [offsets[-1:].int()])
        batches.append(data.Sequence(torch.cat([torch.as_tensor(s.input_ids) for s in group]),
                                     torch.cat([torch.as_tensor(s.labels) for s in group]), cu))
    return data.order_microbatches(batches) if sort else batches


def accumulate_gradients(model, batches, device, split=None):
    """Forward and backward over this rank's micro-batches of one step. Returns the mean loss over the valid tokens
    of the step on all ranks. `split` (seqpar) first cuts each batch down to this rank's slice of it."""
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
    """(summed loss, valid labels) of one packed batch; a sequence-parallel slice carries its global positions.

    Token ids and labels are checked here, on the host, so that the model need not sync with the GPU to do it;
    cu_seqlens stays on the host too (attention.prepare reads it there and copies it to the device once)."""
    vocab = model.config.vocab_size
    try:
        check_token_ids(batch.input_ids, vocab)
        check_token_ids(batch.labels, vocab, "labels")
    except ValueError as e:
        raise data.DataError(str(e)) from None
    positions = getattr(batch, "position_ids", None)
    return model(batch.input_ids.to(device, non_blocking=True), cu_seqlens=batch.cu_seqlens,
                 labels=batch.labels.to(device, non_blocking=True),
                 position_ids=None if positions is None else positions.to(device))


def as_tensors(seq):
    return data.Sequence(*(torch.as_tensor(x) for x in seq))


# ----------------------------------------------------------------------------------------------------------------
# throughput accounting


def step_flops(config, cu_seqlens_list):
    """Model FLOPs of forward + backward: 6 per parameter per token for the matmuls (the head included, the
    embedding lookup not), plus causal attention, 6 x head_dim x heads x layers x L^2 per document of length L."""
    c = config
    per_layer = (c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
                 + 3 * c.hidden_size * c.intermediate_size)
    matmul_params = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size
    tokens, squares = 0, 0
    for cu in cu_seqlens_list:
        lengths = (cu[1:] - cu[:-1]).double()
        tokens += int(lengths.sum())
        squares += float((lengths ** 2).sum())
    return 6 * matmul_params * tokens + 6 * c.head_dim * c.num_attention_heads * c.num_hidden_layers * squares


# Dense (no sparsity) peaks per GPU in TFLOP/s, from the vendors' data sheets: (name, bf16/fp16, tf32, fp32 without
# tensor cores). fp32 compute counts against the TF32 peak when torch.set_float32_matmul_precision allows TF32, else
# against the plain fp32 peak. Order matters: "H100 PCIe" and "H100 NVL" must match before plain "H100" (SXM).
GPU_PEAKS = (("H100 PCIe", 756, 378, 51), ("H100 NVL", 835, 418, 60), ("H200 NVL", 835, 418, 60),
             ("GH200", 989, 495, 67), ("H200", 989, 495, 67), ("H100", 989, 495, 67), ("H800", 989, 495, 67),
             ("B200", 2250, 1100, 80), ("A100", 312, 156, 19.5), ("A800", 312, 156, 19.5), ("L40S", 362, 183, 91.6),
             ("A10", 125, 62.5, 31.2), ("RTX 4090", 165, 82.6, 82.6))


def peak_flops_per_device(device, dtype):
    """(peak FLOP/s, where it comes from) for MFU; (None, why) for a GPU not in the table: set peak_flops."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, half, tf32, fp32 in GPU_PEAKS:
            if key in name:
                if dtype in (torch.bfloat16, torch.float16):
                    return half * 1e12, f"{key} dense {str(dtype).removeprefix('torch.')}"
                if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
                    return tf32 * 1e12, f"{key} dense tf32"
                return fp32 * 1e12, f"{key} {str(dtype).removeprefix('torch.')} (no tensor cores)"
        return None, f"unknown GPU {name!r}: set peak_flops for MFU"
    # measured on the 2-core reference machine (DESIGN.md): fp32 ~180 GFLOP/s, bf16 ~420 GFLOP/s
    return (420e9, "2-core CPU bf16, measured") if dtype == torch.bfloat16 else (180e9, "2-core CPU fp32, measured")


def peak_memory_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ----------------------------------------------------------------------------------------------------------------
# the run


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    rank, world, device = init_distributed()
    log = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)
    cfg = None
    try:
        cfg = load_config(argv)
        dp, accumulation = validate(cfg, world)
        check_init_from(cfg["init_from"])
        run(cfg, rank, world, dp, accumulation, device, log)
    except (ConfigError, data.DataError, checkpoint.CheckpointError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        dist.destroy_process_group()
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C: checkpoints are only ever renamed into place, so nothing is half-written
        if rank == 0:
            name = cfg and checkpoint.read_latest_name(cfg["out_dir"])
            print("error: interrupted; " + (f"{os.path.join(cfg['out_dir'], name)} is the latest checkpoint: "
                  f"continue with --resume=True" if name else "no checkpoint was written yet"), file=sys.stderr,
                  flush=True)
        sys.exit(130)
    dist.barrier()  # leave together: a rank tearing down gloo while another still works can abort the process
    dist.destroy_process_group()


def exit_process(main, *args):
    """Run `main` as a process's whole life and leave with os._exit, skipping the interpreter's teardown. Even after
    barrier and destroy_process_group, a gloo worker thread can still be joinable when C++ static destructors run at
    exit, and std::terminate then aborts a rank whose work is done and saved ("terminate called without an active
    exception", SIGABRT: about 1 in 15 exits of a 4-rank run on a loaded 2-core machine, seen in CI). Output is
    flushed first; nothing else waits for the teardown."""
    try:
        main(*args)
        code = 0
    except SystemExit as e:  # sys.exit(2) and friends keep their status; a message is printed as Python would
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(cfg, rank, world, dp, accumulation, device, log):
    sp, out_dir = cfg["sp_size"], cfg["out_dir"]
    resume_from = checkpoint.latest(out_dir) if cfg["resume"] else None
    if cfg["resume"] and resume_from is None:
        log(f"resume=True: no checkpoint in {out_dir} yet, so this run starts from step 0")
    if not cfg["resume"] and os.path.exists(os.path.join(out_dir, "latest")):
        raise ConfigError(f"{out_dir} already holds a run's checkpoints: resume=True to continue it, or "
                          f"choose another out_dir")
    # FSDP shards over all ranks; the (dp, sp) mesh says which ranks share a sequence
    mesh = init_device_mesh(device.type, (dp, sp), mesh_dim_names=("dp", "sp"))
    fsdp_mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("fsdp",))
    dp_rank = mesh.get_local_rank("dp")
    split = None
    tokenizer = data.load_tokenizer(cfg["tokenizer"] or (cfg["init_from"] if cfg["init_from"] and
                                                         os.path.isdir(cfg["init_from"]) else None))
    steps_total = cfg["max_steps"]
    sequences_per_rank = accumulation * cfg["micro_batch_sequences"]
    # all the data, held-out included, is opened and checked before the (slow) model is built
    train_data = data.Mixture(resolved(cfg["mixture"], cfg["data_root"]), cfg["seq_len"], seed=cfg["seed"],
                              dp_rank=dp_rank, dp_size=dp, num_sequences=steps_total * sequences_per_rank * dp,
                              allow_repeat=cfg["allow_repeat"], cross_document_labels=labels_cross(cfg))
    check_tokenizer(train_data, tokenizer)
    val = []
    if cfg["val_mixture"]:
        val_data = data.Mixture(resolved(cfg["val_mixture"], cfg["data_root"]), cfg["seq_len"], seed=cfg["seed"] + 1,
                                dp_rank=dp_rank, dp_size=dp, allow_repeat=True,
                                cross_document_labels=labels_cross(cfg))
        check_tokenizer(val_data, tokenizer)
        val = [as_tensors(val_data.sequence(g)) for g in range(dp_rank, cfg["val_sequences"], dp)]
    model = build_model(cfg, fsdp_mesh, device, log)
    if model.config.vocab_size < tokenizer.n_vocab:
        raise ConfigError(f"tokenizer {tokenizer.name} has {tokenizer.n_vocab} ids but the model's vocabulary is "
                          f"{model.config.vocab_size}")
    if sp > 1:
        import seqpar
        split = seqpar.enable(model, mesh["sp"].get_group(), mesh.get_local_rank("sp"))
    optimizer = build_optimizer(model, cfg)

    step = 0
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
        for stale in checkpoint.remove_stale(out_dir):
            log(f"removed {stale}: a checkpoint save cut short by a crash")
    dist.barrier()
    if resume_from:
        state = checkpoint.read_train_state(resume_from)
        checkpoint.check_same_model(state, model, cfg["param_dtype"], resume_from)
        checkpoint.load(model, optimizer, resume_from)
        step = state["step"]
        train_data.load_state_dict(state["data"])
        torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
        log(f"resumed from {resume_from} at step {step} (saved by {state['world_size']} ranks, now {world})")
    elif cfg["init_from"] and cfg["load_optimizer"]:
        if not os.path.isdir(os.path.join(cfg["init_from"], "train_state")):
            raise ConfigError(f"load_optimizer=True: {cfg['init_from']} has no train_state/ (only checkpoints "
                              f"written by train.py carry optimizer state)")
        checkpoint.load_optimizer(model, optimizer, cfg["init_from"])  # weights came with the model
        log(f"optimizer state from {cfg['init_from']}; learning-rate schedule restarted")
    if rank == 0:
        keep_metrics_until(os.path.join(out_dir, "metrics.jsonl"), step)

    def validate_now():
        if val:
            loss = validation_loss(model, val, device, split)
            log(f"step {step:>6} | validation loss {loss:.4f}")
            write_metrics(rank, out_dir, {"step": step, "val_loss": loss})

    # a model fine-tuned on chat data ends its turns with <|eot_id|>: generation (and evaluate.py's --chat auto)
    # must know, as Llama-3 Instruct's generation_config.json says
    eos = model.config.eos_token_id
    eos_token_ids = sorted({*(eos if isinstance(eos, list) else [eos])} | (
        {tokenizer.eot_id} if any(m.get("mode") == "sft" for m in cfg["mixture"]) else set()))

    def save():
        path = checkpoint.save(model, optimizer, out_dir, step, {"data": train_data.state_dict(),
                               "rng": torch.get_rng_state().tolist(), "config": cfg}, tokenizer,
                               keep=cfg["keep_checkpoints"], hf_weights=cfg["hf_weights"],
                               hf_dtype=cfg["hf_dtype"] and getattr(torch, cfg["hf_dtype"]),
                               max_position_embeddings=cfg["seq_len"], eos_token_ids=eos_token_ids)
        log(f"checkpoint saved: {path}")

    log(f"training: {steps_total} steps of {cfg['tokens_per_step']:,} tokens; {world} ranks (dp {dp} x sp {sp}), "
        f"{accumulation} micro-batches of {cfg['micro_batch_sequences']} x {cfg['seq_len']} tokens per rank per step")
    if step == 0:
        validate_now()
    if cfg["peak_flops"]:
        peak, source = cfg["peak_flops"], "peak_flops setting"
    else:
        peak, source = peak_flops_per_device(device, getattr(torch, cfg["compute_dtype"]))
    log(f"MFU against {peak / 1e12:,.3f} TFLOP/s per device ({source})" if peak else f"MFU not shown: {source}")
    step_times = []
    while step < steps_total:
        t0 = time.perf_counter()
        sequences = [as_tensors(next(train_data)) for _ in range(sequences_per_rank)]
        batches = micro_batches(sequences, cfg["micro_batch_sequences"], cfg["sort_microbatches"])
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, grad_norm = train_step(model, optimizer, batches, device, cfg["grad_clip"], split)
        # counted on the host; the all-reduce needs a device tensor (an NCCL group has no CPU backend)
        flops = torch.tensor(step_flops(model.config, [b.cu_seqlens for b in batches]) / sp, dtype=torch.float64,
                             device=device)
        dist.all_reduce(flops)
        step += 1
        dt = time.perf_counter() - t0  # loss.item() in train_step already waited for the GPU
        step_times.append(dt)
        if step % cfg["log_interval"] == 0 or step == steps_total:
            eta = sorted(step_times[-20:])[len(step_times[-20:]) // 2] * (steps_total - step)
            mfu = flops.item() / dt / (peak * world) if peak else None
            record = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                      "tokens_per_s": cfg["tokens_per_step"] / dt, "mfu": mfu,
                      "peak_mem_gib": peak_memory_gib(device), "step_s": dt}
            log(f"step {step:>6}/{steps_total} | loss {loss:.4f} | lr {lr:.2e} | grad {grad_norm:.3f} | "
                f"{record['tokens_per_s']:,.0f} tok/s | MFU {f'{100 * mfu:.1f}%' if mfu is not None else 'n/a'} | "
                f"mem {record['peak_mem_gib']:.2f} GiB | ETA {format_seconds(eta)}")
            write_metrics(rank, out_dir, record)
        if cfg["eval_interval"] and step % cfg["eval_interval"] == 0 and step < steps_total:
            validate_now()
        if (cfg["checkpoint_interval"] and step % cfg["checkpoint_interval"] == 0) or step == steps_total:
            save()
    validate_now()


def check_tokenizer(mixture, tokenizer):
    for comp in mixture.comps:
        sha = comp["domain"].meta.get("tokenizer_sha256")
        if sha and sha != tokenizer.sha256:
            raise ConfigError(f"{comp['domain'].path} was tokenised with {comp['domain'].meta.get('tokenizer')} "
                              f"(sha256 {sha[:12]}...), not with the run's tokenizer {tokenizer.name}")


def keep_metrics_until(path, step):
    """On resume, forget what a killed run logged after its last checkpoint, so the log reads as one run."""
    if os.path.exists(path):
        lines = [line for line in open(path) if step and line.strip() and json.loads(line)["step"] <= step]
        with open(path + ".tmp", "w") as f:
            f.writelines(lines)
        os.replace(path + ".tmp", path)


def write_metrics(rank, out_dir, record):
    if rank == 0:
        with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")


def format_seconds(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


if __name__ == "__main__":
    exit_process(main)
