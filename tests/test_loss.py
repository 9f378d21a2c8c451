"""loss.py: both cross-entropy forms against F.cross_entropy on full logits (the reference), in float64; the fused
one under no_grad, activation checkpointing, tied embeddings and FSDP2."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from loss import chunked_cross_entropy, fused_cross_entropy
from model import Llama, LlamaConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def case(T=70, d=16, V=97, dtype=torch.float64):
    hidden = torch.randn(T, d, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, d, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, V, (T,))
    labels[10:30] = -100  # with chunks of 8, tokens 16..23 form a chunk without a single label
    labels[-1] = -100
    labels[3] = -100  # and a chunk with some labels and not others
    return hidden, weight, labels


def full(hidden, weight, labels):
    return F.cross_entropy(hidden @ weight.T, labels, reduction="sum", ignore_index=-100)


@pytest.mark.parametrize("chunk", [8, 7, 1, 1000])
def test_fused_equals_full_and_chunked_cross_entropy_float64(chunk):
    hidden, weight, labels = case()
    scale = 0.37  # an upstream gradient other than 1, as train.py's loss / global count
    ours = fused_cross_entropy(hidden, weight, labels, chunk)
    gh, gw = torch.autograd.grad(ours * scale, (hidden, weight))
    ref = full(hidden, weight, labels)
    rh, rw = torch.autograd.grad(ref * scale, (hidden, weight))
    chunked = chunked_cross_entropy(hidden, weight, labels, chunk).sum()
    ch, cw = torch.autograd.grad(chunked * scale, (hidden, weight))
    assert ours.dtype == torch.float64 and ours.shape == ()
    assert abs(ours.item() - ref.item()) <= 1e-10 and abs(ours.item() - chunked.item()) <= 1e-10
    for a, b, c in ((gh, rh, ch), (gw, rw, cw)):
        assert (a - b).abs().max() <= 1e-10 and (a - c).abs().max() <= 1e-10
    assert (gh[labels == -100] == 0).all()  # a token without a label gets no gradient


def test_a_label_of_vanishing_probability_keeps_its_exact_loss_in_float32():
    # The fused loss takes -log p of the softmax it already has. A label 200 nats below the best logit has p ~ 1e-87,
    # zero in float32: its loss must still be the reference's (about 200), not inf, and its neighbours' unchanged.
    V, T = 40, 9
    hidden = torch.randn(T, V) * 0.5
    hidden[2, 7] = hidden[5, 0] = 200.0  # two tokens' best logit far above everything else
    hidden = hidden.requires_grad_()
    weight = torch.eye(V).requires_grad_()  # logits = hidden
    labels = torch.randint(1, V, (T,))
    labels[2], labels[5], labels[6] = 3, 1, -100
    ours = fused_cross_entropy(hidden, weight, labels, chunk_size=4)
    gh, gw = torch.autograd.grad(ours, (hidden, weight))
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = full(h64, w64, labels)
    rh, rw = torch.autograd.grad(ref, (h64, w64))
    assert ref.item() > 400 and torch.isfinite(ours)
    assert abs(ours.item() - ref.item()) <= 1e-6 * ref.item()
    assert (gh.double() - rh).abs().max() <= 1e-6 and (gw.double() - rw).abs().max() <= 1e-6 * rw.abs().max()


def test_all_masked_and_empty_inputs_give_zero_loss_and_zero_gradients():
    for T in (12, 0):
        hidden = torch.randn(T, 8, requires_grad=True)
        weight = torch.randn(30, 8, requires_grad=True)
        loss = fused_cross_entropy(hidden, weight, torch.full((T,), -100), chunk_size=5)
        loss.backward()
        assert loss.item() == 0.0 and (hidden.grad == 0).all() and (weight.grad == 0).all()


def test_only_what_needs_a_gradient_gets_one():
    hidden, weight, labels = case()
    ref = torch.autograd.grad(full(hidden, weight, labels), hidden)[0]
    ours = torch.autograd.grad(fused_cross_entropy(hidden, weight.detach(), labels, 8), hidden)[0]
    assert (ours - ref).abs().max() <= 1e-10
    ref = torch.autograd.grad(full(hidden, weight, labels), weight)[0]
    ours = torch.autograd.grad(fused_cross_entropy(hidden.detach(), weight, labels, 8), weight)[0]
    assert (ours - ref).abs().max() <= 1e-10


def largest_new_storage(fn, *inputs):
    """fn(), and the bytes of the largest storage created while it ran (views of the inputs are not new)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    known, largest = {x.untyped_storage().data_ptr() for x in inputs}, [0]

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in known:
                    largest[0] = max(largest[0], t.untyped_storage().nbytes())
            return out

    with Mode():
        result = fn()
    return result, largest[0]


def test_without_grad_no_weight_sized_buffer_is_made():
    """Validation runs under no_grad: the fused form must then cost what a plain forward costs. Chunks of 4 tokens
    and a hidden size of 64 make a chunk of logits 16x smaller than the weight's gradient would be."""
    hidden, weight, labels = case(T=40, d=64, V=500, dtype=torch.float32)
    with torch.no_grad():
        loss, largest = largest_new_storage(lambda: fused_cross_entropy(hidden, weight, labels, 4), hidden, weight)
    assert not loss.requires_grad and abs(loss.item() - full(hidden, weight, labels).item()) < 1e-3
    assert largest == 4 * 500 * 4  # one chunk of float32 logits
    # and with grad the (vocab x hidden) buffer is made: the check above can fail
    _, largest = largest_new_storage(lambda: fused_cross_entropy(hidden, weight, labels, 4), hidden, weight)
    assert largest == 500 * 64 * 4


@pytest.mark.parametrize("reentrant", [False, True])
def test_under_activation_checkpointing(reentrant):
    hidden, weight, labels = case()
    norm = torch.nn.RMSNorm(16, dtype=torch.float64)

    def head(h):
        return fused_cross_entropy(norm(h), weight, labels, 8)

    ours = checkpoint(head, hidden, use_reentrant=reentrant)
    ours.backward()  # reentrant checkpointing refuses autograd.grad
    grads = [p.grad for p in (hidden, weight, norm.weight)]
    ref = full(norm(hidden), weight, labels)
    ref_grads = torch.autograd.grad(ref, (hidden, weight, norm.weight))
    assert abs(ours.item() - ref.item()) <= 1e-10
    assert max((a - b).abs().max().item() for a, b in zip(grads, ref_grads)) <= 1e-10


def test_a_second_backward_is_refused_in_one_line():
    hidden, weight, labels = case()
    loss = fused_cross_entropy(hidden, weight, labels, 8)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="fused_loss = False"):
        loss.backward()


def test_bfloat16_matches_the_recomputing_form_and_keeps_dtypes():
    """Under bf16 compute both forms make the logits in bf16 and the softmax in fp32: the same loss; gradients
    differ only by where the upstream scale is applied (before or after rounding to bf16)."""
    hidden, weight, labels = case(T=64, d=32, V=300, dtype=torch.float32)
    h16, w16 = (x.detach().bfloat16().requires_grad_() for x in (hidden, weight))
    ours = fused_cross_entropy(h16, w16, labels, 16)
    gh, gw = torch.autograd.grad(ours / 50, (h16, w16))
    ref = chunked_cross_entropy(h16, w16, labels, 16).sum()
    rh, rw = torch.autograd.grad(ref / 50, (h16, w16))
    assert ours.dtype == torch.float32 and gh.dtype == gw.dtype == torch.bfloat16
    assert abs(ours.item() - ref.item()) <= 1e-6 * ref.item()
    for a, b in ((gh, rh), (gw, rw)):
        assert (a.float() - b.float()).abs().max() <= 0.01 * b.float().abs().max()


@pytest.mark.parametrize("tied", [False, True])
def test_model_with_fused_loss_equals_full_cross_entropy_float64(tied):
    """The head's gradient from the fused loss accumulates with the embedding's when they are one tensor."""
    config = LlamaConfig.tiny(vocab_size=300, tie_word_embeddings=tied, initializer_range=0.2)
    model = Llama(config).double()
    model.loss_chunk_size = 16
    ids = torch.randint(0, 300, (50,))
    cu = torch.tensor([0, 20, 50], dtype=torch.int32)
    labels = torch.cat([ids[1:20], torch.tensor([-100]), ids[21:], torch.tensor([-100])])
    params = list(model.parameters())
    assert model.fused_loss  # the default
    loss, n = model(ids, cu_seqlens=cu, labels=labels)
    grads = torch.autograd.grad(loss, params)
    ref = F.cross_entropy(model(ids, cu_seqlens=cu), labels, reduction="sum")
    ref_grads = torch.autograd.grad(ref, params)
    assert n.item() == 48 and abs(loss.item() - ref.item()) <= 1e-10
    assert max((a - b).abs().max().item() for a, b in zip(grads, ref_grads)) <= 1e-10
    model.fused_loss = False
    loss2, _ = model(ids, cu_seqlens=cu, labels=labels)
    assert abs(loss2.item() - loss.item()) <= 1e-10


@pytest.mark.slow
def test_fused_loss_under_fsdp2_and_activation_checkpointing_equals_recomputing():
    """Two gloo ranks, FSDP2 on every block and the root, checkpointed blocks, a tied head, float64: the gradients
    with fused_loss on equal those with it off (the form tested against the full cross-entropy above)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           os.path.join(ROOT, "tests", "loss_fsdp_worker.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max grad difference" in proc.stdout, proc.stdout
    diff = float(proc.stdout.split("max grad difference")[1].split()[0])
    assert diff <= 1e-10, proc.stdout
