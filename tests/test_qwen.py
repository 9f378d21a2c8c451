"""model.py's Qwen2/Qwen2.5 and Qwen3 against transformers' Qwen2ForCausalLM and Qwen3ForCausalLM (float64), and
the config.json texts of real Qwen checkpoints (fixtures/qwen_configs/, sources in its README)."""
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM  # noqa: E402

from model import Llama, LlamaConfig  # noqa: E402
from test_model import packed_vs_alone_error  # noqa: E402

VOCAB = 512
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "qwen_configs")
CONFIGS = {  # name: (family, LlamaConfig.tiny overrides)
    "qwen2_gqa": ("qwen2", dict(num_attention_heads=8, num_key_value_heads=2)),
    "qwen2_tied": ("qwen2", dict(tie_word_embeddings=True)),
    "qwen2_head_dim": ("qwen2", dict(head_dim=32)),  # 4 heads x 32 != hidden 64
    "qwen3_gqa_head_dim": ("qwen3", dict(num_attention_heads=8, num_key_value_heads=2, head_dim=32)),
    "qwen3_tied": ("qwen3", dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "qwen3_theta": ("qwen3", dict(rope_theta=1e6, head_dim=8)),
}


def tiny(name):
    family, overrides = CONFIGS[name]
    return LlamaConfig.tiny(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, initializer_range=0.2,
                            model_type=family, **overrides)


def random_model(name):
    """A float64 model whose biases and q/k norm weights are random too (HF initialises them to 0 and 1, where a
    forgotten bias or norm would not show)."""
    torch.manual_seed(0)
    model = Llama(tiny(name)).double().eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias"):
                p.normal_(0, 0.5)
            elif pname.endswith(("q_norm.weight", "k_norm.weight")):
                p.uniform_(0.5, 1.5)
    return model


def hf_twin(model, exact_rope=True):
    hf_config = AutoConfig.for_model(**model.config.to_hf_dict())
    cls = {"qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM}[model.config.model_type]
    hf = cls(hf_config).double().eval()
    result = hf.load_state_dict(model.state_dict(), strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}
    if exact_rope:
        float64_rope_and_norms(hf)
    return hf


def float64_rope_and_norms(hf):
    """transformers computes RoPE's angles and RMSNorm in float32 whatever the model's dtype (about 1e-5 off in
    the logits here); for a float64 identity its own formulas (default RoPE; weight * x / rms(x)) are redone in
    float64. Everything else (where the biases, q/k norms and RoPE go, attention, GQA, MLP) stays its code."""
    for module in hf.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = lambda x, m=module: m.weight * x * torch.rsqrt(
                x.pow(2).mean(-1, keepdim=True) + m.variance_epsilon)
    rotary, cfg = hf.model.rotary_emb, hf.config
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inv_freq = 1.0 / cfg.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)

    def forward(x, position_ids, *args, **kwargs):
        freqs = position_ids.to(torch.float64)[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    rotary.forward = forward


@torch.no_grad()
def hf_logits(hf, ids):
    return hf(ids[None], use_cache=False).logits[0]


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_equal_hf(name):
    model = random_model(name)
    hf = hf_twin(model)
    names = set(dict(model.named_parameters()))
    if model.config.attention_bias:
        assert {"model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.v_proj.bias"} <= names
        assert "model.layers.0.self_attn.o_proj.bias" not in names
    if model.config.qk_norm:
        assert {"model.layers.1.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight"} <= names
    ids = torch.randint(0, VOCAB, (200,))
    with torch.no_grad():
        ours = model(ids)
    assert (ours - hf_logits(hf, ids)).abs().max() <= 1e-10
    # and against transformers exactly as it is, float32 RoPE angles included
    assert (ours - hf_logits(hf_twin(model, exact_rope=False), ids)).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["qwen2_gqa", "qwen3_gqa_head_dim"])
def test_packed_documents_equal_each_document_alone(name):
    model = random_model(name)
    hf = hf_twin(model)
    assert packed_vs_alone_error(model, lambda ids: hf_logits(hf, ids), [37, 1, 90, 64]) <= 1e-10


@pytest.mark.parametrize("name", ["qwen2_tied", "qwen3_gqa_head_dim"])
def test_save_pretrained_loads_in_transformers(tmp_path, name):
    model = random_model(name)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == model.config.model_type and "qk_norm" not in saved
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    float64_rope_and_norms(hf)
    assert type(hf).__name__ == {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[saved["model_type"]]
    ids = torch.randint(0, VOCAB, (120,))
    with torch.no_grad():
        assert (model(ids) - hf_logits(hf, ids)).abs().max() <= 1e-10
    back = Llama.from_pretrained(str(tmp_path), dtype=torch.float64)
    assert back.config == model.config
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_hf_save_pretrained_loads_here(tmp_path, family):
    name = {"qwen2": "qwen2_gqa", "qwen3": "qwen3_gqa_head_dim"}[family]
    hf = hf_twin(random_model(name))
    hf.save_pretrained(tmp_path)  # transformers 5 writes rope_parameters, layer_types, dtype
    model = Llama.from_pretrained(str(tmp_path), dtype=torch.float64).eval()
    assert model.config.model_type == family
    ids = torch.randint(0, VOCAB, (100,))
    with torch.no_grad():
        assert (model(ids) - hf_logits(hf, ids)).abs().max() <= 1e-10


def test_training_reaches_biases_and_qk_norms():
    for name in ("qwen2_gqa", "qwen3_tied"):
        model = random_model(name).float().train()
        ids = torch.randint(0, VOCAB, (64,))
        loss, n = model(ids, labels=ids.roll(-1))
        (loss / n).backward()
        for pname, p in model.named_parameters():
            if pname.endswith(("_proj.bias", "q_norm.weight", "k_norm.weight")):
                assert p.grad is not None and p.grad.abs().sum() > 0, pname


# ---------------------------------------------------------------------------------------------------------------
# config.json of real checkpoints

REAL = {  # fixture: (family, hidden, layers, heads, kv heads, head_dim, tied, theta, max positions, vocab)
    "Qwen--Qwen2.5-0.5B.json": ("qwen2", 896, 24, 14, 2, 64, True, 1e6, 32768, 151936),
    "Qwen--Qwen2.5-1.5B.resaved-transformers-5.17.json": ("qwen2", 1536, 28, 12, 2, 128, True, 1e6, 131072, 151936),
    "Qwen--Qwen2.5-7B.json": ("qwen2", 3584, 28, 28, 4, 128, False, 1e6, 131072, 152064),
    "Qwen--Qwen3-0.6B.json": ("qwen3", 1024, 28, 16, 8, 128, True, 1e6, 40960, 151936),
    "Qwen--Qwen3-8B.json": ("qwen3", 4096, 36, 32, 8, 128, False, 1e6, 40960, 151936),
    "Qwen--Qwen3-8B.resaved-4.57.1.json": ("qwen3", 4096, 36, 32, 8, 128, False, 1e6, 40960, 151936),
}


def read_fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


@pytest.mark.parametrize("name", REAL)
def test_real_qwen_configs_load(name):
    c = LlamaConfig.from_hf_dict(read_fixture(name))
    family, hidden, layers, heads, kv, head_dim, tied, theta, max_pos, vocab = REAL[name]
    assert (c.model_type, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim, c.tie_word_embeddings, c.rope_theta, c.max_position_embeddings, c.vocab_size) == REAL[name]
    assert (c.attention_bias, c.qk_norm) == (family == "qwen2", family == "qwen3")
    assert c.rope_scaling is None and c.rms_norm_eps == 1e-6 and c.bos_token_id == 151643
    assert LlamaConfig.from_hf_dict(c.to_hf_dict()) == c


@pytest.mark.parametrize("name", ["Qwen--Qwen2.5-7B.json", "Qwen--Qwen3-8B.json", "Qwen--Qwen3-0.6B.json"])
def test_real_qwen_shapes_equal_transformers(name):
    d = read_fixture(name)
    with torch.device("meta"):
        ours = Llama(LlamaConfig.from_hf_dict(d))
        hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(**d))
    theirs = {k: v.shape for k, v in hf.state_dict().items()}
    if ours.config.tie_word_embeddings:
        del theirs["lm_head.weight"]  # the tied head, which HF lists and we do not
    assert {k: v.shape for k, v in ours.state_dict().items()} == theirs
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())


def test_qwen_defaults_are_transformers_defaults():
    # a key config.json leaves out takes Qwen's default, not Llama's: Qwen3's head_dim is 128 whatever hidden/heads
    c = LlamaConfig.from_hf_dict({"model_type": "qwen3", "hidden_size": 64, "num_attention_heads": 4})
    hf = transformers.Qwen3Config(hidden_size=64, num_attention_heads=4)
    assert c.head_dim == hf.head_dim == 128
    assert (c.vocab_size, c.intermediate_size, c.max_position_embeddings, c.rms_norm_eps) == \
        (hf.vocab_size, hf.intermediate_size, hf.max_position_embeddings, hf.rms_norm_eps)
    c2 = LlamaConfig.from_hf_dict({"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4})
    assert c2.head_dim == 16 and c2.num_key_value_heads == 4 and c2.rope_theta == 10000.0


def test_sliding_window_refused_only_when_used():
    base = read_fixture("Qwen--Qwen2.5-7B.json")  # sliding_window 131072, use_sliding_window false: plain
    assert LlamaConfig.from_hf_dict(base).model_type == "qwen2"
    # switched on, but max_window_layers (28) covers all 28 layers: no layer slides, as in HF
    assert LlamaConfig.from_hf_dict({**base, "use_sliding_window": True}).model_type == "qwen2"
    with pytest.raises(ValueError, match=r"^cfg.json has use_sliding_window=true .* on 24 of 28 layers"):
        LlamaConfig.from_hf_dict({**base, "use_sliding_window": True, "max_window_layers": 4}, source="cfg.json")
    types = ["full_attention"] * 27 + ["sliding_attention"]
    with pytest.raises(ValueError, match="sliding-window attention is not implemented"):
        LlamaConfig.from_hf_dict({**base, "use_sliding_window": True, "layer_types": types})
    assert LlamaConfig.from_hf_dict({**base, "layer_types": types})  # window off: the type changes nothing
    with pytest.raises(ValueError, match="only full_attention layers"):
        LlamaConfig.from_hf_dict({**base, "layer_types": ["linear_attention"] * 28})


@pytest.mark.parametrize("change, message", [
    ({"attention_bias": True}, "attention_bias=True, which is not implemented"),  # Qwen3's would bias o_proj
    ({"model_type": "qwen2", "use_mrope": True}, "use_mrope=True, which is not implemented"),
    ({"model_type": "qwen2_moe"}, "model_type='qwen2_moe', which is not implemented"),
    ({"qk_norm": True}, "unknown config key 'qk_norm'"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu', which is not implemented"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}},
     "rope type 'yarn' is not implemented"),
])
def test_math_changing_qwen_keys_refused(change, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig.from_hf_dict({**read_fixture("Qwen--Qwen3-0.6B.json"), **change})


def test_dual_chunk_attention_settings_are_ignored_as_transformers_does():
    # Qwen2.5-7B-Instruct-1M's config.json (not found in full; these are its DCA lines as quoted publicly): vLLM's
    # inference-time chunking, which transformers' Qwen2 does not read
    dca = {"dual_chunk_attention_config": {"chunk_size": 262144, "local_size": 8192,
                                           "original_max_position_embeddings": 262144},
           "max_position_embeddings": 1010000, "rope_theta": 10000000.0}
    c = LlamaConfig.from_hf_dict({**read_fixture("Qwen--Qwen2.5-7B.json"), **dca})
    assert c.rope_theta == 1e7 and c.max_position_embeddings == 1010000


def test_families_and_switches_must_agree():
    assert (LlamaConfig.tiny(model_type="qwen2").attention_bias, LlamaConfig.tiny(model_type="qwen3").qk_norm) == \
        (True, True)
    with pytest.raises(ValueError, match="model_type 'qwen2' means attention_bias=True"):
        LlamaConfig.tiny(model_type="qwen2", attention_bias=False)
    with pytest.raises(ValueError, match="model_type 'llama' means attention_bias=False and qk_norm=False"):
        LlamaConfig.tiny(qk_norm=True)
    with pytest.raises(ValueError, match="model_type 'gemma' is not implemented"):
        LlamaConfig.tiny(model_type="gemma")


@pytest.mark.parametrize("key, value, what", [
    ("hidden_size", "64", "a positive integer"), ("num_hidden_layers", 2.0, "a positive integer"),
    ("head_dim", 0, "a positive integer"), ("tie_word_embeddings", "false", "true or false"),
    ("rope_theta", "1e6", "a positive number"), ("rms_norm_eps", True, "a positive number"),
    ("eos_token_id", [151643, "x"], "an integer token id, a list of them, or null"),
    ("rope_scaling", "llama3", "an object or null"),
    ("vocab_size", None, "a positive integer"),
])
def test_config_value_types_are_checked(tmp_path, key, value, what):
    d = {**read_fixture("Qwen--Qwen3-0.6B.json"), key: value}
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError) as e:
        Llama.from_pretrained(str(tmp_path))
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'config.json'}: {key} must be {what}, got {json.dumps(value)}")
    assert "\n" not in message
