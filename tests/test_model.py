"""model.py against Hugging Face transformers' Llama (the reference nobody here wrote)."""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, LlamaForCausalLM  # noqa: E402

from model import Llama, LlamaConfig, chunked_cross_entropy, rope_cos_sin, rope_inv_freq  # noqa: E402

VOCAB = 512
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
CONFIGS = {
    "gqa": dict(num_attention_heads=8, num_key_value_heads=2),
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "tied": dict(tie_word_embeddings=True),
    "theta_8e6": dict(rope_theta=8e6),
    "llama3_scaling": dict(rope_scaling=LLAMA3_SCALING, max_position_embeddings=512),
}


def tiny(**kw):
    # A large init makes attention peaked and logits spread out, so that a wrong position or mask shows; with
    # HF's 0.02 a tiny model attends almost uniformly and RoPE mistakes would hide below the tolerance.
    return LlamaConfig.tiny(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, initializer_range=0.2, **kw)


def hf_twin(model):
    """An HF LlamaForCausalLM built from our config.json dict, holding the same weights."""
    hf_config = transformers.LlamaConfig(**model.config.to_hf_dict())
    hf = LlamaForCausalLM(hf_config).to(next(model.parameters()).dtype).eval()
    result = hf.load_state_dict(model.state_dict(), strict=False)
    # a tied head has no tensor of its own; everything else must match by name
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}
    return hf


@torch.no_grad()
def packed_vs_alone_error(model, reference, lengths, vocab=VOCAB):
    """The largest difference between a packed forward pass over documents of `lengths` and `reference`'s logits
    for each document run alone (shared with test_qwen.py)."""
    ids = torch.randint(0, vocab, (sum(lengths),))
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)
    with torch.no_grad():
        packed = model(ids, cu_seqlens=cu)
    bounds = zip(cu[:-1].tolist(), cu[1:].tolist())
    return max((packed[s:e] - reference(ids[s:e])).abs().max().item() for s, e in bounds)


def hf_logits(hf, ids):
    return hf(ids[None], use_cache=False).logits[0]


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_equal_hf(name):
    model = Llama(tiny(**CONFIGS[name])).eval()
    hf = hf_twin(model)
    ids = torch.randint(0, VOCAB, (300,))  # past original_max_position_embeddings, where llama3 scaling acts
    with torch.no_grad():
        ours = model(ids)
    assert (ours - hf_logits(hf, ids)).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["gqa", "llama3_scaling"])
def test_packed_documents_equal_each_document_alone(name):
    model = Llama(tiny(**CONFIGS[name])).eval()
    hf = hf_twin(model)
    lengths = [37, 1, 120, 64, 78]
    assert packed_vs_alone_error(model, lambda ids: hf_logits(hf, ids), lengths) <= 1e-4
    ids = torch.randint(0, VOCAB, (sum(lengths),))
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32)

    # the paper's no-document-mask ablation: one causal attention over the concatenation, positions continue
    model.cross_document = True
    with torch.no_grad():
        unmasked = model(ids, cu_seqlens=cu)
    assert (unmasked - hf_logits(hf, ids)).abs().max() <= 1e-4


def test_batch_rows_are_separate_documents():
    model = Llama(tiny(**CONFIGS["gqa"])).eval()
    ids = torch.randint(0, VOCAB, (3, 40))
    with torch.no_grad():
        batched = model(ids)
        rows = torch.stack([model(row) for row in ids])
    assert batched.shape == (3, 40, VOCAB)
    assert (batched - rows).abs().max() <= 1e-5


def test_explicit_position_ids_are_used():
    model = Llama(tiny()).eval()
    hf = hf_twin(model)
    ids = torch.randint(0, VOCAB, (50,))
    positions = torch.arange(100, 150)
    with torch.no_grad():
        ours = model(ids, position_ids=positions)
        ref = hf(ids[None], position_ids=positions[None], use_cache=False).logits[0]
    assert (ours - ref).abs().max() <= 1e-4


def test_save_pretrained_loads_in_transformers(tmp_path):
    for name in ("gqa", "tied", "llama3_scaling"):
        model = Llama(tiny(**CONFIGS[name])).eval()
        model.save_pretrained(tmp_path / name)
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
        ids = torch.randint(0, VOCAB, (200,))
        with torch.no_grad():
            assert (model(ids) - hf_logits(hf, ids)).abs().max() <= 1e-4


@pytest.mark.parametrize("shard_size", [None, "200KB"])
def test_hf_save_pretrained_loads_here(tmp_path, shard_size):
    hf = LlamaForCausalLM(transformers.LlamaConfig(**tiny(**CONFIGS["llama3_scaling"]).to_hf_dict())).eval()
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    hf.save_pretrained(tmp_path, **kwargs)
    assert os.path.exists(tmp_path / "model.safetensors.index.json") == bool(shard_size)
    model = Llama.from_pretrained(str(tmp_path)).eval()
    assert model.config.rope_scaling["factor"] == 8.0  # read back from HF 5's `rope_parameters` spelling
    ids = torch.randint(0, VOCAB, (200,))
    with torch.no_grad():
        assert (model(ids) - hf_logits(hf, ids)).abs().max() <= 1e-4


def test_our_sharded_save_round_trips(tmp_path):
    model = Llama(tiny())
    model.save_pretrained(tmp_path, max_shard_bytes=100_000, dtype=torch.bfloat16)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded = Llama.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.to(torch.bfloat16))
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_config_both_rope_spellings():
    old = {"rope_theta": 8e6, "rope_scaling": LLAMA3_SCALING}
    new = {"rope_parameters": {"rope_theta": 8e6, **LLAMA3_SCALING}}
    assert LlamaConfig.from_hf_dict(old) == LlamaConfig.from_hf_dict(new)
    plain = LlamaConfig.from_hf_dict({"rope_parameters": {"rope_theta": 1.28e8, "rope_type": "default"}})
    assert plain.rope_theta == 1.28e8 and plain.rope_scaling is None
    cfg = LlamaConfig.llama3_2_1b()
    assert LlamaConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


def test_presets_have_the_published_shapes():
    with torch.device("meta"):
        n8b = sum(p.numel() for p in Llama(LlamaConfig.llama3_8b()).parameters())
        n1b = sum(p.numel() for p in Llama(LlamaConfig.llama3_2_1b()).parameters())
    assert n8b == 8_030_261_248 and n1b == 1_235_814_400


# ---------------------------------------------------------------------------------------------------------------
# chunked cross-entropy


def test_chunked_loss_and_gradients_equal_full_cross_entropy_float64():
    T, d, V = 70, 16, 97
    hidden = torch.randn(T, d, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, d, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (T,))
    labels[10:30] = -100  # chunks 2 and 3 (size 8: tokens 16..31) have no valid label at all
    labels[-1] = -100
    ours = chunked_cross_entropy(hidden, weight, labels, chunk_size=8)
    assert torch.isfinite(ours).all() and (ours[16:24] == 0).all()
    g = torch.randn(T, dtype=torch.float64)  # per-token upstream gradients exercise reduction="none"
    gh, gw = torch.autograd.grad((ours * g).sum(), (hidden, weight))
    ref = F.cross_entropy(hidden @ weight.T, labels, reduction="none", ignore_index=-100)
    rh, rw = torch.autograd.grad((ref * g).sum(), (hidden, weight))
    assert (ours - ref).abs().max() <= 1e-10
    assert (gh - rh).abs().max() <= 1e-10 and (gw - rw).abs().max() <= 1e-10

    total = chunked_cross_entropy(hidden, weight, labels, chunk_size=8).sum()
    full = F.cross_entropy(hidden @ weight.T, labels, reduction="sum", ignore_index=-100)
    assert abs(total.item() - full.item()) <= 1e-10
    gh, gw = torch.autograd.grad(total, (hidden, weight))
    rh, rw = torch.autograd.grad(full, (hidden, weight))
    assert (gh - rh).abs().max() <= 1e-10 and (gw - rw).abs().max() <= 1e-10


def test_all_ignored_labels_give_zero_loss_and_zero_grad():
    hidden = torch.randn(12, 8, requires_grad=True)
    weight = torch.randn(30, 8, requires_grad=True)
    loss = chunked_cross_entropy(hidden, weight, torch.full((12,), -100), chunk_size=5).sum()
    loss.backward()
    assert loss.item() == 0.0 and (hidden.grad == 0).all() and (weight.grad == 0).all()


def test_model_loss_equals_full_cross_entropy_float64():
    model = Llama(tiny(**CONFIGS["gqa"])).double()
    model.loss_chunk_size = 16
    ids = torch.randint(0, VOCAB, (50,))
    cu = torch.tensor([0, 20, 50], dtype=torch.int32)
    labels = torch.cat([ids[1:20], torch.tensor([-100]), ids[21:], torch.tensor([-100])])
    loss, n = model(ids, cu_seqlens=cu, labels=labels)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    logits = model(ids, cu_seqlens=cu)
    ref = F.cross_entropy(logits, labels, reduction="sum")
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    assert n.item() == 48 and abs(loss.item() - ref.item()) <= 1e-10
    assert max((a - b).abs().max().item() for a, b in zip(grads, ref_grads)) <= 1e-10
    per_token, _ = model(ids, cu_seqlens=cu, labels=labels, reduction="none")
    assert per_token.shape == (50,) and abs(per_token.sum().item() - loss.item()) <= 1e-10


# ---------------------------------------------------------------------------------------------------------------
# RoPE and generation


def test_rope_precision_at_half_a_million_positions():
    cfg = LlamaConfig.llama3_8b(rope_theta=1.28e8)
    position = 524_287
    cos, sin = rope_cos_sin(torch.tensor([position]), rope_inv_freq(cfg), torch.float32)
    d = cfg.head_dim
    ref_angles = [position * cfg.rope_theta ** (-2 * i / d) for i in range(d // 2)]  # Python floats: float64
    assert max(abs(c - math.cos(a)) for c, a in zip(cos[0].tolist(), ref_angles)) <= 1e-6
    assert max(abs(s - math.sin(a)) for s, a in zip(sin[0].tolist(), ref_angles)) <= 1e-6


def generate_without_cache(model, prompt, n, temperature=0.0, generator=None, stop=()):
    from generation import sample_token
    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor(ids))[-1].float()
        token = sample_token(logits, temperature, 1.0, generator)
        if token in stop:
            break
        ids.append(token)
    return ids[len(prompt):]


def test_kv_cache_generation_equals_recomputation():
    model = Llama(tiny(**CONFIGS["gqa"])).double().eval()
    prompt = torch.randint(0, VOCAB, (45,)).tolist()
    greedy = model.generate(prompt, 20, prefill_chunk=16)  # prefill in three chunks, the last one partial
    assert greedy == generate_without_cache(model, prompt, 20)
    sampled = model.generate(prompt, 20, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert sampled == generate_without_cache(model, prompt, 20, 1.0, torch.Generator().manual_seed(3))
    stop = greedy[5]
    stopped = model.generate(prompt, 20, stop_tokens=[stop])
    assert stopped == greedy[:greedy.index(stop)]


def test_generate_batch_equals_generate_per_prompt():
    """Prompts of 3, 17, 40 and 1 tokens decoded together, each row against `generate` on its prompt alone, token for
    token, with stop tokens that end some rows early (the others go on without them) and a prefill chunk of 16, so
    that the long prompts are prefilled in pieces."""
    model = Llama(tiny(**CONFIGS["gqa"])).double().eval()
    prompts = [torch.randint(0, VOCAB, (n,)).tolist() for n in (3, 17, 40, 1)]
    full = [model.generate(p, 20) for p in prompts]
    assert model.generate_batch(prompts, 20) == full
    stops = [full[0][0], full[2][6]]  # row 0 stops at once, row 2 after six tokens
    alone = [model.generate(p, 20, stop_tokens=stops, prefill_chunk=16) for p in prompts]
    assert len(alone[0]) == 0 and 0 < len(alone[2]) <= 6 and max(len(x) for x in alone) == 20
    assert model.generate_batch(prompts, 20, stop_tokens=stops, prefill_chunk=16) == alone
    assert model.generate_batch(prompts[1:2], 20, prefill_chunk=16) == full[1:2]  # a batch of one


def test_generate_batch_sampling():
    """One generator per prompt: each row samples what `generate` samples with that generator. One shared generator:
    the same tokens for the same seed (the rows draw in turn, so not generate's sequences)."""
    model = Llama(tiny(**CONFIGS["gqa"])).double().eval()
    prompts = [torch.randint(0, VOCAB, (n,)).tolist() for n in (3, 17, 40)]
    alone = [model.generate(p, 15, temperature=1.0, top_p=0.9, stop_tokens=[5, 6],
                            generator=torch.Generator().manual_seed(i)) for i, p in enumerate(prompts)]
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    assert model.generate_batch(prompts, 15, 1.0, 0.9, [5, 6], generator=gens) == alone
    shared = [model.generate_batch(prompts, 15, 1.0, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert shared[0] == shared[1] and [len(x) for x in shared[0]] == [15, 15, 15]


def test_top_p_keeps_only_the_nucleus():
    from generation import sample_token
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(0)
    draws = {sample_token(logits, 1.0, 0.7, g) for _ in range(200)}
    assert draws == {0, 1}


# ---------------------------------------------------------------------------------------------------------------
# errors a user can cause: one clear line each


def one_line_error(exc_type, fn, *match):
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for m in match:
        assert m in message, message


def test_bad_cu_seqlens():
    model = Llama(tiny())
    ids = torch.randint(0, VOCAB, (30,))
    one_line_error(ValueError, lambda: model(ids, cu_seqlens=torch.tensor([0, 10, 20], dtype=torch.int32)),
                   "cu_seqlens", "30")
    one_line_error(ValueError, lambda: model(ids, cu_seqlens=torch.tensor([0, 20, 10, 30], dtype=torch.int32)),
                   "cu_seqlens")
    one_line_error(ValueError, lambda: model(torch.tensor([VOCAB])), "vocabulary")


def test_labels_other_than_minus_100_or_a_token_are_refused():
    """A label of -5 would be clamped to token 0 and trained towards it without a word; -100 alone means 'none'."""
    model = Llama(tiny())
    ids = torch.randint(0, VOCAB, (30,))
    labels = ids.roll(-1)
    labels[:5] = -100
    model(ids, labels=labels)  # -100 is fine
    for bad in (-5, -101, VOCAB):
        wrong = labels.clone()
        wrong[7] = bad
        one_line_error(ValueError, lambda: model(ids, labels=wrong), "labels must be -100 or in", str(bad))


def test_heads_not_divisible():
    one_line_error(ValueError, lambda: tiny(num_attention_heads=6, num_key_value_heads=4), "divisible")


def test_unknown_config_key_names_the_closest():
    one_line_error(ValueError, lambda: LlamaConfig.from_hf_dict({"num_hidden_layer": 2}), "num_hidden_layer",
                   "num_hidden_layers")
    one_line_error(ValueError, lambda: LlamaConfig.from_hf_dict({"model_type": "mistral"}), "model_type")


def test_broken_checkpoints(tmp_path):
    from safetensors.torch import load_file, save_file
    model = Llama(tiny())
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")

    missing = dict(weights)
    del missing["model.layers.1.mlp.up_proj.weight"]
    save_file(missing, tmp_path / "model.safetensors")
    one_line_error(ValueError, lambda: Llama.from_pretrained(str(tmp_path)), "missing",
                   "model.layers.1.mlp.up_proj.weight")

    wrong = dict(weights)
    wrong["model.norm.weight"] = torch.ones(3)
    save_file(wrong, tmp_path / "model.safetensors")
    one_line_error(ValueError, lambda: Llama.from_pretrained(str(tmp_path)), "model.norm.weight", "shape")

    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    one_line_error(ValueError, lambda: Llama.from_pretrained(str(tmp_path)), "model.safetensors")

    one_line_error(FileNotFoundError, lambda: Llama.from_pretrained(str(tmp_path / "nowhere")), "nowhere")
    os.remove(tmp_path / "config.json")
    one_line_error(FileNotFoundError, lambda: Llama.from_pretrained(str(tmp_path)), "config.json")
