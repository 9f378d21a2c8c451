"""Real checkpoints' config.json files through LlamaConfig.from_hf_dict (fixtures and their sources:
fixtures/configs/).

A config.json carries metadata next to the numbers (`_name_or_path`, `unk_token_id`, `auto_map` ...): it must
load. A key that would change the computation and is not implemented must be refused in one line that names
it.
"""
import json
import os

import pytest
import torch

from model import Llama, LlamaConfig

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "configs")
LLAMA3_1 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"}
LLAMA3_2 = {**LLAMA3_1, "factor": 32.0}

LLAMA3_8B = dict(tie_word_embeddings=False, head_dim=128, num_attention_heads=32, num_key_value_heads=8)
SMOLLM2 = dict(rope_theta=100000, rope_scaling=None, tie_word_embeddings=True, head_dim=64,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, hidden_size=576,
               vocab_size=49152, eos_token_id=0)

# fixture -> what a reader of that checkpoint must get
EXPECTED = {
    "meta-llama--Meta-Llama-3-8B-Instruct.json": dict(
        LLAMA3_8B, rope_theta=500000.0, rope_scaling=None, max_position_embeddings=8192, hidden_size=4096,
        vocab_size=128256, eos_token_id=128009),
    "meta-llama--Meta-Llama-3-8B-Instruct.resaved-4.39.3.json": dict(
        LLAMA3_8B, rope_theta=500000.0, rope_scaling=None, max_position_embeddings=8192, hidden_size=4096,
        vocab_size=128256, eos_token_id=128001),
    "meta-llama--Llama-3.1-8B.json": dict(
        LLAMA3_8B, rope_theta=500000.0, rope_scaling=LLAMA3_1, max_position_embeddings=131072,
        hidden_size=4096, vocab_size=128256),
    "meta-llama--Llama-3.2-1B.json": dict(
        rope_theta=500000.0, rope_scaling=LLAMA3_2, tie_word_embeddings=True, head_dim=64,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, hidden_size=2048,
        num_hidden_layers=16),
    "princeton-nlp--Llama-3-8B-ProLong-512k-Instruct.RECONSTRUCTED.json": dict(
        LLAMA3_8B, rope_theta=1.28e8, rope_scaling=None, max_position_embeddings=524288),
    "HuggingFaceTB--SmolLM2-135M.json": SMOLLM2,
    "HuggingFaceTB--SmolLM2-135M.resaved-transformers-5.17.json": SMOLLM2,  # the same numbers after a re-save
    "TinyLlama--TinyLlama-1.1B-Chat-v1.0.json": dict(
        rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=False, head_dim=64, num_attention_heads=32,
        num_key_value_heads=4, max_position_embeddings=2048, num_hidden_layers=22, vocab_size=32000,
        bos_token_id=1),
    "transformers5--tiny-llama3.json": dict(  # head_dim 32 although hidden_size // heads is 16
        rope_theta=500000.0, rope_scaling=LLAMA3_1, tie_word_embeddings=False, head_dim=32,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072, hidden_size=64,
        eos_token_id=[2, 3]),
}


def fixture(name):
    with open(os.path.join(HERE, name)) as f:
        return json.load(f)


def refused(d, *words):
    """from_hf_dict(d) raises a one-line ValueError containing every word."""
    with pytest.raises(ValueError) as info:
        LlamaConfig.from_hf_dict(d)
    message = str(info.value)
    assert "\n" not in message, message
    for w in words:
        assert w in message, message
    return message


def test_every_fixture_is_listed():
    assert sorted(n for n in os.listdir(HERE) if n.endswith(".json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_configs_load_with_their_numbers(name):
    config = LlamaConfig.from_hf_dict(fixture(name))
    for key, value in EXPECTED[name].items():
        assert getattr(config, key) == value, key


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_we_read_what_transformers_reads(name):
    transformers = pytest.importorskip("transformers")
    d = fixture(name)
    ours, theirs = LlamaConfig.from_hf_dict(d), transformers.LlamaConfig.from_dict(d)
    if hasattr(theirs, "rope_parameters"):  # transformers 5: theta and scaling in one dict
        params = dict(theirs.rope_parameters)
        theta = params.pop("rope_theta")
        scaling = params if params.get("rope_type") != "default" else None
    else:
        theta, scaling = theirs.rope_theta, theirs.rope_scaling
    assert (ours.rope_theta, ours.rope_scaling) == (theta, scaling)
    for key in ["head_dim", "num_key_value_heads", "num_attention_heads", "hidden_size", "intermediate_size",
                "num_hidden_layers", "vocab_size", "max_position_embeddings", "rms_norm_eps",
                "tie_word_embeddings", "bos_token_id", "eos_token_id"]:
        assert getattr(ours, key) == getattr(theirs, key), key


def test_absent_keys_take_transformers_defaults():
    transformers = pytest.importorskip("transformers")
    d = {"hidden_size": 512, "num_attention_heads": 16, "num_hidden_layers": 2}  # no kv heads, theta, eps ...
    ours, theirs = LlamaConfig.from_hf_dict(d), transformers.LlamaConfig.from_dict(d)
    assert ours.num_key_value_heads == theirs.num_key_value_heads == 16
    assert ours.head_dim == theirs.head_dim == 32
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"] == 10000.0
    for key in ["rms_norm_eps", "vocab_size", "intermediate_size", "max_position_embeddings", "bos_token_id"]:
        assert getattr(ours, key) == getattr(theirs, key), key
    assert LlamaConfig.from_hf_dict({**d, "num_key_value_heads": None}).num_key_value_heads == 16


# One key flipped in a real config: each changes the computation and is not implemented here.
MATH_CHANGING = {
    "attention_bias": True,
    "mlp_bias": True,
    "sliding_window": 4096,
    "use_sliding_window": True,
    "model_type": "mistral",
    "hidden_act": "gelu",
    "pretraining_tp": 2,
    "attention_dropout": 0.1,
    "rope_interleaved": True,
    "attn_logit_softcapping": 50.0,  # not metadata that anyone listed: refused although HF's Llama ignores it
    "layer_types": ["full_attention"] * 32,
}


@pytest.mark.parametrize("key", sorted(MATH_CHANGING))
def test_math_changing_key_is_refused(key):
    d = {**fixture("meta-llama--Llama-3.1-8B.json"), key: MATH_CHANGING[key]}
    refused(d, repr(key)[1:-1], repr(MATH_CHANGING[key]), "not implemented")


@pytest.mark.parametrize("kind", ["yarn", "dynamic", "longrope", "su"])
def test_other_rope_types_are_refused_in_both_spellings(kind):
    scaling = {"rope_type": kind, "factor": 4.0, "original_max_position_embeddings": 8192}
    old = {**fixture("meta-llama--Llama-3.1-8B.json"), "rope_scaling": scaling}
    refused(old, "rope_scaling", repr(kind), "not implemented")
    new = fixture("transformers5--tiny-llama3.json")
    new["rope_parameters"] = {**scaling, "rope_theta": 500000.0}
    refused(new, "rope_parameters", repr(kind), "not implemented")


def test_rope_parameters_we_would_not_apply_are_refused():
    d = fixture("HuggingFaceTB--SmolLM2-135M.resaved-transformers-5.17.json")
    d["rope_parameters"]["partial_rotary_factor"] = 0.5
    refused(d, "rope_parameters", "partial_rotary_factor", "not implemented")
    d = fixture("meta-llama--Llama-3.1-8B.json")
    del d["rope_scaling"]["low_freq_factor"]
    refused(d, "rope_scaling", "low_freq_factor", "missing")


def test_unknown_key_is_refused_even_when_null():
    # A key nobody listed might be a new feature switched off or on: it is never guessed at.
    refused({**fixture("TinyLlama--TinyLlama-1.1B-Chat-v1.0.json"), "qk_norm": None}, "qk_norm",
            "not implemented")


# Keys real checkpoints carry that do not change the computation.
METADATA = {
    "_name_or_path": "/scratch/ckpt/step-1000", "_commit_hash": "4e20de362430cd3b72f300e6b0f18e50e7166e08",
    "_attn_implementation_autoset": True, "unk_token_id": 0, "pad_token_id": 128004, "sep_token_id": None,
    "auto_map": {"AutoModelForCausalLM": "modeling_llama.LlamaForCausalLM"},
    "quantization_config": {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0},
    "torch_dtype": "bfloat16", "dtype": "bfloat16", "transformers_version": "4.45.0", "use_cache": False,
    "pretraining_tp": 1, "attention_dropout": 0, "sliding_window": None, "use_sliding_window": False,
    "rope_interleaved": False, "is_llama_config": True, "tokenizer_class": "PreTrainedTokenizerFast",
    "temperature": 0.6, "top_p": 0.9, "max_length": 4096, "output_attentions": False,
    "id2label": {"0": "LABEL_0"},
    "transformers.js_config": {"dtype": "q4"},
}


def test_metadata_loads_and_changes_nothing():
    base = fixture("meta-llama--Llama-3.1-8B.json")
    for key, value in METADATA.items():
        assert LlamaConfig.from_hf_dict({**base, key: value}) == LlamaConfig.from_hf_dict(base), key
    assert LlamaConfig.from_hf_dict({**base, **METADATA}) == LlamaConfig.from_hf_dict(base)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_round_trip_is_exact(name):
    config = LlamaConfig.from_hf_dict(fixture(name))
    written = json.loads(json.dumps(config.to_hf_dict()))  # as it goes through a config.json
    assert LlamaConfig.from_hf_dict(written) == config
    assert "rope_theta" in written and "rope_scaling" in written  # as transformers 4 and 5 both read it


@pytest.mark.parametrize("preset", ["llama3_8b", "llama3_2_1b", "tiny"])
def test_presets_round_trip(preset):
    config = getattr(LlamaConfig, preset)()
    assert LlamaConfig.from_hf_dict(json.loads(json.dumps(config.to_hf_dict()))) == config


def test_transformers_reads_what_we_write():
    transformers = pytest.importorskip("transformers")
    config = LlamaConfig.from_hf_dict(fixture("transformers5--tiny-llama3.json"))
    theirs = transformers.LlamaConfig.from_dict(config.to_hf_dict())
    assert {**theirs.rope_parameters} == {**config.rope_scaling, "rope_theta": config.rope_theta}
    assert (theirs.head_dim, theirs.num_key_value_heads) == (config.head_dim, config.num_key_value_heads)


def test_checkpoint_with_hub_metadata_loads(tmp_path):
    """What `evaluate.py --ckpt DIR` does first: a checkpoint whose config.json has a real config's
    metadata."""
    model = Llama(LlamaConfig.tiny(vocab_size=128, bos_token_id=1, eos_token_id=[2, 3])).eval()
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, **METADATA}))
    loaded = Llama.from_pretrained(str(tmp_path)).eval()
    assert loaded.config == model.config
    ids = torch.randint(0, 128, (40,))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    path.write_text(json.dumps({**saved, **METADATA, "attention_bias": True}))
    with pytest.raises(ValueError, match="attention_bias=True, which is not implemented"):
        Llama.from_pretrained(str(tmp_path))
