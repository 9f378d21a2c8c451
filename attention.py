"""
Document-masked causal attention over a packed sequence.

A training sequence is many documents laid back to back: T tokens whose document boundaries are given by
`cu_seqlens` (int32, [0, end_0, end_1, ..., T]). A token may attend only to earlier tokens of its own
document, so the cost is sum(len_i^2), not T^2. `cross_document=True` drops the document mask (one causal
attention over the whole pack): the "no document masks" ablation of the ProLong paper.

Tensors use the varlen layout of flash-attn: q is (T, H, D), k and v are (T, H_kv, D) with H a multiple of
H_kv (grouped-query attention). K/V are never repeated to H heads where the backend can avoid it.

Backends. `prepare` picks the first available one in this order, or the one `backend=` names (a one-line
ValueError says why a named one cannot run here):
  fa3     FlashAttention-3 through PyTorch's `varlen_attn` (Hopper, compute capability 9.0 only, with
          flash-attention's hopper/ kernels installed: module `flash_attn_interface`, pip `flash_attn_3`).
          The fastest kernel on H100/H200. It needs `activate(device, "fa3")` once at start-up: that routes
          aten's flash kernels to FA3 for the whole process (SDPA's flash path runs FA3 too), so it is never
          done from inside a forward pass; until then fa3 is not picked, and naming it is an error.
  flash   flash-attn 2's `flash_attn_varlen_func` (CUDA, optional install that needs a CUDA build).
  varlen  PyTorch's own `torch.nn.attention.varlen.varlen_attn` (CUDA, ships with torch >= 2.10: no build).
  flex    FlexAttention with a document BlockMask built from `cu_seqlens` at 128 x 128 block granularity
          (never a T x T mask: 258 MiB of int32 indices at 512K, see `document_block_mask`), compiled with
          dynamic shapes. The fallback on GPUs where none of the above runs, and the only one that takes fp32
          on CUDA.
  sdpa    one `scaled_dot_product_attention(is_causal=True)` call per document: the CPU path, and the
          reference twin of the others. FlexAttention has no backward on CPU, and a single SDPA call with a
          block-diagonal mask costs T^2 time and memory, while a loop of per-document causal calls costs
          sum(len_i^2) and lets SDPA pick its memory-lean flash kernel (measured on 2 CPU threads, L=8192, 16
          documents: 0.58 s / 96 MiB versus 3.4 s / 338 MiB for the masked call).
The flash kernels (fa3, flash, varlen) are half precision only: fp32/fp64 inputs take the sdpa twin.

The model calls `prepare` once per forward pass (boundaries are validated on the host, copied to the device
once, a flex BlockMask is built once) and `attend` in every layer; pass `cu_seqlens` on the CPU so that
validation costs no device sync. The model holds a `DocumentAttention` (this module's functions as a small,
deep-copyable object); sequence parallelism (seqpar.py) swaps in another object with `prepare` and `attend`,
and the model never knows.

Generation (`attend_cached`): c new queries over L cached keys, causal from the bottom right, without ever
building a c x L mask: flash-attn or varlen on CUDA; on CPU the keys before the new ones (no mask) and the c x
c causal block are attended separately and merged through their log-sum-exps, which is exact. Batched decoding
(`attend_cached_rows`): one new query per sequence, each over its own keys, through a key-padding mask.
"""
import importlib.util
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

BACKENDS = ("fa3", "flash", "varlen", "flex", "sdpa")
FLEX_BLOCK = 128  # FlexAttention's _DEFAULT_SPARSE_BLOCK_SIZE; Triton's tiles divide it
_HALF = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------
# optional kernels: each import happens only when a CUDA device asks for it


@lru_cache(maxsize=None)
def _flash_attn():
    """flash-attn 2's module, or None. Imported lazily: it only builds with CUDA, and pulls in triton."""
    try:
        import flash_attn
        return flash_attn
    except ImportError:
        return None


@lru_cache(maxsize=None)
def _varlen_attn():
    """PyTorch's own varlen flash attention (torch >= 2.10, CUDA), or None. Imported only when a GPU asks for
    it: the module pulls in torch._dynamo, seconds of start-up that CPU runs need not pay."""
    try:
        from torch.nn.attention.varlen import varlen_attn
        return varlen_attn
    except ImportError:
        return None


def unavailable(backend, device):
    """Why `backend` cannot run on `device`, in a few words; None when it can."""
    device = torch.device(device)
    if backend not in BACKENDS:
        return f"unknown attention backend {backend!r}; choose from {BACKENDS}"
    if backend in ("sdpa", "flex"):
        return None  # flex runs everywhere (forward only on CPU, unfused: tests)
    if device.type != "cuda":
        return f"it needs a CUDA device, not {device.type}"
    if backend == "flash":
        return None if _flash_attn() is not None else "flash-attn is not installed (pip install flash-attn)"
    if _varlen_attn() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (torch >= 2.10 has)"
    if backend == "fa3":
        capability = torch.cuda.get_device_capability(device)
        if capability != (9, 0):
            # torch/nn/attention/_fa3.py refuses anything but major 9; FA3's kernels are built for sm90 only
            return ("FlashAttention-3 needs compute capability 9.0 (Hopper), this GPU has "
                    f"{capability[0]}.{capability[1]}")
        return _fa3_missing()
    return None


@lru_cache(maxsize=None)
def _fa3_missing():
    """Why FA3's kernels cannot be registered, or None. The same checks as torch/nn/attention/_fa3.py's
    _fa3_import_module: the module imports and exposes torch.ops.flash_attn_3.fwd and .bwd."""
    if importlib.util.find_spec("flash_attn_interface") is None:
        return ("FlashAttention-3's kernels are not installed (module flash_attn_interface, pip "
                "flash_attn_3, built from flash-attention's hopper/)")
    try:
        importlib.import_module("flash_attn_interface")  # its import registers torch.ops.flash_attn_3
    except Exception as e:  # a broken build fails in many ways; say which, in one line
        return f"flash_attn_interface does not import: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    ops = getattr(torch.ops, "flash_attn_3", None)
    if ops is None or not hasattr(ops, "fwd") or not hasattr(ops, "bwd"):
        return ("flash_attn_interface does not expose torch.ops.flash_attn_3.fwd/bwd (a build compatible "
                "with torch 2.13)")
    return None


def default_backend(device, fa3=None):
    """The first of fa3, flash, varlen, flex that runs on a CUDA device; sdpa elsewhere (flex has no CPU
    backward). fa3 counts only once `activate` has routed aten's kernels to it (fa3=True: as if it had)."""
    if torch.device(device).type != "cuda":
        return "sdpa"
    fa3 = _flash_impl == "FA3" if fa3 is None else fa3
    return next(name for name in BACKENDS if (fa3 or name != "fa3") and unavailable(name, device) is None)


_flash_impl = None  # what aten's flash kernels run: None (PyTorch's own FA2) or "FA3"; set by activate() only


def activate(device, backend=None):
    """Once at start-up (train.py's setup; evaluation's), before any model runs: the backend this process will
    use on `device` (None: the fastest that runs, fa3 included), checked, with aten's flash kernels routed to
    match: FlashAttention-3 for fa3, PyTorch's own otherwise. The routing is process-wide and costs a
    dispatcher registration, so it changes only when asked for another. Returns the backend; a one-line
    ValueError says why a named one cannot run."""
    global _flash_impl
    backend = backend or default_backend(device, fa3=True)
    reason = unavailable(backend, device)
    if reason is not None:
        raise ValueError(reason if backend not in BACKENDS else
                         f"attention backend {backend!r} cannot run on {torch.device(device)}: {reason}")
    impl = "FA3" if backend == "fa3" else None
    if torch.device(device).type == "cuda" and impl != _flash_impl:
        from torch.nn.attention import activate_flash_attention_impl, restore_flash_attention_impl
        if impl is None:
            restore_flash_attention_impl()
        else:
            activate_flash_attention_impl(impl)  # imports flash_attn_interface, checks torch.ops.flash_attn_3
        _flash_impl = impl
    return backend


# ----------------------------------------------------------------------------------------------------------
# prepare: once per forward pass


@dataclass
class Documents:
    """Where the documents of one packed sequence are, in every form the backends need."""
    cu_seqlens: torch.Tensor  # int32 on the compute device, empty documents dropped
    bounds: list  # [(start, end), ...] on the host
    max_seqlen: int
    backend: str
    kernel: object = None  # flash / varlen / fa3: the varlen function, resolved here, not in traced code
    block_mask: object = None  # flex only


def prepare(cu_seqlens, num_tokens, device, cross_document=False, backend=None):
    """Validate document boundaries for a pack of `num_tokens` tokens and precompute what `attend` needs.

    Pass `cu_seqlens` on the CPU: it is checked there and copied to `device` once, without a sync. A device
    tensor works too, at the cost of one device-to-host copy (a sync) for the checks."""
    device = torch.device(device)
    if cu_seqlens is None or cross_document:
        bounds = [(0, num_tokens)]
    else:
        cu_seqlens = torch.as_tensor(cu_seqlens)  # a host array too (train.py passes numpy past FSDP's root)
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point:
            raise ValueError(f"cu_seqlens must be a 1-D integer tensor, got shape {tuple(cu_seqlens.shape)} "
                             f"dtype {cu_seqlens.dtype}")
        cu = cu_seqlens.tolist()
        if len(cu) < 2 or cu[0] != 0 or cu[-1] != num_tokens or any(b < a for a, b in zip(cu, cu[1:])):
            shown = cu if len(cu) <= 8 else cu[:4] + ["..."] + cu[-3:]
            raise ValueError(f"cu_seqlens must rise from 0 to the sequence length {num_tokens}, got {shown}")
        bounds = [(a, b) for a, b in zip(cu, cu[1:]) if b > a]
    if backend is None:
        backend = default_backend(device)
    else:
        reason = unavailable(backend, device)
        if reason is not None:
            if backend not in BACKENDS:
                raise ValueError(reason)
            raise ValueError(f"attention backend {backend!r} cannot run on {device}: {reason}")
    if backend in ("fa3", "varlen") and (backend == "fa3") != (_flash_impl == "FA3"):
        raise ValueError(f"attention backend {backend!r} needs attention.activate(device, {backend!r}) "
                         f"first: aten's flash kernels run {'FA3' if _flash_impl else 'FA2'} in this process")
    # built on the host, copied once; non_blocking: a pageable host-to-device copy does not wait for the GPU
    cu_host = torch.tensor([0] + [b for _, b in bounds], dtype=torch.int32)
    docs = Documents(cu_host.to(device, non_blocking=True), bounds, max(b - a for a, b in bounds), backend)
    if backend == "flash":
        docs.kernel = _flash_attn().flash_attn_varlen_func
    elif backend in ("fa3", "varlen"):
        docs.kernel = _varlen_attn()
    elif backend == "flex":
        docs.block_mask = document_block_mask(cu_host, num_tokens, device)
    return docs


# ----------------------------------------------------------------------------------------------------------
# attend: every layer


def attend(q, k, v, docs):
    """Causal attention of q (T, H, D) over k, v (T, H_kv, D) within each document. Returns (T, H, D)."""
    backend = docs.backend
    if backend in ("fa3", "flash", "varlen") and q.dtype not in _HALF:
        backend = "sdpa"  # the flash kernels are half precision only; fp32/fp64 (tests, debugging) take sdpa
    gqa = q.shape[1] != k.shape[1]
    if backend == "flash":
        return docs.kernel(q, k, v, docs.cu_seqlens, docs.cu_seqlens, docs.max_seqlen, docs.max_seqlen,
                           causal=True)
    if backend in ("fa3", "varlen"):  # the same call: activate() routed aten's flash kernels to FA3 or FA2
        return docs.kernel(q, k, v, docs.cu_seqlens, docs.cu_seqlens, docs.max_seqlen, docs.max_seqlen,
                           window_size=(-1, 0), enable_gqa=gqa)
    if backend == "flex":
        return _flex(q, k, v, docs.block_mask)
    return _sdpa_per_document(q, k, v, docs.bounds)


def _sdpa_per_document(q, k, v, bounds):
    gqa = q.shape[1] != k.shape[1]
    if len(bounds) == 1:  # one document: no copy into an output buffer
        return _sdpa_causal(q, k, v, gqa)
    out = torch.empty_like(q)
    for start, end in bounds:
        out[start:end] = _sdpa_causal(q[start:end], k[start:end], v[start:end], gqa)
    return out


def _sdpa_causal(q, k, v, gqa):
    if gqa and q.device.type != "cpu" and q.dtype not in _HALF:
        # fp32/fp64 off the CPU: where the memory-efficient kernel lacks GQA, SDPA would take the math one, a
        # T x T score matrix (128 GiB for one 64K document, 8 heads); repeated K/V keep the efficient kernel
        k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
        gqa = False
    # SDPA wants (batch, heads, length, dim)
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return out.squeeze(0).transpose(0, 1)


# ----------------------------------------------------------------------------------------------------------
# flex: a document BlockMask straight from cu_seqlens


_compiled_flex = None


def _flex(q, k, v, block_mask):
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention
    if q.is_cuda and _compiled_flex is None:  # per call's device: CPU tensors stay eager after a GPU compiled
        # Flex is only fast compiled (eager, it computes the full score matrix). dynamic=True: with
        # dynamic=False every training or evaluation length is a new graph (guard "tensor 'key' size
        # mismatch"), and past torch._dynamo.config.recompile_limit (8, torch/_dynamo/config.py) Dynamo gives
        # up and runs the eager, T^2 version. Measured with backend="aot_eager" on lengths 256, 384, 300,
        # 1000, 777: dynamic=False compiled 5 graphs, dynamic=True 2 (the second only because 2 blocks had
        # been duck-sized together with 2 KV heads), then none. The BlockMask's tensors and mask_mod captures
        # are graph inputs, so a new mask costs no recompile either. With symbolic lengths Inductor builds the
        # Triton template with IS_DIVISIBLE=False (torch/_inductor/kernel/flex/flex_attention.py: lengths not
        # statically known multiples of 128), i.e. with bounds checks. On CPU flex stays eager: it is there
        # for forward tests.
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    run = _compiled_flex if q.is_cuda else flex_attention
    out = run(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
    return out.squeeze(0).transpose(0, 1)


def document_block_mask(cu_seqlens, num_tokens, device, block=FLEX_BLOCK):
    """The document-causal BlockMask of a pack, built at block granularity from `cu_seqlens` (host int tensor
    without empty documents; the result lives on `device`).

    `create_block_mask` without torch.compile evaluates the mask_mod on every (q, kv) pair: several T x T
    tensors at once (~12 GiB at 64K, 256 GiB at 512K). Here each block row and column is classified from a few
    numbers. Rows: q block i's first token lies in document d_a starting at s_a, its last token in d_b. Every
    kv block from s_a // block to i holds a key that the first query may see, and no other kv block holds any,
    so row i's non-empty blocks are the contiguous range [s_a // block, i]. A block is *full* (flex skips the
    mask_mod there) when every pair is allowed: q block i lies inside one document (d_a == d_b), kv block j
    lies entirely inside it too (j * block >= s_a) and entirely before it (j < i). The diagonal block is
    always partial; partial blocks are the rest of the range, and the kernel applies `document_causal` to
    them. As create_block_mask does (it pads the dense mask with False to a multiple of the block size), a
    ragged last block is never full. Columns (the backward pass iterates over q blocks per kv block): kv block
    j is seen by q blocks [j, h_j], h_j the last row whose range starts at or before j; when block j lies
    inside one document d, the full ones are j+1 .. end_d // block - 1.

    Memory: BlockMask wants index tensors with one column per block (torch's from_kv_blocks derives the
    q-major ones assuming that width, through a dense block matrix and an argsort, 12 s at 512K on 2 CPU
    cores, which this builds directly instead), so the mask is 4 int32 tensors of (T/128)^2 plus the
    token-to-document map, O((T/128)^2); a single 512K document really has (T/128)^2 / 2 full blocks, so no
    layout does better in the worst case. Measured on CPU (`python bench.py gpu --cpu-smoke`; held = the
    BlockMask's tensors, peak = live tensors while building; tests/test_attention.py checks the bounds): 64K,
    8 documents: held 4.3 MiB, peak 5.3 MiB; 512K, 64 documents: held 258 MiB, peak 337 MiB; versus 4 GiB and
    256 GiB for a single T x T bool mask, of which create_block_mask makes several.
    """
    from torch.nn.attention.flex_attention import BlockMask
    T = num_tokens
    cu = cu_seqlens.to(torch.int64).cpu()
    n_docs = len(cu) - 1
    n = -(-T // block)  # blocks per side
    # O(T / block) numbers per block row / column, on the host.
    idx = torch.arange(n, dtype=torch.int64)
    first = idx * block
    last = torch.clamp(first + block, max=T) - 1
    doc_first = torch.searchsorted(cu[1:], first, right=True)  # document of each block's first token
    single = (doc_first == torch.searchsorted(cu[1:], last, right=True)) & (last - first + 1 == block)
    start = cu[doc_first]  # where that document starts
    # rows
    lo = start // block  # first non-empty kv block of the row
    full_from = -(-start // block)  # first kv block entirely inside the document
    n_full = torch.where(single, (idx - full_from).clamp(min=0), 0)
    has_full = (n_full > 0).long()
    # partial: [lo, full_from) and the diagonal, or [lo, i]
    n_range = torch.where(has_full > 0, full_from, idx + 1) - lo
    # columns
    hi = torch.searchsorted(lo, idx, right=True) - 1  # last q block whose range starts at or before j
    end = cu[doc_first + 1]
    q_full = torch.where(single, (end // block - 1 - idx).clamp(min=0), 0)
    q_has_full = q_full > 0
    # partial: the diagonal, then the rows past the full ones
    q_first = torch.where(q_has_full, 1, hi - idx + 1)
    q_second = torch.where(q_has_full, hi - (idx + q_full), 0)

    col = torch.arange(n, dtype=torch.int32, device=device)[None, :]

    def indices(start1, count1, start2=None, count2=None):
        """Per row: start1 .. start1 + count1 - 1, then start2 .. start2 + count2 - 1, then zeros (entries
        past a row's count are never read; zero keeps every entry a valid block index)."""
        s1, c1 = (counts(x)[0, 0, :, None] for x in (start1, count1))
        out = torch.where(col < c1, s1 + col, 0)
        if start2 is not None:
            s2, c2 = (counts(x)[0, 0, :, None] for x in (start2, count2))
            out = torch.where((col >= c1) & (col < c1 + c2), s2 + col - c1, out)
        return out[None, None]  # batch and head dimensions broadcast

    def counts(x):
        return x.to(device=device, dtype=torch.int32, non_blocking=True)[None, None]

    kv_indices = indices(lo, n_range, idx, has_full)
    full_kv_indices = indices(full_from, n_full)
    q_indices = indices(idx, q_first, idx + q_full + 1, q_second)
    full_q_indices = indices(idx + 1, q_full)

    # The mask_mod for partial blocks. Keys past T (a ragged last block) belong to no document: the Triton
    # kernel already wraps indices modulo the length and masks keys >= KV_LEN (get_bounded_indices,
    # CHECK_BLOCK_BOUNDARY in torch/_inductor/kernel/flex/templates), and the padding keeps any other
    # evaluation of the mask_mod in bounds and false.
    lengths = (cu[1:] - cu[:-1]).to(device=device, non_blocking=True)
    doc_of = torch.repeat_interleave(torch.arange(n_docs, dtype=torch.int32, device=device), lengths,
                                     output_size=T)
    doc_of = F.pad(doc_of, (0, n * block - T), value=n_docs)

    def document_causal(b, h, q_idx, kv_idx):
        return (doc_of[q_idx] == doc_of[kv_idx]) & (q_idx >= kv_idx)

    return BlockMask(seq_lengths=(T, T),
                     kv_num_blocks=counts(n_range + has_full), kv_indices=kv_indices,
                     full_kv_num_blocks=counts(n_full), full_kv_indices=full_kv_indices,
                     q_num_blocks=counts(q_first + q_second), q_indices=q_indices,
                     full_q_num_blocks=counts(q_full), full_q_indices=full_q_indices,
                     BLOCK_SIZE=(block, block), mask_mod=document_causal)


def block_mask_bytes(block_mask):
    """Bytes held by a BlockMask's tensors (its indices, both orientations, and the mask_mod's captured
    tensors)."""
    total = sum(t.numel() * t.element_size() for t in block_mask.as_tuple() if isinstance(t, torch.Tensor))
    for cell in getattr(block_mask.mask_mod, "__closure__", None) or ():
        if isinstance(cell.cell_contents, torch.Tensor):
            total += cell.cell_contents.numel() * cell.cell_contents.element_size()
    return total


# ----------------------------------------------------------------------------------------------------------
# generation with a KV cache


def attend_cached(q, k, v, cu=None):
    """Generation with a KV cache, one sequence: the c queries are the last c of the L cached positions.
    `cu`: the varlen kernel's (cu_q, cu_k) = ([0, c], [0, L]) int32 on q's device, when the caller has them.

    Causality is aligned bottom-right (query i sees keys up to L - c + i), which SDPA's `is_causal` is not
    when c < L. No c x L mask is built: at 512K with 4096-token prefill chunks that would be 2 GiB per layer,
    and a mask rules out SDPA's flash kernels."""
    c, L = q.shape[0], k.shape[0]
    gqa = q.shape[1] != k.shape[1]
    if q.is_cuda and q.dtype in _HALF:
        if _flash_attn() is not None:  # flash-attn >= 2.1 aligns causal masks bottom-right (its docstring)
            return _flash_attn().flash_attn_func(q[None], k[None], v[None], causal=True)[0]
        if _varlen_attn() is not None:
            # varlen_attn passes window_size=(-1, 0) to aten's vendored flash-attn 2.5.7
            # (torch.nn.attention._get_flash_version), whose causal mask is bottom-right aligned like
            # flash-attn >= 2.1: query i sees keys j <= i + L - c. FA3, when activated, aligns the same way.
            # `cu`: generation's cache builds these once per forward pass, not two host-to-device copies per layer
            cu_q, cu_k = cu if cu is not None else (
                torch.tensor([0, n], dtype=torch.int32).to(q.device, non_blocking=True) for n in (c, L))
            return _varlen_attn()(q, k, v, cu_q, cu_k, c, L, window_size=(-1, 0), enable_gqa=gqa)
    qb, kb, vb = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # (1, heads, length, dim)
    if c == 1:  # a single new token sees the whole cache
        out = F.scaled_dot_product_attention(qb, kb, vb, enable_gqa=gqa)
    elif c == L:  # an empty cache: square, so top-left and bottom-right alignment agree
        out = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, enable_gqa=gqa)
    elif q.device.type == "cpu":
        out = _cached_by_parts(qb, kb, vb, L - c)
    else:  # fp32/fp64 on a GPU: rare (debugging), keep it simple and exact
        mask = torch.ones(c, L, dtype=torch.bool, device=q.device).tril(diagonal=L - c)
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, enable_gqa=gqa)
    return out.squeeze(0).transpose(0, 1)


def _cached_by_parts(q, k, v, prefix):
    """Bottom-right causal attention as two mask-free calls merged exactly: every query sees all `prefix`
    older keys, and the new keys causally (a square block). softmax over the union = the two softmaxes
    weighted by exp(lse_part - lse_total). aten's CPU flash kernel returns the log-sum-exp and handles GQA
    natively."""
    attn = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    out_old, lse_old = attn(q, k[:, :, :prefix], v[:, :, :prefix], 0.0, False)
    out_new, lse_new = attn(q, k[:, :, prefix:], v[:, :, prefix:], 0.0, True)
    lse = torch.logaddexp(lse_old, lse_new)
    w_old, w_new = ((x - lse).exp().unsqueeze(-1) for x in (lse_old, lse_new))
    return (w_old * out_old + w_new * out_new).to(q.dtype)


def attend_cached_rows(q, k, v, lengths):
    """Batched decoding: q (B, H, D) holds one new query per row, over that row's first lengths[b] keys of
    k, v (B, L, H_kv, D) (rows right-padded to L, the new token's key last). Returns (B, H, D).

    One query per row needs no causal mask, only a (B, 1, 1, L) key-padding mask: B x L booleans. The H query
    heads are viewed as H_kv groups of H / H_kv queries (HF's GQA: query head h reads KV head h // (H /
    H_kv)), so K/V are never repeated and no kernel needs to support GQA."""
    B, H, D = q.shape
    groups = q.view(B, k.shape[2], H // k.shape[2], D)
    mask = torch.arange(k.shape[1], device=q.device)[None, :] < lengths[:, None]
    out = F.scaled_dot_product_attention(groups, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask[:, None, None])
    return out.reshape(B, H, D)


# ----------------------------------------------------------------------------------------------------------
# the model's handle on this module


class DocumentAttention:
    """This module's entry points as an object: what `model.attention_ops` holds by default. Stateless, so
    `copy.deepcopy(model)` copies it (a module object, the previous default, cannot be deep-copied)."""

    prepare = staticmethod(prepare)
    attend = staticmethod(attend)
    attend_cached = staticmethod(attend_cached)

    def __repr__(self):
        return "DocumentAttention()"
