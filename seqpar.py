"""
Ulysses sequence parallelism: the `sp` ranks of one group share a packed sequence, each holding a contiguous
1/sp slice of its tokens.

Everything in a Llama block except attention works token by token, so each rank embeds, normalises, projects,
rotates (RoPE, with each token's true position in its document) and computes the loss for its own slice only.
Attention needs the whole sequence, but its heads are independent. So before attention one all-to-all trades
tokens for heads: rank r cuts its q, k, v into sp groups of heads, sends group j to rank j, and receives from
every rank j that rank's tokens for r's own heads. Each rank then holds the *full* sequence for H/sp query
heads and attends with the global `cu_seqlens` through attention.py's ordinary backends, exactly as one
process would: a document that straddles a slice boundary keeps all its context (no shortcut that skips the
exchange). A second all-to-all trades the attention output back to tokens. An even all-to-all is a permutation
that is its own inverse, so the backward pass of each exchange is the same exchange of the gradient. The model
never knows: `enable` swaps its `attention_ops`.

GQA: query head h uses KV head h // (H / H_kv). When sp divides H_kv, K and V travel with their own head count
(H_kv/sp heads per rank), never repeated to H heads first as the paper's code does (which sends 4x the K/V
bytes for Llama-3's 32/8 heads). When H_kv divides sp, each KV head is replicated sp/H_kv times before the
exchange, so every rank receives exactly the one KV head its H/sp query heads use. q, k and v travel in one
buffer: one all-to-all in, one out, per layer and direction.

Cost per layer and rank, forward (backward sends the same again): (sp-1)/sp of T_local x D x (H + 2 max(H_kv,
sp) + H) elements, the minimum for this exchange. `python seqpar.py` prints it for Llama-3-8B.

Exact loss: each rank sums the loss of its slice; train.py divides by the valid-label count of the whole step
over all ranks and FSDP sums gradients, so sp changes nothing but the order of additions.
"""
from collections import namedtuple
from types import SimpleNamespace

import torch
import torch.distributed as dist

import attention
from model import document_positions

# One rank's share of a packed micro-batch; cu_seqlens stays global (it describes the whole padded sequence).
Slice = namedtuple("Slice", "input_ids labels cu_seqlens position_ids")


def check_heads(config, sp):
    """Raise a one-line ValueError when the attention heads cannot be split over `sp` ranks."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads % sp:
        raise ValueError(f"sp_size {sp} does not divide num_attention_heads {heads}: Ulysses gives each rank "
                         f"num_attention_heads / sp_size heads")
    if kv_heads % sp and sp % kv_heads:
        raise ValueError(f"num_key_value_heads {kv_heads} is neither divisible by sp_size {sp} nor a divisor "
                         f"of it, so KV heads cannot be split evenly over the ranks")


def kv_heads_exchanged(n_kv_heads, sp):
    """KV heads a rank puts into the exchange: its own, or each one replicated sp / n_kv times when sp >
    n_kv."""
    return max(n_kv_heads, sp)  # check_heads: either sp divides n_kv_heads or n_kv_heads divides sp


# ----------------------------------------------------------------------------------------------------------
# the exchange


def _all_to_all(x, group):
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)  # even splits along dim 0: chunk j goes to rank j
    return out


class _Exchange(torch.autograd.Function):
    """all_to_all_single along dim 0. Rank i's chunk j lands in rank j's chunk i: a transposition, its own
    inverse and its own adjoint, so the gradient goes back through the same exchange."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _all_to_all(x.contiguous(), group)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad.contiguous(), ctx.group), None


def heads_to_sequence(q, k, v, sp, group):
    """Local tokens, all heads -> all tokens, this rank's heads. q (T, H, D), k/v (T, H_kv, D) in;
    q (sp T, H/sp, D) and k/v (sp T, max(H_kv, sp)/sp, D) out, in global token order."""
    T, H, D = q.shape
    if k.shape[1] % sp:  # fewer KV heads than ranks: replicate each so that rank j gets the one it needs
        k, v = (x.repeat_interleave(sp // x.shape[1], dim=1) for x in (k, v))
    kv = k.shape[1]
    # One buffer (sp, T, heads of rank j, D): chunk j holds the q, k and v heads that rank j will own.
    send = torch.cat([x.reshape(T, sp, -1, D) for x in (q, k, v)], dim=2).transpose(0, 1)
    received = _Exchange.apply(send, group)  # chunk j: rank j's tokens, i.e. global tokens j T .. (j + 1) T
    return received.reshape(sp * T, -1, D).split([H // sp, kv // sp, kv // sp], dim=1)


def sequence_to_heads(out, sp, group):
    """The inverse for the attention output: (sp T, H/sp, D) -> (T, H, D) for this rank's tokens."""
    n, h, D = out.shape
    received = _Exchange.apply(out.reshape(sp, n // sp, h, D), group)  # chunk j: my tokens, rank j's heads
    return received.transpose(0, 1).reshape(n // sp, sp * h, D)


def ulysses_ops(group):
    """An object with attention.py's `prepare` and `attend`, doing the Ulysses exchange around the plain
    backends."""
    sp = dist.get_world_size(group)

    def prepare(cu_seqlens, num_tokens, device, cross_document=False, backend=None):
        # the model sees its local slice; the documents (and the attention) span the whole sequence
        return attention.prepare(cu_seqlens, num_tokens * sp, device, cross_document=cross_document,
                                 backend=backend)

    def attend(q, k, v, docs):
        q, k, v = heads_to_sequence(q, k, v, sp, group)
        return sequence_to_heads(attention.attend(q, k, v, docs), sp, group)

    return SimpleNamespace(prepare=prepare, attend=attend, group=group, sp=sp)


# ----------------------------------------------------------------------------------------------------------
# the batch


def split_batch(batch, sp, rank, continuous_positions=False, pad_id=0):
    """This rank's contiguous 1/sp slice of one packed micro-batch (input_ids, labels, cu_seqlens).

    A length that sp does not divide is first padded with `pad_id` tokens that form their own last document
    and predict nothing (labels -100), so they change no other token's attention, position or loss. Positions
    are each token's place in its document, computed on the whole sequence (a slice may start mid-document);
    `continuous_positions` (the cross-document ablation) numbers the whole pack instead."""
    ids, labels = torch.as_tensor(batch.input_ids), torch.as_tensor(batch.labels)
    cu = torch.as_tensor(batch.cu_seqlens).to(torch.int32)
    T = ids.shape[0]
    if labels.shape != ids.shape or cu.dim() != 1 or len(cu) < 2 or int(cu[0]) != 0 or int(cu[-1]) != T:
        raise ValueError(f"a packed batch needs labels like input_ids ({T} tokens) and cu_seqlens from 0 to "
                         f"{T}; got labels {tuple(labels.shape)}, cu_seqlens "
                         f"{cu.tolist()[:4]}...{cu.tolist()[-2:]}")
    pad = -T % sp
    if pad:
        ids = torch.cat([ids, ids.new_full((pad,), pad_id)])
        labels = torch.cat([labels, labels.new_full((pad,), -100)])
        cu = torch.cat([cu, cu.new_tensor([T + pad])])
    positions = torch.arange(T + pad) if continuous_positions else document_positions(cu, T + pad)
    n = (T + pad) // sp
    mine = slice(rank * n, (rank + 1) * n)
    return Slice(ids[mine], labels[mine], cu, positions[mine])


def enable(model, group, rank):
    """Install Ulysses attention on `model` (every layer) for the sequence-parallel `group`, in which this
    process is `rank`. Returns split(batch) -> this rank's Slice of a full packed micro-batch."""
    sp = dist.get_world_size(group)
    if dist.get_rank(group) != rank:
        raise ValueError(f"sp rank {rank} given, but this process is rank {dist.get_rank(group)} of its SP "
                         f"group")
    check_heads(model.config, sp)
    model.attention_ops = ulysses_ops(group)
    continuous = model.cross_document  # the ablation's positions run on through the whole pack
    return lambda batch: split_batch(batch, sp, rank, continuous_positions=continuous)


# ----------------------------------------------------------------------------------------------------------
# communication volume


def bytes_per_layer(tokens_per_rank, n_heads, n_kv_heads, head_dim, sp, bytes_per_element=2, repeat_kv=False):
    """Bytes one rank sends to the other ranks in one layer's forward pass (q, k, v out, attention output
    back); the backward pass sends as much again. repeat_kv=True: the cost when K/V are first repeated to
    n_heads heads, as the paper's code does."""
    kv = n_heads if repeat_kv else kv_heads_exchanged(n_kv_heads, sp)
    elements = tokens_per_rank * head_dim * ((n_heads + 2 * kv) + n_heads)  # in, then back
    return elements * bytes_per_element * (sp - 1) // sp  # the chunk a rank keeps for itself is not sent


def main():
    T, H, K, D, sp, layers = 65536, 32, 8, 128, 8, 32
    gib = 2 ** 30
    ours, paper = bytes_per_layer(T, H, K, D, sp), bytes_per_layer(T, H, K, D, sp, repeat_kv=True)
    back = T * D * H * 2 * (sp - 1) // sp  # the attention output, bf16
    print(f"Ulysses all-to-all, Llama-3-8B (hidden 4096, {H} heads, {K} KV heads, head_dim {D}), sp = {sp}, "
          f"{T:,} tokens per rank, bf16; bytes one rank sends per layer, forward:")
    print(f"  K/V with their own {K} heads:    {ours:>13,} B = {ours / gib:.4f} GiB  "
          f"(q, k, v out {(ours - back) / gib:.4f} GiB + output back {back / gib:.4f} GiB)")
    print(f"  K/V repeated to {H} heads first: {paper:>13,} B = {paper / gib:.4f} GiB  "
          f"({paper / ours:.2f}x; the paper's code)")
    print(f"  one training sequence, {layers} layers x 3 (forward, checkpoint recompute, backward): "
          f"{3 * layers * ours / gib:.1f} GiB versus {3 * layers * paper / gib:.1f} GiB per rank")


if __name__ == "__main__":
    main()
