"""attention.py: every backend against attention written out per document, in float64."""
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
    names = ["sdpa"]
    if DEVICE == "cuda":
        names.append("flex")
        if attention._varlen_attn() is not None:
            names.append("varlen")
        if attention.flash_attn_varlen_func is not None:
            names.append("flash")
    return names


LENGTHS = [1, 37, 0, 100, 5, 64, 49]  # includes a one-token and an empty document


def packed_qkv(heads, kv_heads, dtype, lengths=LENGTHS, dim=16):
    T = sum(lengths)
    q = torch.randn(T, heads, dim, dtype=dtype, device=DEVICE, requires_grad=True)
    k = torch.randn(T, kv_heads, dim, dtype=dtype, device=DEVICE, requires_grad=True)
    v = torch.randn(T, kv_heads, dim, dtype=dtype, device=DEVICE, requires_grad=True)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    bounds = [(a, b) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    return q, k, v, cu, bounds


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
def test_backend_equals_per_document_reference(backend, heads, kv_heads):
    # the half-precision kernels are checked in bf16 against the float64 reference; the others exactly
    exact = backend in ("sdpa", "flex")
    dtype = torch.float64 if exact else torch.bfloat16
    q, k, v, cu, bounds = packed_qkv(heads, kv_heads, dtype)
    docs = attention.prepare(cu, q.shape[0], DEVICE, backend=backend)
    out = attention.attend(q, k, v, docs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)

    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference(q64, k64, v64, bounds)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), grad_out.double())
    tol = 1e-10 if exact else 3e-2
    assert (out.double() - ref).abs().max() <= tol
    for g, r in zip(grads, ref_grads):
        assert (g.double() - r).abs().max() <= tol


def test_flex_forward_on_cpu_equals_reference():
    """FlexAttention has no backward on CPU, but its mask can still be checked here, unfused."""
    if DEVICE == "cuda":
        pytest.skip("covered with gradients by the CUDA backend test")
    q, k, v, cu, bounds = packed_qkv(8, 2, torch.float64)
    q, k, v = q.detach(), k.detach(), v.detach()
    docs = attention.prepare(cu, q.shape[0], DEVICE, backend="flex")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # "called without torch.compile": intended, unfused on CPU
        out = attention.attend(q, k, v, docs)
    assert (out - reference(q, k, v, bounds)).abs().max() <= 1e-10


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


def test_cached_attention_is_causal_from_the_bottom_right():
    L, c = 30, 7  # seven new queries at the end of thirty cached positions
    q, k, v, _, _ = packed_qkv(8, 2, torch.float64, lengths=[L])
    with torch.no_grad():
        full = reference(q, k, v, [(0, L)])
        assert (attention.attend_cached(q[-c:], k, v) - full[-c:]).abs().max() <= 1e-10
        assert (attention.attend_cached(q[-1:], k, v) - full[-1:]).abs().max() <= 1e-10


def test_bad_boundaries_are_one_clear_line():
    for cu in ([0, 5, 9], [1, 10], [0, 6, 4, 10], [[0, 10]]):
        with pytest.raises(ValueError) as info:
            attention.prepare(torch.tensor(cu, dtype=torch.int32), 10, "cpu")
        assert "cu_seqlens" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention.prepare(None, 10, "cpu", backend="fast")
