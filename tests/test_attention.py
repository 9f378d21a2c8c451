"""attention.py: every backend against attention written out per document, in float64; the flex BlockMask
against the dense document mask; cached attention against the masked formula; the model's ops object."""
import copy
import random
import warnings

import pytest
import torch
import torch.nn.functional as F

import attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(q, k, v, bounds):
    """softmax(q k^T / sqrt(d) + causal mask) v, one document at a time, K/V heads repeated explicitly."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = torch.zeros_like(q)
    for start, end in bounds:
        qd, kd, vd = (x[start:end].transpose(0, 1) for x in (q, k, v))  # (H, L, D)
        scores = qd @ kd.transpose(1, 2) / q.shape[-1] ** 0.5
        causal = torch.ones(end - start, end - start, dtype=torch.bool, device=q.device).tril()
        weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        out[start:end] = (weights @ vd).transpose(0, 1)
    return out


def available_backends():
    return [name for name in attention.BACKENDS if attention.unavailable(name, DEVICE) is None
            and not (name == "flex" and DEVICE == "cpu")]  # flex has no backward on CPU: forward test below


LENGTHS = [1, 37, 0, 100, 5, 64, 49]  # includes a one-token and an empty document
BLOCK_LENGTHS = [1, 7, 127, 128, 129, 300]  # around the 128-token flex block; T = 692, not a multiple of 128


def packed_qkv(heads, kv_heads, dtype, lengths=LENGTHS, dim=16, device=DEVICE):
    T = sum(lengths)
    q = torch.randn(T, heads, dim, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(T, kv_heads, dim, dtype=dtype, device=device, requires_grad=True)
    v = torch.randn(T, kv_heads, dim, dtype=dtype, device=device, requires_grad=True)
    cu = cu_of(lengths)
    bounds = [(a, b) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    return q, k, v, cu, bounds


def cu_of(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
def test_backend_equals_per_document_reference(backend, heads, kv_heads):
    # sdpa exactly in float64; flex in fp32 on CUDA (Triton has no float64 dot); the flash kernels in bf16
    dtype = {"sdpa": torch.float64, "flex": torch.float32}.get(backend, torch.bfloat16)
    lengths = BLOCK_LENGTHS if backend == "flex" else LENGTHS  # flex: full, partial and ragged blocks
    q, k, v, cu, bounds = packed_qkv(heads, kv_heads, dtype, lengths)
    docs = attention.prepare(cu, q.shape[0], DEVICE, backend=backend)
    out = attention.attend(q, k, v, docs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)

    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference(q64, k64, v64, bounds)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), grad_out.double())
    tol = {torch.float64: 1e-10, torch.float32: 1e-4}.get(dtype, 3e-2)
    assert (out.double() - ref).abs().max() <= tol
    for g, r in zip(grads, ref_grads):
        assert (g.double() - r).abs().max() <= tol


@pytest.mark.parametrize("lengths", [LENGTHS, BLOCK_LENGTHS, [300]])
def test_flex_forward_on_cpu_equals_reference(lengths):
    """FlexAttention has no backward on CPU, but its mask_mod can still be checked here, unfused, in
    float64."""
    q, k, v, cu, bounds = packed_qkv(8, 2, torch.float64, lengths, device="cpu")
    q, k, v = q.detach(), k.detach(), v.detach()
    docs = attention.prepare(cu, q.shape[0], "cpu", backend="flex")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # "called without torch.compile": intended, unfused on CPU
        out = attention.attend(q, k, v, docs)
    assert (out - reference(q, k, v, bounds)).abs().max() <= 1e-10


# ----------------------------------------------------------------------------------------------------------
# the flex BlockMask, built from cu_seqlens at block granularity


def dense_blocks(num_blocks, indices, n):
    """(rows, n) bool: which blocks a (num_blocks, indices) pair lists."""
    dense = torch.zeros(indices.shape[-2], n + 1, dtype=torch.bool)
    col = torch.arange(indices.shape[-1])
    listed = torch.where(col[None, :] < num_blocks[0, 0, :, None], indices[0, 0].long(), n)
    dense.scatter_(1, listed, True)
    return dense[:, :n]


def document_mask(lengths):
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    T = len(doc)
    return (doc[:, None] == doc[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()


def check_block_mask(lengths, block=128):
    """What the kernel computes with the BlockMask (full blocks unmasked, partial blocks through the mask_mod,
    nothing elsewhere), both orientations, equals the dense document mask; and the block classes are exactly
    the ones create_block_mask finds by evaluating every pair."""
    from torch.nn.attention.flex_attention import create_block_mask
    lengths = [n for n in lengths if n]
    T = sum(lengths)
    bm = attention.document_block_mask(cu_of(lengths), T, "cpu", block)
    n = -(-T // block)
    assert bm.seq_lengths == (T, T) and bm.kv_indices.shape[-2:] == (n, n)
    partial = dense_blocks(bm.kv_num_blocks, bm.kv_indices, n)
    full = dense_blocks(bm.full_kv_num_blocks, bm.full_kv_indices, n)
    # the backward's q-major lists are the transpose of the forward's kv-major ones
    assert torch.equal(dense_blocks(bm.q_num_blocks, bm.q_indices, n), partial.T)
    assert torch.equal(dense_blocks(bm.full_q_num_blocks, bm.full_q_indices, n), full.T)
    assert not (partial & full).any()

    truth = document_mask(lengths)
    def expand(blocks):
        return blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)[:T, :T]
    idx = torch.arange(T)
    by_mask_mod = bm.mask_mod(0, 0, idx[:, None], idx[None, :])
    assert torch.equal(expand(full) | (expand(partial) & by_mask_mod), truth)
    assert not (expand(full) & ~truth).any()  # a full block really is all allowed

    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    ref = create_block_mask(lambda b, h, q, k: (doc[q] == doc[k]) & (q >= k), None, None, T, T, device="cpu",
                            BLOCK_SIZE=block)
    assert torch.equal(partial, dense_blocks(ref.kv_num_blocks, ref.kv_indices, n))
    assert torch.equal(full, dense_blocks(ref.full_kv_num_blocks, ref.full_kv_indices, n))
    return bm


@pytest.mark.parametrize("lengths", [BLOCK_LENGTHS, [1], [128], [300], [256, 256],
                                     [129, 127, 128, 1, 1, 1, 2000], [5] * 60, [1000, 24, 3000]])
def test_block_mask_equals_dense_document_mask(lengths):
    check_block_mask(lengths)


def test_block_mask_on_random_packs_and_block_sizes():
    rng = random.Random(0)
    for _ in range(12):
        lengths = [rng.choice([1, 2, 15, 16, 17, 31, 33, 64, 100]) for _ in range(rng.randint(1, 12))]
        check_block_mask(lengths, block=rng.choice([16, 32]))


def test_block_mask_memory_at_512k_is_blocks_squared_not_tokens_squared():
    """A 512K pack of 64 documents: every tensor created while building is at most (T/128)^2 elements, the
    live total stays within a few such tensors, and no T x T tensor ever exists."""
    from memory import TensorMemory
    T, n = 524288, 524288 // 128
    cu = torch.arange(0, T + 1, T // 64, dtype=torch.int32)
    with TensorMemory() as mem:
        bm = attention.document_block_mask(cu, T, "cpu")
    blocks_squared = n * n * 4  # one int32 (T/128)^2 tensor: 64 MiB
    assert mem.largest <= blocks_squared
    held = attention.block_mask_bytes(bm)
    assert held <= 4 * blocks_squared + 4 * T + 4 * 4 * n  # four index tensors, counts, token-to-document map
    assert mem.peak <= 6 * blocks_squared  # measured 337 MiB: the 258 MiB held plus transients
    assert T * T > 500 * mem.peak  # versus the 256 GiB one T x T bool mask takes


def test_cu_seqlens_on_the_device_or_host_give_the_same_documents():
    cu = cu_of(LENGTHS)
    on_host = attention.prepare(cu, sum(LENGTHS), DEVICE, backend="sdpa")
    on_device = attention.prepare(cu.to(DEVICE), sum(LENGTHS), DEVICE, backend="sdpa")
    assert on_host.bounds == on_device.bounds and torch.equal(on_host.cu_seqlens, on_device.cu_seqlens)
    assert on_host.cu_seqlens.device.type == torch.device(DEVICE).type


# ----------------------------------------------------------------------------------------------------------
# everything else


def test_cross_document_is_one_causal_attention():
    q, k, v, cu, _ = packed_qkv(8, 2, torch.float64)
    docs = attention.prepare(cu, q.shape[0], DEVICE, cross_document=True)
    with torch.no_grad():
        out = attention.attend(q, k, v, docs)
        assert (out - reference(q, k, v, [(0, q.shape[0])])).abs().max() <= 1e-10


def test_sdpa_path_costs_sum_of_squared_lengths(monkeypatch):
    """Every SDPA call sees exactly one document with no mask: cost sum(len_i^2), never T^2."""
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, attn_mask=None, is_causal=False, **kwargs):
        calls.append((q.shape[-2], k.shape[-2], attn_mask is None, is_causal))
        return real_sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    q, k, v, cu, _ = packed_qkv(8, 2, torch.float32)
    attention.attend(q, k, v, attention.prepare(cu, q.shape[0], DEVICE, backend="sdpa"))
    assert calls == [(n, n, True, True) for n in LENGTHS if n]


def masked_cached(q, k, v):
    """The formula attend_cached replaces: one SDPA call with a (c x L) bottom-right causal mask."""
    c, L = q.shape[0], k.shape[0]
    mask = torch.ones(c, L, dtype=torch.bool).tril(diagonal=L - c)
    qb, kb, vb = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])
    return out.squeeze(0).transpose(0, 1)


@pytest.mark.parametrize("L", [300, 1000])
@pytest.mark.parametrize("c", [1, 5, 300])
def test_cached_attention_equals_the_masked_formula(c, L):
    q, k, v, _, _ = packed_qkv(8, 2, torch.float64, lengths=[L], device="cpu")
    with torch.no_grad():
        out = attention.attend_cached(q[-c:], k, v)
        assert (out - masked_cached(q[-c:], k, v)).abs().max() <= 1e-12
        assert (out - reference(q, k, v, [(0, L)])[-c:]).abs().max() <= 1e-12


def test_cached_attention_builds_no_mask(monkeypatch):
    """On CPU the c new queries over L keys take mask-free kernels only (the c x L mask is what it avoids)."""
    seen = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, attn_mask=None, **kw: seen.append(attn_mask) or real_sdpa(*a, **kw))
    q, k, v, _, _ = packed_qkv(8, 2, torch.float32, lengths=[64], device="cpu")
    with torch.no_grad():
        for c in (1, 7, 64):
            attention.attend_cached(q[-c:], k, v)
    assert all(m is None for m in seen)


def test_cached_attention_is_causal_from_the_bottom_right():
    L, c = 30, 7  # seven new queries at the end of thirty cached positions
    q, k, v, _, _ = packed_qkv(8, 2, torch.float64, lengths=[L])
    with torch.no_grad():
        full = reference(q, k, v, [(0, L)])
        assert (attention.attend_cached(q[-c:], k, v) - full[-c:]).abs().max() <= 1e-10
        assert (attention.attend_cached(q[-1:], k, v) - full[-1:]).abs().max() <= 1e-10


def test_cached_rows_equal_each_row_alone():
    """Batched decoding: row b's one query over its first lengths[b] keys is attend_cached on that row alone;
    the padding past a row's length (large values here) never shows."""
    lengths = [1, 9, 30, 17]
    q = torch.randn(len(lengths), 8, 16, dtype=torch.float64)
    k, v = (torch.randn(len(lengths), 30, 2, 16, dtype=torch.float64) for _ in range(2))
    for b, n in enumerate(lengths):
        k[b, n:], v[b, n:] = 1e3, -1e3
    with torch.no_grad():
        out = attention.attend_cached_rows(q, k, v, torch.tensor(lengths))
        for b, n in enumerate(lengths):
            assert (out[b] - attention.attend_cached(q[b:b + 1], k[b, :n], v[b, :n])[0]).abs().max() <= 1e-12


def test_bad_boundaries_are_one_clear_line():
    for cu in ([0, 5, 9], [1, 10], [0, 6, 4, 10], [[0, 10]]):
        with pytest.raises(ValueError) as info:
            attention.prepare(torch.tensor(cu, dtype=torch.int32), 10, "cpu")
        assert "cu_seqlens" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention.prepare(None, 10, "cpu", backend="fast")


@pytest.mark.parametrize("backend", ["fa3", "flash", "varlen"])
def test_forcing_a_backend_this_device_lacks_says_why_in_one_line(backend):
    with pytest.raises(ValueError) as info:
        attention.prepare(None, 10, "cpu", backend=backend)
    message = str(info.value)
    assert backend in message and "CUDA" in message and "\n" not in message


def test_cpu_default_is_sdpa_without_importing_dynamo():
    """Picking a backend on CPU must not pay torch._dynamo's import (seconds of start-up)."""
    import subprocess
    import sys
    code = ("import sys, attention; assert attention.default_backend('cpu') == 'sdpa'; "
            "attention.prepare(None, 4, 'cpu'); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(attention.__file__).parent))
    assert out.stdout.strip() == "False"


def test_model_deep_copies_and_the_copy_computes_the_same():
    from model import Llama, LlamaConfig
    torch.manual_seed(0)
    model = Llama(LlamaConfig.tiny())
    twin = copy.deepcopy(model)
    ids = torch.randint(0, model.config.vocab_size, (40,))
    cu = torch.tensor([0, 15, 40], dtype=torch.int32)
    with torch.no_grad():
        assert torch.equal(model(ids, cu_seqlens=cu), twin(ids, cu_seqlens=cu))
    assert isinstance(twin.attention_ops, attention.DocumentAttention)


def test_attention_ops_can_be_swapped_and_restored():
    """seqpar.py installs an object with prepare and attend in every layer through model.attention_ops."""
    from types import SimpleNamespace

    from model import Llama, LlamaConfig
    model = Llama(LlamaConfig.tiny())
    calls = []
    def attend(q, k, v, docs):
        calls.append(q.shape)
        return attention.attend(q, k, v, docs)
    spy = SimpleNamespace(prepare=attention.prepare, attend=attend)
    default = model.attention_ops
    model.attention_ops = spy
    with torch.no_grad():
        model(torch.arange(10))
    assert len(calls) == model.config.num_hidden_layers
    model.attention_ops = default
    assert all(layer.self_attn.ops is default for layer in model.model.layers)


def test_kernels_are_chosen_once_at_start_up_not_inside_a_forward():
    """activate() is the one place that changes aten's flash kernels (process-wide); prepare() only checks."""
    assert attention.activate("cpu") == "sdpa" and attention.activate("cpu", "flex") == "flex"
    for backend, words in (("fa3", "CUDA"), ("fast", "unknown attention backend")):
        with pytest.raises(ValueError) as info:
            attention.activate("cpu", backend)
        assert words in str(info.value) and "\n" not in str(info.value)
    assert attention._flash_impl is None  # nothing was routed on a CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="routes aten's flash kernels on a CUDA device")
def test_fa3_needs_activation_and_varlen_its_undoing():
    cu, dev = torch.tensor([0, 5, 12], dtype=torch.int32), torch.device("cuda")
    attention.activate(dev, "varlen")
    with pytest.raises(ValueError, match="needs attention.activate"):
        attention.prepare(cu, 12, dev, backend="fa3")
    assert attention.default_backend(dev) != "fa3"  # never picked while aten runs FA2
    if attention.unavailable("fa3", dev) is None:
        attention.activate(dev, "fa3")
        assert attention.prepare(cu, 12, dev).backend == "fa3"
        with pytest.raises(ValueError, match="needs attention.activate"):
            attention.prepare(cu, 12, dev, backend="varlen")
        attention.activate(dev, "varlen")
