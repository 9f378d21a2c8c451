"""
Document-masked causal attention over a packed sequence.

A training sequence is many documents laid back to back: T tokens whose document boundaries are given by
`cu_seqlens` (int32, [0, end_0, end_1, ..., T]). A token may attend only to earlier tokens of its own document,
so the cost is sum(len_i^2), not T^2. `cross_document=True` drops the document mask (one causal attention over
the whole pack): the "no document masks" ablation of the ProLong paper.

Tensors use the varlen layout of flash-attn: q is (T, H, D), k and v are (T, H_kv, D) with H a multiple of H_kv
(grouped-query attention). K/V are never repeated to H heads where the backend can avoid it.

Backends, picked by `prepare` from the device:
  flash   flash-attn's `flash_attn_varlen_func` (CUDA, bf16/fp16, optional install)
  varlen  PyTorch's own `torch.nn.attention.varlen.varlen_attn` (CUDA, no build needed)
  flex    FlexAttention with a document BlockMask (CUDA; compiled)
  sdpa    one `scaled_dot_product_attention(is_causal=True)` call per document: the CPU path, and the reference
          twin of the others. FlexAttention has no backward on CPU, and a single SDPA call with a block-diagonal
          mask costs T^2 time and memory, while a loop of per-document causal calls costs sum(len_i^2) and lets
          SDPA pick its memory-lean flash kernel (measured on 2 CPU threads, L=8192, 16 documents: 0.58 s / 96 MiB
          versus 3.4 s / 338 MiB for the masked call).

The model calls `prepare` once per forward pass (boundaries are validated and copied to the host once, a flex
BlockMask is built once) and `attend` in every layer. Sequence parallelism (seqpar.py) wraps these two functions;
the model never knows.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # optional: only builds where CUDA is present
    from flash_attn import flash_attn_varlen_func
except ImportError:
    flash_attn_varlen_func = None


def _varlen_attn():
    """PyTorch's own varlen flash attention (torch >= 2.10, CUDA), or None. Imported only when a GPU asks for it:
    the module pulls in torch._dynamo, seconds of start-up that CPU runs need not pay."""
    try:
        from torch.nn.attention.varlen import varlen_attn
        return varlen_attn
    except ImportError:
        return None

BACKENDS = ("flash", "varlen", "flex", "sdpa")


@dataclass
class Documents:
    """Where the documents of one packed sequence are, in every form the backends need."""
    cu_seqlens: torch.Tensor  # int32 on the compute device
    bounds: list  # [(start, end), ...] on the host
    max_seqlen: int
    backend: str
    block_mask: object = None  # flex only


def default_backend(device):
    device = torch.device(device)
    if device.type != "cuda":
        return "sdpa"
    if flash_attn_varlen_func is not None:
        return "flash"
    if _varlen_attn() is not None:
        return "varlen"
    return "flex"


def prepare(cu_seqlens, num_tokens, device, cross_document=False, backend=None):
    """Validate document boundaries for a pack of `num_tokens` tokens and precompute what `attend` needs."""
    if cu_seqlens is None or cross_document:
        bounds = [(0, num_tokens)]
    else:
        if cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point:
            raise ValueError(f"cu_seqlens must be a 1-D integer tensor, got shape {tuple(cu_seqlens.shape)} "
                             f"dtype {cu_seqlens.dtype}")
        cu = cu_seqlens.tolist()
        if len(cu) < 2 or cu[0] != 0 or cu[-1] != num_tokens or any(b < a for a, b in zip(cu, cu[1:])):
            shown = cu if len(cu) <= 8 else cu[:4] + ["..."] + cu[-3:]
            raise ValueError(f"cu_seqlens must rise from 0 to the sequence length {num_tokens}, got {shown}")
        bounds = [(a, b) for a, b in zip(cu, cu[1:]) if b > a]
    backend = backend or default_backend(device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
    cu_tensor = torch.tensor([0] + [b for _, b in bounds], dtype=torch.int32, device=device)
    docs = Documents(cu_tensor, bounds, max(b - a for a, b in bounds), backend)
    if backend == "flex":
        docs.block_mask = _document_block_mask(cu_tensor, num_tokens, device)
    return docs


def attend(q, k, v, docs):
    """Causal attention of q (T, H, D) over k, v (T, H_kv, D) within each document. Returns (T, H, D)."""
    backend = docs.backend
    if backend in ("flash", "varlen") and q.dtype not in (torch.float16, torch.bfloat16):
        backend = "sdpa"  # the flash kernels are half precision only; fp32/fp64 (tests, debugging) take the twin
    if backend == "flash":
        return flash_attn_varlen_func(q, k, v, docs.cu_seqlens, docs.cu_seqlens, docs.max_seqlen,
                                      docs.max_seqlen, causal=True)
    if backend == "varlen":
        return _varlen_attn()(q, k, v, docs.cu_seqlens, docs.cu_seqlens, docs.max_seqlen, docs.max_seqlen,
                           window_size=(-1, 0), enable_gqa=q.shape[1] != k.shape[1])
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
    # SDPA wants (batch, heads, length, dim)
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return out.squeeze(0).transpose(0, 1)


_compiled_flex = None


def _flex(q, k, v, block_mask):
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention
    if _compiled_flex is None:  # flex is only fast compiled; compile once per process
        _compiled_flex = torch.compile(flex_attention, dynamic=False) if q.is_cuda else flex_attention
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    out = _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
    return out.squeeze(0).transpose(0, 1)


def _document_block_mask(cu_seqlens, num_tokens, device):
    from torch.nn.attention.flex_attention import create_block_mask
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    doc_of = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths, output_size=num_tokens)

    def document_causal(b, h, q_idx, kv_idx):
        return (doc_of[q_idx] == doc_of[kv_idx]) & (q_idx >= kv_idx)

    return create_block_mask(document_causal, B=None, H=None, Q_LEN=num_tokens, KV_LEN=num_tokens, device=device)


def attend_cached(q, k, v):
    """Generation with a KV cache, one sequence: the c queries are the last c of the L cached positions.

    Causality is aligned bottom-right (query i sees keys up to L - c + i), which SDPA's `is_causal` is not."""
    c, L = q.shape[0], k.shape[0]
    gqa = q.shape[1] != k.shape[1]
    if flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from flash_attn import flash_attn_func  # flash-attn >= 2.1 aligns causal masks bottom-right
        return flash_attn_func(q[None], k[None], v[None], causal=True)[0]
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    if c == 1:  # a single new token sees the whole cache
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    else:
        mask = torch.ones(c, L, dtype=torch.bool, device=q.device).tril(diagonal=L - c)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return out.squeeze(0).transpose(0, 1)
