"""
Llama-3, written out by hand: the model ProLong continues to train on long documents; and, through three switches
of the same module, its two close relatives Qwen2/Qwen2.5 (bias on the q, k and v projections) and Qwen3 (an
RMSNorm over each head's q and k before RoPE, and a `head_dim` set independently of hidden_size / heads). There is
no class per family: `LlamaConfig.model_type` names the family, and config.json says which one a checkpoint is.

Conventions the rest of the repository relies on:
- Parameter names are Hugging Face's (`model.layers.3.self_attn.q_proj.weight`, ...), so a state dict is an HF
  checkpoint with no renaming table; `from_pretrained` and `save_pretrained` read and write HF safetensors (the
  files themselves are hf_checkpoint.py's).
- The forward pass takes a *packed* sequence: `input_ids` of shape (T,) (or (B, T): B documents of length T) and
  `cu_seqlens` marking document boundaries. RoPE positions restart at 0 in every document unless `position_ids`
  are given, and attention never crosses a boundary (attention.py).
- RoPE angles are computed in float64 from the positions actually present, once per forward pass and shared by all
  layers: at position 524,287 with base 1.28e8 a float32 angle would be off by ~0.03 rad.
- With `labels` (aligned with the inputs: labels[i] is the target for position i, -100 where nothing is to be
  predicted) the forward pass returns (summed loss, number of valid labels) so that the caller can average over
  exactly the tokens it wants (an optimizer step across all devices). The loss is a chunked cross-entropy that
  never materialises the (T x vocab) logits, not even for the backward pass (loss.py).
- Sequence parallelism wraps the two attention entry points `prepare`/`attend` (`model.attention_ops`); the model
  does not know whether it is distributed.
"""
import json
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

import attention
import generation
from hf_checkpoint import (FAMILY_NAMES, checked_rope_scaling, read_hf_config, read_safetensors, resolve_checkpoint,
                           rope_type, save_safetensors, write_hf_config)
from loss import chunked_cross_entropy, fused_cross_entropy  # noqa: F401 (tests import them from here)


# ----------------------------------------------------------------------------------------------------------------
# configuration


@dataclass
class LlamaConfig:
    """Fields are Hugging Face config keys (of LlamaConfig, Qwen2Config, Qwen3Config), so config.json maps 1:1;
    `attention_bias` and `qk_norm` are what `model_type` implies (see _FAMILIES), never read from config.json."""
    hidden_size: int = 4096
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    intermediate_size: int = 14336
    vocab_size: int = 128256
    rope_theta: float = 500000.0
    rope_scaling: dict = None  # None, or {"rope_type": "llama3"|"linear", "factor": ..., ...}
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 8192
    head_dim: int = None  # None: hidden_size // num_attention_heads
    initializer_range: float = 0.02
    bos_token_id: int = 128000
    eos_token_id: object = 128001  # an id or a list of ids, as in HF configs
    # the family ("llama", "qwen2" or "qwen3"; what to_hf_dict writes) and the switches it implies (None: as it says)
    model_type: str = "llama"
    attention_bias: bool = None  # bias on q_proj, k_proj, v_proj (not o_proj): Qwen2 and Qwen2.5
    qk_norm: bool = None  # RMSNorm over head_dim on q and k, before RoPE: Qwen3

    def __post_init__(self):
        if self.model_type not in _FAMILIES:
            raise ValueError(f"model_type {self.model_type!r} is not implemented (only {FAMILY_NAMES})")
        implied = _FAMILIES[self.model_type]
        self.attention_bias, self.qk_norm = (i if g is None else g for g, i in
                                             zip((self.attention_bias, self.qk_norm), implied))
        if (self.attention_bias, self.qk_norm) != implied:
            raise ValueError(f"model_type {self.model_type!r} means attention_bias={implied[0]} and qk_norm="
                             f"{implied[1]}; got {self.attention_bias} and {self.qk_norm} (set model_type to the "
                             f"family you mean: {FAMILY_NAMES})")
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        self.rope_scaling = checked_rope_scaling(self.rope_scaling, "rope_scaling")

    # Presets. Llama-3-8B is the recipe's starting point; Llama-3.2-1B a small real model; tiny runs in seconds.
    @classmethod
    def llama3_8b(cls, **overrides):
        return cls(**overrides)

    @classmethod
    def llama3_2_1b(cls, **overrides):
        return cls(**{**dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, head_dim=64,
                             tie_word_embeddings=True, max_position_embeddings=131072,
                             rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
                      **overrides})

    @classmethod
    def tiny(cls, **overrides):
        """`tiny(model_type="qwen3")` is a tiny Qwen3, "qwen2" a tiny Qwen2."""
        return cls(**{**dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=176), **overrides})

    @classmethod
    def from_hf_dict(cls, d, source="config.json"):
        """Read a checkpoint's config.json (`source` names it in errors) as Hugging Face reads it: what is
        refused and which defaults apply is hf_checkpoint.read_hf_config's."""
        d, family = read_hf_config(d, {f.name for f in fields(cls)} - _DERIVED, source)
        return cls(**d, model_type=family)

    def to_hf_dict(self):
        # The older spelling (rope_theta + rope_scaling) loads in every transformers version, 4.x and 5.x.
        d = asdict(self)
        for key in _DERIVED:
            del d[key]
        d.update(architectures=[_ARCHITECTURES[self.model_type]], hidden_act="silu", torch_dtype="float32")
        if self.model_type == "llama":
            d.update(attention_bias=False, mlp_bias=False)
        else:  # what HF writes for a Qwen without a sliding window
            d.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_hidden_layers)
            if self.model_type == "qwen3":
                d.update(attention_bias=False)
        return d


# The families this module implements, with (attention_bias, qk_norm) each implies, and the class HF loads.
_FAMILIES = {"llama": (False, False), "qwen2": (True, False), "qwen3": (False, True)}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_DERIVED = {"attention_bias", "qk_norm"}  # fields that model_type implies


# ----------------------------------------------------------------------------------------------------------------
# rotary position embedding


def rope_inv_freq(config):
    """Inverse frequencies in float64, with Llama-3.1 ("llama3") or linear scaling applied."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling, kind = config.rope_scaling, rope_type(config.rope_scaling)
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        # Long wavelengths are slowed down by `factor`, short ones kept, the band in between interpolated smoothly.
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > old_len / low, inv_freq / factor,
                               torch.where(wavelen < old_len / high, inv_freq, blended))
    return inv_freq


def rope_cos_sin(positions, inv_freq, dtype):
    """cos and sin tables of shape (T, head_dim / 2) for integer positions; angles in float64, then cast."""
    angles = positions.to(torch.float64)[:, None] * inv_freq.to(positions.device)[None, :]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate x (T, heads, head_dim); HF's convention pairs dimension i with i + head_dim/2."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def document_positions(cu_seqlens, num_tokens):
    """Position of every token within its own document."""
    starts = cu_seqlens[:-1].long()
    lengths = cu_seqlens[1:].long() - starts
    return torch.arange(num_tokens, device=cu_seqlens.device) - torch.repeat_interleave(starts, lengths,
                                                                                        output_size=num_tokens)


# ----------------------------------------------------------------------------------------------------------------
# the network


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in float32 at least, whatever the compute dtype, as Llama was trained
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                        config.head_dim)
        bias = config.attention_bias  # Qwen2: q, k and v have a bias, o does not
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)
        if config.qk_norm:  # Qwen3: each head's q and k normalised over head_dim (one weight shared by all heads)
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()
        # attention.py's entry points as a small object (a module would defeat copy.deepcopy); replaced, through
        # Llama.attention_ops, by sequence parallelism
        self.ops = attention.DocumentAttention()

    def forward(self, x, cos, sin, docs, cache=None):
        T = x.shape[0]
        q = apply_rope(self.q_norm(self.q_proj(x).view(T, self.n_heads, self.head_dim)), cos, sin)
        k = apply_rope(self.k_norm(self.k_proj(x).view(T, self.n_kv_heads, self.head_dim)), cos, sin)
        v = self.v_proj(x).view(T, self.n_kv_heads, self.head_dim)
        if cache is None:
            out = self.ops.attend(q, k, v, docs)
        else:  # a KVCache (one sequence) or a BatchKVCache (one new token for each of several)
            out = cache.attend(self.layer_idx, q, k, v)
        return self.o_proj(out.reshape(T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, docs, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, docs, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Holds the `model.*` parameters of an HF checkpoint."""

    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Llama(nn.Module):
    def __init__(self, config, cross_document=False):
        super().__init__()
        self.config = config
        self.cross_document = cross_document  # the paper's ablation: no document masks, continuous positions
        self.model = Decoder(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size,
                                                                         bias=False)
        # Tokens per cross-entropy chunk: 4096 x 128,256 fp32 logits = 2 GiB. Measured on 2 CPU cores (hidden 256,
        # 4096 tokens, loss forward+backward): 13.9 s with 4096-token chunks, 15.8 s with 1024, 27.1 s with 64, and
        # 16.2 s for unchunked F.cross_entropy; at hidden 64 all sizes were within 8%. GPUs want large matmuls too.
        self.loss_chunk_size = 4096
        # The summed loss computes its gradients in the forward pass (loss.py): one matmul fewer, at the price of a
        # (vocab x hidden) float32 buffer held until backward. False: backward recomputes the logits instead.
        self.fused_loss = True
        self.attention_backend = None  # None: picked by attention.py from the device
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    def reset_parameters(self):
        """HF's initialisation: normal(0, initializer_range) for matrices, zeros for biases, ones for norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    @property
    def attention_ops(self):
        return self.model.layers[0].self_attn.ops

    @attention_ops.setter
    def attention_ops(self, ops):
        """Swap the attention implementation (an object with `prepare` and `attend`), e.g. Ulysses."""
        for layer in self.model.layers:
            layer.self_attn.ops = ops

    @property
    def head_weight(self):
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids, cu_seqlens=None, position_ids=None, labels=None, reduction="sum"):
        """Logits (T, vocab) without labels; with labels (loss summed or per token, number of valid labels)."""
        input_ids, cu_seqlens, batch_shape = _flatten_batch(input_ids, cu_seqlens)
        hidden = self.hidden_states(input_ids, cu_seqlens, position_ids)
        if labels is None:
            return F.linear(hidden, self.head_weight).view(*batch_shape, -1)
        labels = labels.reshape(-1)
        if labels.device.type == "cpu":
            check_token_ids(labels, self.config.vocab_size, "labels")
        n_valid = (labels != -100).sum()
        if reduction == "sum" and self.fused_loss:
            return fused_cross_entropy(hidden, self.head_weight, labels, self.loss_chunk_size), n_valid
        losses = chunked_cross_entropy(hidden, self.head_weight, labels, self.loss_chunk_size)
        if reduction == "none":
            return losses.view(batch_shape), n_valid
        if reduction != "sum":
            raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
        return losses.sum(), n_valid

    def hidden_states(self, input_ids, cu_seqlens=None, position_ids=None, cache=None):
        """Final-norm hidden states (T, hidden) of a packed 1-D sequence."""
        T = input_ids.shape[0]
        if input_ids.dim() != 1:
            raise ValueError(f"input_ids must be (T,) or (B, T), got shape {tuple(input_ids.shape)}")
        if input_ids.device.type == "cpu":  # on a GPU this would be a host sync per forward: callers check first
            check_token_ids(input_ids, self.config.vocab_size)
        docs = None
        if cache is None:
            docs = self.attention_ops.prepare(cu_seqlens, T, input_ids.device, cross_document=self.cross_document,
                                              backend=self.attention_backend)
        if position_ids is None:
            if cache is not None:
                position_ids = cache.positions(T, input_ids.device)
            elif self.cross_document or cu_seqlens is None:
                position_ids = torch.arange(T, device=input_ids.device)
            else:
                position_ids = document_positions(docs.cu_seqlens, T)
        x = self.model.embed_tokens(input_ids)
        # Not a buffer: `model.to(torch.bfloat16)` would round the frequencies; 64 values cost nothing to redo.
        cos, sin = rope_cos_sin(position_ids.reshape(-1), rope_inv_freq(self.config), x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, docs, cache)
        if cache is not None:
            cache.advance(T)
        return self.model.norm(x)

    # ------------------------------------------------------------------------------------------------------------
    # generation

    def generate(self, prompt_ids, max_new_tokens, *args, **kwargs):
        """Continue one prompt: the new token ids (generation.generate: temperature, top_p, stop_tokens, ...)."""
        return generation.generate(self, prompt_ids, max_new_tokens, *args, **kwargs)

    def generate_batch(self, prompts, max_new_tokens, *args, **kwargs):
        """Continue several prompts at once: for each, what `generate` returns (generation.generate_batch)."""
        return generation.generate_batch(self, prompts, max_new_tokens, *args, **kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # Hugging Face checkpoints

    @classmethod
    def from_pretrained(cls, path_or_hub_id, dtype=torch.float32, device="cpu"):
        path = resolve_checkpoint(path_or_hub_id)
        file = os.path.join(path, "config.json")
        try:
            with open(file) as f:
                d = json.load(f)
        except ValueError as e:
            raise ValueError(f"{file} is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{file} holds a {type(d).__name__}, not a JSON object of config keys")
        config = LlamaConfig.from_hf_dict(d, source=file)
        with torch.device("meta"):
            model = cls(config)
        state = read_safetensors(path)
        expected = {name: p.shape for name, p in model.state_dict().items()}
        for name in list(state):
            if name not in expected:
                # rotary tables saved by old HF versions, and a tied head some checkpoints store anyway
                if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and config.tie_word_embeddings):
                    del state[name]
                else:
                    raise ValueError(f"checkpoint {path} has tensor {name!r}, which a Llama with this config.json "
                                     f"does not have")
        for name, shape in expected.items():
            if name not in state:
                raise ValueError(f"checkpoint {path} is missing tensor {name!r}")
            if state[name].shape != shape:
                raise ValueError(f"checkpoint {path}: tensor {name!r} has shape {tuple(state[name].shape)}, "
                                 f"config.json implies {tuple(shape)}")
        model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True)
        return model

    def save_pretrained(self, path, state_dict=None, dtype=None, max_shard_bytes=5 * 2**30):
        """Write config.json and safetensors (sharded with an index past `max_shard_bytes`) in HF's layout.

        `state_dict` lets a distributed caller pass the gathered full weights (a dict, or (name, tensor) pairs)."""
        state = self.state_dict() if state_dict is None else state_dict
        save_safetensors(state, path, dtype=dtype, max_shard_bytes=max_shard_bytes)
        write_hf_config(self.config, path, dtype or self.head_weight.dtype)


def check_token_ids(ids, vocab_size, what="token ids"):
    """Ids must lie in [0, vocab_size); labels may also be -100 (nothing to predict), and no other negative value:
    cross-entropy would otherwise train a label of -5 towards token 0 without a word."""
    if not ids.numel():
        return
    valid = (ids >= 0) & (ids < vocab_size)
    if what == "labels":
        valid |= ids == -100
    if not bool(valid.all()):
        bad = ids[~valid]
        allowed = "-100 or " if what == "labels" else ""
        raise ValueError(f"{what} must be {allowed}in [0, {vocab_size}) for this model's vocabulary; got "
                         f"{bad.numel()} outside it, from {int(bad.min())} to {int(bad.max())}")


def _flatten_batch(input_ids, cu_seqlens):
    """(B, T) without boundaries is B documents of length T; the model itself works on one packed sequence."""
    if input_ids.dim() == 1:
        return input_ids, cu_seqlens, input_ids.shape
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (T,) or (B, T), got shape {tuple(input_ids.shape)}")
    B, T = input_ids.shape
    if cu_seqlens is None:
        cu_seqlens = torch.arange(0, B * T + 1, T, dtype=torch.int32, device=input_ids.device)
    elif B != 1:
        raise ValueError("with cu_seqlens, input_ids must be one packed sequence: (T,) or (1, T)")
    return input_ids.reshape(-1), cu_seqlens, input_ids.shape


if __name__ == "__main__":
    # Smoke run (`python model.py`): a tiny model, a packed batch of documents, forward + backward through the
    # chunked loss, then KV-cache generation.
    import time
    torch.manual_seed(0)
    model = Llama(LlamaConfig.tiny(num_hidden_layers=4, hidden_size=256, intermediate_size=688))
    lengths = [700, 300, 800, 48, 200]
    ids = torch.randint(0, model.config.vocab_size, (sum(lengths),))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    labels = ids.roll(-1).index_fill(0, cu[1:].long() - 1, -100)  # no prediction across a document boundary
    start = time.perf_counter()
    loss, n = model(ids, cu_seqlens=cu, labels=labels)
    (loss / n).backward()
    elapsed = time.perf_counter() - start
    print(f"tiny Llama, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; packed sequence of "
          f"{len(lengths)} documents, {ids.numel()} tokens")
    print(f"loss {loss.item() / n.item():.4f} (ln vocab = {math.log(model.config.vocab_size):.4f}) over {n.item()} "
          f"labels; forward+backward {ids.numel() / elapsed:,.0f} tokens/s")
    start = time.perf_counter()
    new = model.eval().generate(ids[:500], max_new_tokens=32)
    print(f"generated {len(new)} tokens after a 500-token prompt in {time.perf_counter() - start:.2f} s: {new[:8]} ...")
