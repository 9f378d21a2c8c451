"""
Generation with a KV cache, for Llama (model.py): `generate` continues one prompt, `generate_batch` several
prompts of any lengths at once. Llama.generate and Llama.generate_batch call these.

- The prompt is prefilled through the cache `prefill_chunk` tokens at a time, so that activations stay bounded
  at long context; only the last position's logits are ever computed.
- A cache is the model's view of the past: `positions` (the RoPE positions of the new tokens), `attend` (store
  the new keys and values, attend to all of them) and `advance`. model.py's attention calls only these three,
  so it does not know which cache it runs with.
- Greedy when temperature == 0; else temperature and nucleus (top_p) sampling with an optional
  torch.Generator.
"""
import torch
import torch.nn.functional as F

import attention


@torch.no_grad()
def generate(model, prompt_ids, max_new_tokens, temperature=0.0, top_p=1.0, stop_tokens=(), prefill_chunk=4096,
             generator=None):
    """Continue one prompt; greedy when temperature == 0. Returns the new token ids, without the stop token.

    The prompt is prefilled through the KV cache `prefill_chunk` tokens at a time, so that activations stay
    bounded at long context; only the last position's logits are ever computed."""
    param = model.head_weight
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=param.device).reshape(-1)
    if prompt.numel() == 0:
        raise ValueError("generate needs a prompt of at least one token")
    cache = KVCache(model.config, prompt.numel() + max_new_tokens, param.dtype, param.device)
    stop_tokens = set(stop_tokens)
    for start in range(0, prompt.numel(), prefill_chunk):
        hidden = model.hidden_states(prompt[start:start + prefill_chunk], cache=cache)
    new_tokens = []
    for _ in range(max_new_tokens):
        logits = F.linear(hidden[-1], param).float()
        token = sample_token(logits, temperature, top_p, generator)
        if token in stop_tokens:
            break
        new_tokens.append(token)
        hidden = model.hidden_states(torch.tensor([token], device=prompt.device), cache=cache)
    return new_tokens

@torch.no_grad()
def generate_batch(model, prompts, max_new_tokens, temperature=0.0, top_p=1.0, stop_tokens=(),
                   prefill_chunk=4096, generator=None):
    """Continue several prompts of any lengths at once: for each, the new token ids `generate` would return.

    Each prompt is prefilled alone into its own row of a BatchKVCache, as `generate` prefills it (prefill is
    compute-bound: batching it gains little). Decoding is where a batch pays, one forward reading the weights
    once for all rows: a step feeds one token per unfinished row at the row's own position (no left padding,
    so RoPE sees generate's positions), attending to the row's own keys through a key-padding mask; a row that
    draws a stop token leaves the batch. Greedy output equals `generate` token for token (tests, float64; in
    low precision a near-tie may break either way). `generator`: one torch.Generator that the rows share (they
    draw in turn: deterministic, not generate's draws), or one per prompt, each drawing what generate would
    draw."""
    param = model.head_weight
    prompts = [torch.as_tensor(p, dtype=torch.long, device=param.device).reshape(-1) for p in prompts]
    generators = list(generator) if isinstance(generator, (list, tuple)) else [generator] * len(prompts)
    if not prompts or min(p.numel() for p in prompts) == 0 or len(generators) != len(prompts):
        raise ValueError("generate_batch needs prompts of at least one token each (and one generator each)")
    cache = BatchKVCache(model.config, len(prompts), max(p.numel() for p in prompts) + max_new_tokens,
                         param.dtype, param.device)
    last = []
    for b, prompt in enumerate(prompts):
        row = cache.row(b)
        for start in range(0, prompt.numel(), prefill_chunk):
            hidden = model.hidden_states(prompt[start:start + prefill_chunk], cache=row)
        cache.lengths[b] = row.length
        last.append(hidden[-1])
    hidden = torch.stack(last)
    stop_tokens = set(stop_tokens)
    new_tokens = [[] for _ in prompts]
    live = list(range(len(prompts)))  # the prompt of each cache row
    for step in range(max_new_tokens):
        logits = F.linear(hidden, param).float()
        if temperature == 0:
            tokens = logits.argmax(-1).tolist()  # one host sync for the whole batch
        else:
            tokens = [sample_token(x, temperature, top_p, generators[b]) for x, b in zip(logits, live)]
        going = [r for r, token in enumerate(tokens) if token not in stop_tokens]
        for r in going:
            new_tokens[live[r]].append(tokens[r])
        if not going or step == max_new_tokens - 1:
            break
        cache.keep(going)  # finished rows leave the batch (a no-op while none has finished)
        live = [live[r] for r in going]
        hidden = model.hidden_states(torch.tensor([tokens[r] for r in going], device=param.device), cache=cache)
    return new_tokens


class KVCache:
    """Keys and values of every layer for one sequence, preallocated to the longest length generation
    reaches."""

    def __init__(self, config, max_len, dtype, device):
        shape = (config.num_hidden_layers, max_len, config.num_key_value_heads, config.head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0  # positions filled in every layer
        self._cu = None  # set by `positions`, once per forward pass

    def append(self, layer, k, v):
        end = self.length + k.shape[0]
        if end > self.k.shape[1]:
            raise ValueError(f"KV cache holds {self.k.shape[1]} positions; {end} needed")
        self.k[layer, self.length:end] = k
        self.v[layer, self.length:end] = v
        return self.k[layer, :end], self.v[layer, :end]

    def positions(self, num_tokens, device):
        # Once per forward pass, what every layer's attention shares: the varlen kernel's boundaries of c new
        # queries over L keys, copied to the device here rather than twice per layer (a host-to-device copy
        # each)
        end = self.length + num_tokens
        self._cu = tuple(torch.tensor([0, n], dtype=torch.int32).to(device, non_blocking=True)
                         for n in (num_tokens, end))
        return torch.arange(self.length, end, device=device)

    def attend(self, layer, q, k, v):
        return attention.attend_cached(q, *self.append(layer, k, v), cu=self._cu)

    def advance(self, num_tokens):
        self.length += num_tokens
        self._cu = None  # a forward that passes its own position_ids (no `positions` call) gets them built afresh


class BatchKVCache:
    """Several sequences decoded together, one new token each per forward pass (`generate_batch`). Row b holds
    sequence b's keys at its own positions 0 .. lengths[b]-1, right-padded up to the longest row, so a new
    token's position (its RoPE angle) is lengths[b], as in a KVCache of its own; `keep` drops finished
    rows."""

    def __init__(self, config, rows, max_len, dtype, device):
        shape = (config.num_hidden_layers, rows, max_len, config.num_key_value_heads, config.head_dim)
        # zeros, not empty: masked-out padding still enters attention as 0 * value, and 0 * NaN is NaN
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = [0] * rows  # on the host: the longest row sets how many keys a step reads

    def row(self, b):
        """A KVCache over row b's storage, to prefill that row alone."""
        row = KVCache.__new__(KVCache)
        row.k, row.v, row.length, row._cu = self.k[:, b], self.v[:, b], 0, None
        return row

    def keep(self, rows):
        """Keep only `rows` (ascending), moved up in place: row rows[i] >= i, so none is overwritten
        unread."""
        for new, old in enumerate(rows):
            if new != old:
                n = self.lengths[old]
                self.k[:, new, :n] = self.k[:, old, :n]
                self.v[:, new, :n] = self.v[:, old, :n]
        self.k, self.v = self.k[:, :len(rows)], self.v[:, :len(rows)]
        self.lengths = [self.lengths[r] for r in rows]

    def positions(self, num_tokens, device):
        # one new token per row; built once per forward pass (one host-to-device copy), every layer reuses
        # them
        self._positions = torch.tensor(self.lengths, device=device)
        self._rows = torch.arange(len(self.lengths), device=device)
        self._filled = self._positions + 1  # keys each row attends to, its new one included
        return self._positions

    def attend(self, layer, q, k, v):
        self.k[layer, self._rows, self._positions] = k
        self.v[layer, self._rows, self._positions] = v
        end = max(self.lengths) + 1
        return attention.attend_cached_rows(q, self.k[layer, :, :end], self.v[layer, :, :end], self._filled)

    def advance(self, num_tokens):
        self.lengths = [n + 1 for n in self.lengths]


def sample_token(logits, temperature, top_p, generator=None):
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:  # nucleus: keep the smallest set of tokens whose mass reaches top_p
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return int(torch.multinomial(probs, 1, generator=generator))
