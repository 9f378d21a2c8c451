"""
Per-GPU memory of a config's training step, known before launch: `python bench.py memory CONFIG [--gpus N]
[--sp N] [--model PRESET]`, and train.py's start-up check (`check_fits`).

The one idea: the model runs one training step's forward and backward on the `meta` device (shapes, no data,
no GPU, a second for Llama-3-8B at 64K) exactly as train.py runs it on a GPU (the config's compute dtype,
activation checkpointing per block, the chunked/fused loss, torch's varlen attention kernel for half
precision, and Ulysses sequence parallelism with `sp` ranks: each rank's slice of the tokens, the whole
sequence for 1/sp of the heads), while TensorMemory counts the bytes of every live tensor storage:
activations, recomputation, the loss's buffers, the attention kernel's outputs and log-sum-exps, the
all-to-all buffers. The exchange itself is stood in for by an empty buffer of the received shape
(`_no_exchange`): memory, not data, is what is measured.

What lives outside that run is added by formula, per GPU (FSDP2 shards over all GPUs, train.py's fsdp mesh):
- model states: master weights, gradients and AdamW's two moments, each `param_dtype`, sharded over all GPUs;
- FSDP buffers: unsharded compute-dtype parameters of the root module (embedding, head, final norm: FSDP2
  keeps the root's unsharded through forward and backward) and of two blocks (the one computing and the one
  prefetched); in backward also the head's unsharded gradient (it waits for the root's reduce-scatter) and one
  block's unsharded gradient with its fp32 reduce-scatter input; at the end of backward the root's own;
- the optimizer step: AdamW (foreach) run on meta shards of the parameters, its transient peak measured the
  same way.
Not counted: the CUDA context and NCCL's buffers (~1-3 GiB), allocator fragmentation, torch.compile's graphs.
The estimate is checked against real CPU steps in tests/test_memory.py: within 1% of autograd's saved tensors,
within 2% of the same step's live storages on the CPU, peaks included.
"""
import argparse
import contextlib
import math
import os
import sys
import weakref
from unittest import mock

from common import UserError, one_line_errors, read_json

GiB = 2**30
# hub ids of the recipe whose shapes are presets (no download to learn a shape)
KNOWN_HUB_IDS = {"meta-llama/Meta-Llama-3-8B-Instruct": "llama3_8b", "meta-llama/Meta-Llama-3-8B": "llama3_8b",
                 "meta-llama/Llama-3.1-8B-Instruct": "llama3_8b", "meta-llama/Llama-3.1-8B": "llama3_8b",
                 "princeton-nlp/Llama-3-8B-ProLong-512k-Base": "llama3_8b",
                 "princeton-nlp/Llama-3-8B-ProLong-512k-Instruct": "llama3_8b",
                 "meta-llama/Llama-3.2-1B": "llama3_2_1b", "meta-llama/Llama-3.2-1B-Instruct": "llama3_2_1b"}


def model_config(cfg, preset=None):
    """The LlamaConfig a run of `cfg` trains: init_from's config.json, a known hub id's preset, or
    `preset`."""
    from model import LlamaConfig
    presets = {"tiny": LlamaConfig.tiny, "llama3_2_1b": LlamaConfig.llama3_2_1b,
               "llama3_8b": LlamaConfig.llama3_8b}
    name = preset or (None if cfg["init_from"] else cfg["model"])
    init = cfg["init_from"]
    if name is None and os.path.isfile(os.path.join(init, "config.json")):
        return LlamaConfig.from_hf_dict(read_json(os.path.join(init, "config.json")))
    name = name or KNOWN_HUB_IDS.get(init)
    if name is None:
        raise UserError(f"init_from {init}: no config.json here to read the model's shape from; name its shape "
                        f"with --model ({', '.join(presets)})")
    if name not in presets:
        raise UserError(f"--model {name!r} is not a preset ({', '.join(presets)})")
    return presets[name](**(cfg["model_overrides"] if name == cfg["model"] and not init else {}))


@contextlib.contextmanager
def _no_exchange():
    """seqpar's all-to-all replaced by an empty buffer of the received shape (even splits: the sent shape)."""
    import seqpar
    import torch
    with mock.patch.object(seqpar, "_all_to_all", lambda x, group: torch.empty_like(x)):
        yield


@contextlib.contextmanager
def _all_chunks_valid():
    """On meta, labels have no values: the loss counts every chunk as holding valid labels (pretraining's
    case, the most it can hold). On a real device the labels say."""
    import loss

    def counts(labels, chunk_size):
        starts = list(range(0, labels.shape[0], chunk_size))
        return starts, [min(chunk_size, labels.shape[0] - s) for s in starts]

    with (mock.patch.object(loss, "_chunk_valid_counts", counts) if hasattr(loss, "_chunk_valid_counts")
          else contextlib.nullcontext()):
        yield


class _Attention:
    """The model's attention entry points for the measured step: one document of the whole (global) sequence,
    the kernel train.py would use, and Ulysses' exchange around it when sp > 1."""

    def __init__(self, backend, sp):
        self.backend, self.sp = backend, sp

    def prepare(self, cu_seqlens, num_tokens, device, cross_document=False, backend=None):
        import torch

        import attention
        T = num_tokens * self.sp
        if self.backend == "varlen":  # what a CUDA device runs in half precision (prepare would refuse meta)
            cu = torch.tensor([0, T], dtype=torch.int32, device=device)
            return attention.Documents(cu, [(0, T)], T, "varlen", kernel=attention._varlen_attn())
        return attention.prepare(torch.tensor([0, T], dtype=torch.int32), T, device, backend=self.backend)

    def attend(self, q, k, v, docs):
        import seqpar
        if self.sp == 1:
            return self._attend(q, k, v, docs)
        q, k, v = seqpar.heads_to_sequence(q, k, v, self.sp, None)
        return seqpar.sequence_to_heads(self._attend(q, k, v, docs), self.sp, None)

    @staticmethod
    def _attend(q, k, v, docs):
        import torch

        import attention
        if q.device.type == "meta" and docs.backend == "sdpa":
            # SDPA's kernel choice on meta is the math one (a saved T x T score matrix); the fused kernels a
            # real device picks keep the output and a log-sum-exp, as aten's CPU flash kernel does (GQA
            # included)
            qb, kb, vb = (x.transpose(0, 1)[None] for x in (q, k, v))
            out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qb, kb, vb, 0.0, True)
            return out[0].transpose(0, 1)
        return attention.attend(q, k, v, docs)


def measure_step(config, tokens, dtype, checkpointing=True, sp=1, device="meta", backend=None, fused_loss=None,
                 labels=None):
    """Live bytes of one forward and backward of `tokens` tokens (this rank's slice when sp > 1) on `device`,
    parameters excluded (made before counting starts) and each gradient dropped once accumulated (FSDP
    reduce-scatters and frees it; the formula counts it). Returns {"forward_peak", "after_forward",
    "backward_peak", "largest"} in bytes."""
    import torch
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    from model import Llama
    half = dtype in (torch.float16, torch.bfloat16)
    import attention
    if backend is None:
        backend = "varlen" if half and device == "meta" and attention._varlen_attn() is not None else "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = Llama(config).to(dtype)
    if fused_loss is not None:
        model.fused_loss = fused_loss
    if checkpointing:
        for i, block in enumerate(model.model.layers):
            model.model.layers[i] = checkpoint_wrapper(block)
    model.attention_ops = _Attention(backend, sp)
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    ids = torch.zeros(tokens, dtype=torch.long, device=device) if labels is None else labels.to(device)
    positions = torch.arange(tokens, device=device)
    with contextlib.ExitStack() as stack:
        if sp > 1:
            stack.enter_context(_no_exchange())
        if device == "meta":
            stack.enter_context(_all_chunks_valid())
        mem = stack.enter_context(TensorMemory(include_meta=True))
        loss, _ = model(ids, cu_seqlens=torch.tensor([0, tokens], dtype=torch.int32), labels=ids,
                        position_ids=positions)
        forward_peak, after_forward = mem.peak, mem.live
        mem.peak = mem.live
        loss.backward()
        del loss
        return dict(forward_peak=forward_peak, after_forward=after_forward, backward_peak=mem.peak,
                    largest=mem.largest)


def parameter_counts(config):
    """(total, root module's, largest block's) parameter counts, from a meta model."""
    import torch

    from model import Llama
    with torch.device("meta"):
        model = Llama(config)
    total = sum(p.numel() for p in model.parameters())
    blocks = [sum(p.numel() for p in b.parameters()) for b in model.model.layers]
    head = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    return total, total - sum(blocks), max(blocks), head


def optimizer_transient(config, gpus, param_dtype):
    """Peak bytes AdamW's step (foreach, train.py's settings) allocates beyond its states, on meta shards."""
    import torch

    from model import Llama
    with torch.device("meta"):
        model = Llama(config)
    shards = [torch.empty((math.ceil(p.shape[0] / gpus),) + p.shape[1:], dtype=param_dtype, device="meta",
                          requires_grad=True) for p in model.parameters()]
    for s in shards:
        s.grad = torch.empty_like(s)
    opt = torch.optim.AdamW([{"params": [s for s in shards if s.dim() >= 2], "weight_decay": 0.1},
                             {"params": [s for s in shards if s.dim() < 2], "weight_decay": 0.0}], lr=1e-5,
                            betas=(0.9, 0.95))
    opt.step()  # creates the moments (counted as states)
    with TensorMemory(include_meta=True) as mem:
        torch.nn.utils.clip_grad_norm_(shards, 1.0)
        opt.step()
    return mem.peak


def estimate(cfg, gpus, sp=None, preset=None):
    """Per-GPU bytes of a steady training step of `cfg` on `gpus` GPUs, by phase: a list of
    (phase, states, fsdp buffers, activations) and the settings used."""
    import torch
    config = model_config(cfg, preset)
    sp = cfg["sp_size"] if sp is None else sp
    if gpus % sp:
        raise UserError(f"--gpus {gpus} is not a multiple of the sequence-parallel size {sp}")
    if cfg["seq_len"] * cfg["micro_batch_sequences"] % sp:
        raise UserError(f"seq_len {cfg['seq_len']} is not divisible by the sequence-parallel size {sp}")
    import seqpar
    try:
        seqpar.check_heads(config, sp)
    except ValueError as e:
        raise UserError(str(e)) from None
    compute, master = getattr(torch, cfg["compute_dtype"]), getattr(torch, cfg["param_dtype"])
    c, p = compute.itemsize, master.itemsize
    r = torch.promote_types(compute, torch.float32).itemsize  # train.py's reduce dtype
    tokens = cfg["seq_len"] * cfg["micro_batch_sequences"] // sp
    act = measure_step(config, tokens, compute, cfg["activation_checkpointing"], sp)
    total, root, block, head = parameter_counts(config)
    states = 4 * p * math.ceil(total / gpus)  # weights, gradients, two moments
    unsharded = c * (root + 2 * block)
    rows = [("forward (peak)", states, unsharded, act["forward_peak"]),
            ("backward (peak)", states, unsharded + c * head + (c + r) * block, act["backward_peak"]),
            ("end of backward: root reduce", states, c * root + (c + r) * root, 0),
            ("optimizer step", states, 0, optimizer_transient(config, gpus, master))]
    info = dict(config=config, params=total, sp=sp, gpus=gpus, tokens=tokens, compute=cfg["compute_dtype"],
                checkpointing=cfg["activation_checkpointing"])
    return rows, info


def peak_bytes(rows):
    return max(s + f + a for _, s, f, a in rows)


def table(rows, info):
    lines = [f"{info['params'] / 1e9:.2f}B parameters, {info['gpus']} GPUs, sp {info['sp']}: {info['tokens']:,} "
             f"tokens per GPU per micro-batch, compute {info['compute']}, activation checkpointing "
             f"{'on' if info['checkpointing'] else 'off'}",
             f"{'phase':<30} {'states':>8} {'FSDP buf':>9} {'activ.':>8} {'total GiB':>10}"]
    for phase, s, f, a in rows:
        lines.append(f"{phase:<30} {s / GiB:>8.1f} {f / GiB:>9.1f} {a / GiB:>8.1f} {(s + f + a) / GiB:>10.1f}")
    lines.append(f"peak per GPU: {peak_bytes(rows) / GiB:.1f} GiB (plus the CUDA context and NCCL, ~1-3 GiB)")
    return "\n".join(lines)


def check_fits(cfg, world, device, log, have=None):
    """train.py at start-up on a GPU: log the estimate; stop in one line (a UserError) when it exceeds the
    GPU's memory. An estimate that cannot be made (a shape it cannot tell) is said and does not stop the
    run."""
    import torch
    try:
        rows, _ = estimate(cfg, world)
    except Exception as e:  # the estimate is advice: never the reason a run does not start
        log(f"memory estimate: n/a ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]})")
        return None
    peak = peak_bytes(rows)
    if have is None:
        have = torch.cuda.get_device_properties(device).total_memory
    log(f"memory estimate: {peak / GiB:.1f} GiB per GPU of {have / GiB:.1f} GiB (bench.py memory)")
    if peak > have:
        raise UserError(f"the estimated peak of {peak / GiB:.1f} GiB per GPU exceeds this GPU's "
                        f"{have / GiB:.1f} GiB (python bench.py memory CONFIG --gpus N shows the phases): use "
                        f"more GPUs, a larger sp_size or a shorter seq_len")
    return peak


def eval_lengths_that_fit(lengths, model, log, free_bytes=None, margin=2 * GiB):
    """evaluate.py's default lengths, those whose KV cache (one sequence, generation.KVCache) fits in what the
    GPU has free next to the weights, less `margin` for prefill activations; one line says what was left out.
    On the CPU all are kept (memory there is the machine's)."""
    import torch
    device = model.head_weight.device
    if free_bytes is None:
        if device.type != "cuda":
            return lengths
        free_bytes = torch.cuda.mem_get_info(device)[0]
    c = model.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * model.head_weight.element_size()
    kept = [L for L in lengths if L * per_token <= free_bytes - margin] or sorted(lengths)[:1]
    if len(kept) < len(lengths):
        cut = min(L for L in lengths if L not in kept)
        log(f"lengths from {cut:,} left out: their KV cache needs {cut * per_token / GiB:.1f} GiB and the GPU "
            f"has {free_bytes / GiB:.1f} GiB free next to the weights; --lengths runs them anyway")
    return kept


# ----------------------------------------------------------------------------------------------------------------
# memory of tensors created on the CPU (no allocator statistics there)


class TensorMemory:
    """Within a `with` block: the peak bytes of live tensor storages created inside it, and the largest one.
    Counts storages (a view is free), forgets each when it is really freed (a weakref on the storage, whose Python
    object lives exactly as long as the storage), and ignores results that share an input's storage (views and
    in-place results of tensors made before, such as a weight's transpose).
    `include_meta`: count meta tensors too (memory.py's estimates: shapes without data)."""

    def __init__(self, include_meta=False):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._record(out, (args, kwargs))
                return out

        self.live = self.peak = self.largest = 0
        self.include_meta = include_meta
        self._ids = set()
        self._mode = _Mode()

    def _record(self, out, inputs=()):
        import torch
        from torch.utils._pytree import tree_flatten
        seen = None
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or (t.device.type == "meta" and not self.include_meta):
                continue
            storage = t.untyped_storage()
            if id(storage) in self._ids:
                continue
            if seen is None:  # the inputs' storages, once per op (a view or in-place result is not new memory)
                seen = {id(x.untyped_storage()) for x in tree_flatten(inputs)[0] if isinstance(x, torch.Tensor)}
            if id(storage) in seen:
                continue
            size = storage.nbytes()
            self._ids.add(id(storage))
            self.live += size
            self.peak, self.largest = max(self.peak, self.live), max(self.largest, size)
            weakref.finalize(storage, self._free, id(storage), size)

    def _free(self, key, size):
        self._ids.discard(key)
        self.live -= size

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def main(argv):
    ap = argparse.ArgumentParser(prog="bench.py memory", description="per-GPU memory of a config's training "
                                 "step, from a run on the meta device (see memory.py)")
    ap.add_argument("config", help="a config file, as train.py takes it")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs in the run (FSDP shards over all of them)")
    ap.add_argument("--sp", type=int, default=None,
                    help="sequence-parallel size (default: the config's sp_size)")
    ap.add_argument("--model", default=None, help="the model's shape when init_from has no config.json here")
    args = ap.parse_args(argv)
    with one_line_errors():
        if args.gpus < 1 or (args.sp is not None and args.sp < 1):
            raise UserError("--gpus and --sp must be at least 1")
        import settings
        cfg = settings.load_config([args.config])
        rows, info = estimate(cfg, args.gpus, args.sp, args.model)
        print(f"bench.py memory {args.config}")
        print(table(rows, info))


if __name__ == "__main__":
    main(sys.argv[1:])
