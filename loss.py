"""
The output layer's cross-entropy, in chunks of tokens, never holding the (tokens x vocabulary) logits at once.

Two forms, one result (tests/test_loss.py checks both against F.cross_entropy in float64):
- `fused_cross_entropy` (the default, model.fused_loss = True): the summed loss. Because the loss is a *sum*, its
  upstream gradient is one scalar, so each chunk's gradients with respect to the hidden states and the output
  weight can be computed in the forward pass, straight from the chunk's softmax (softmax - one_hot), and backward
  only scales them; the loss is -log of the label's probability, read from the same softmax. Three (tokens x hidden
  x vocabulary) matmuls, as an unchunked cross-entropy does, and one pass over each chunk's logits. The price: from
  forward to backward it holds the weight's gradient, a (vocabulary x hidden) float32 buffer (2 GiB for
  Llama-3-8B; 0.5 GiB for Llama-3.2-1B's tied head) and the (tokens x hidden) gradient of the hidden states, in
  place of the hidden states themselves.
- `chunked_cross_entropy` (model.fused_loss = False, and for per-token losses): forward keeps only each token's
  log-sum-exp; backward recomputes every chunk's logits, one extra matmul, and holds nothing the size of the weight
  between the passes. Pick it when that buffer is what does not fit.
Logits and softmax are in float32 at least, as Hugging Face upcasts them. Chunks without a valid label (a prompt,
padding) cost nothing in the fused form and contribute exactly zero in both. On CPU each chunk's logits go into one
buffer reused across chunks, with the softmax computed in it: a fresh 2 GiB tensor per chunk would be paid for in
page faults, and on 2 cores those cost as much as a matmul.
"""
import torch


def _chunk_valid_counts(labels, chunk_size):
    """Valid labels per chunk, with one host sync for all chunks."""
    starts = list(range(0, labels.shape[0], chunk_size))
    if not starts:
        return starts, []
    counts = torch.stack([(labels[s:s + chunk_size] != -100).sum() for s in starts]).tolist()
    return starts, counts


# Below this probability a label's -log(p) would lose digits to float32's subnormals (or be infinite).
TINY = 1e-30


def _loss_from_probabilities(p_target, hidden, weight, labels, acc):
    """Summed -log p of every labelled token. The rare token whose probability is below TINY gets its loss exactly,
    as log-sum-exp minus its logit, from its own row of logits computed again (one host sync, at the end)."""
    tiny = p_target < TINY
    loss = -torch.where(tiny, 1.0, p_target).log().sum()
    if hidden.device.type != "meta" and tiny.any():  # meta (memory.py's estimates) has shapes, no values
        idx = tiny.nonzero()[:, 0]
        logits = (hidden[idx] @ weight.T).to(acc)
        picked = logits.gather(1, labels[idx, None])[:, 0]
        loss = loss + (torch.logsumexp(logits, dim=-1) - picked).sum()
    return loss


class _FusedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy whose gradients are computed in forward (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size, grad_hidden_needed, grad_weight_needed):
        acc = torch.promote_types(hidden.dtype, torch.float32)
        T, V = hidden.shape[0], weight.shape[0]
        grad_hidden = torch.zeros_like(hidden) if grad_hidden_needed else None
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if grad_weight_needed else None
        same = hidden.dtype == acc and weight.dtype == acc  # matmuls can write into float32 buffers directly
        starts, counts = _chunk_valid_counts(labels, chunk_size)
        valid = labels != -100
        p_target = torch.ones(T, dtype=acc, device=hidden.device)  # each token's probability of its label
        buffer = None
        for s, count in zip(starts, counts):
            if count == 0:
                continue  # no loss, no gradient: not even the logits are needed
            h, target = hidden[s:s + chunk_size], labels[s:s + chunk_size]
            n = h.shape[0]
            if buffer is None:  # one buffer for every chunk: on CPU a fresh 2 GiB tensor costs page faults
                buffer = torch.empty((min(chunk_size, T), V), dtype=acc, device=hidden.device)
            probs = buffer[:n]
            if same:
                torch.mm(h, weight.T, out=probs)
            else:
                probs.copy_(h @ weight.T)
            torch.softmax(probs, dim=-1, out=probs)  # in place, row by row: the gradient is softmax - one_hot
            rows, cols = torch.arange(n, device=h.device), target.clamp(min=0)
            p_target[s:s + n] = torch.where(valid[s:s + n], probs[rows, cols], 1.0)
            if grad_hidden is None and grad_weight is None:
                continue
            probs[rows, cols] -= 1.0
            if count < n:  # tokens without a label get no gradient
                probs.index_fill_(0, (~valid[s:s + n]).nonzero()[:, 0], 0.0)
            grad_logits = probs if same else probs.to(hidden.dtype)
            if grad_hidden is not None:
                torch.mm(grad_logits, weight.to(grad_logits.dtype), out=grad_hidden[s:s + n])
            if grad_weight is not None:
                if same:
                    grad_weight.addmm_(grad_logits.T, h)
                else:
                    grad_weight += (grad_logits.T @ h).to(acc)
        loss = _loss_from_probabilities(p_target, hidden, weight, labels, acc)
        # Kept on ctx, not saved for backward: activation checkpointing must neither discard nor recompute them.
        ctx.grads = (grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("the fused cross-entropy's gradients were already used: a second backward through "
                               "the same loss (retain_graph) needs model.fused_loss = False")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None  # scaled in place below, and freed as soon as autograd is done with them
        if grad_hidden is not None:
            grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None


def fused_cross_entropy(hidden, weight, labels, chunk_size=4096):
    """Summed loss over tokens with labels != -100 (a 0-d float32+ tensor). hidden (T, d), weight (vocab, d)."""
    if labels.shape[0] != hidden.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} tokens, the inputs {hidden.shape[0]}")
    grad = torch.is_grad_enabled()  # inside forward it never is: decided here (no_grad, reentrant checkpoint)
    return _FusedCrossEntropy.apply(hidden, weight, labels, chunk_size, grad and hidden.requires_grad,
                                    grad and weight.requires_grad)


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy; backward recomputes each chunk's logits (see the module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_size):
        losses = torch.zeros(labels.shape, dtype=torch.promote_types(hidden.dtype, torch.float32),
                             device=hidden.device)
        lse = torch.zeros_like(losses)
        for s in range(0, hidden.shape[0], chunk_size):
            logits = (hidden[s:s + chunk_size] @ weight.T).to(losses.dtype)
            lse[s:s + chunk_size] = torch.logsumexp(logits, dim=-1)
            target = labels[s:s + chunk_size]
            valid = target != -100
            picked = logits.gather(-1, target.clamp(min=0)[:, None])[:, 0]
            losses[s:s + chunk_size] = torch.where(valid, lse[s:s + chunk_size] - picked, 0.0)
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk_size = chunk_size
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        hidden, weight, labels, lse = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        n = ctx.chunk_size
        # chunks without labels (a prompt, padding) contribute exactly zero; one host sync for all of them
        starts, counts = _chunk_valid_counts(labels, n)
        for s, count in zip(starts, counts):
            if not count:
                continue
            h, target = hidden[s:s + n], labels[s:s + n]
            valid = target != -100
            # softmax - one_hot, scaled by the upstream gradient, in place: on CPU this loop is memory-bound
            probs = (h @ weight.T).to(lse.dtype).sub_(lse[s:s + n, None]).exp_()
            probs[torch.arange(len(target), device=h.device), target.clamp(min=0)] -= 1.0
            grad_logits = probs.mul_(torch.where(valid, grad_losses[s:s + n], 0.0)[:, None]).to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[s:s + n] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h).to(grad_weight.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def chunked_cross_entropy(hidden, weight, labels, chunk_size=4096):
    """Per-token losses (T,), 0 where labels == -100. hidden (T, d), weight (vocab, d), labels (T,)."""
    if labels.shape[0] != hidden.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} tokens, the inputs {hidden.shape[0]}")
    return _ChunkedCrossEntropy.apply(hidden, weight, labels, chunk_size)
