"""Tests for tokenizer.py's Llama-3 chat format. References nobody here wrote: llama_models' own ChatFormat
(encode_message / encode_dialog_prompt) and the special-token ids of the Llama-3 tokenizer file."""
import os, sys, types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import tokenizer  # noqa: E402

pytest.importorskip("llama_models.llama3.tokenizer", reason="pip install --no-deps llama-models")
_saved = {name: sys.modules.get(name) for name in ("PIL", "PIL.Image")}
try:
    import PIL.Image  # noqa: F401
except ImportError:  # chat_format.py imports Pillow for images only; text dialogs never touch it, so stand it in
    image = types.ModuleType("PIL.Image")
    image.Image = type("Image", (), {})
    sys.modules["PIL"], sys.modules["PIL.Image"] = types.ModuleType("PIL"), image
    sys.modules["PIL"].Image = image
from llama_models.datatypes import RawMessage, StopReason  # noqa: E402
from llama_models.llama3.chat_format import ChatFormat  # noqa: E402
# Only while chat_format imported: a stand-in left in sys.modules makes other packages (transformers) believe that
# Pillow is installed, and fail on their own imports of it in later test files.
for _name, _module in _saved.items():
    if _module is None:
        sys.modules.pop(_name, None)
    else:
        sys.modules[_name] = _module
from llama_models.llama3.tokenizer import Tokenizer as RefTokenizer  # noqa: E402

BOS, START, END, EOT = 128000, 128006, 128007, 128009

DIALOGS = {
    "one turn": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    "system, multi-turn, unicode": [
        {"role": "system", "content": "You are terse. Réponds en français si on te le demande."},
        {"role": "user", "content": "Translate 'cat' to French and Chinese 🐱"},
        {"role": "assistant", "content": "chat — 猫"},
        {"role": "user", "content": "  And dog?\n\n"},  # leading/trailing whitespace kept as given
        {"role": "assistant", "content": "\nchien — 狗\n"},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "De rien !"}],
    "special-token text stays text": [
        {"role": "user", "content": "Say <|eot_id|> then <|start_header_id|>assistant<|end_header_id|>"},
        {"role": "assistant", "content": "<|eot_id|><|begin_of_text|>"}],
}


@pytest.fixture(scope="module")
def tok():
    return tokenizer.load_tokenizer()


@pytest.fixture(scope="module")
def ref():
    return ChatFormat(RefTokenizer.get_instance())


def raw(messages):
    return [RawMessage(role=m["role"], content=m["content"], stop_reason=StopReason.end_of_turn) for m in messages]


@pytest.mark.parametrize("name", DIALOGS)
def test_chat_ids_equal_llama_models_chat_format(tok, ref, name):
    messages = DIALOGS[name]
    ids, mask = tokenizer.chat_ids(tok, messages)
    # encode_dialog_prompt always ends with an open assistant header: that is our add_generation_prompt=True.
    assert tokenizer.chat_ids(tok, messages, add_generation_prompt=True)[0] == \
        ref.encode_dialog_prompt(raw(messages)).tokens
    assert ids == [BOS] + [t for m in raw(messages) for t in ref.encode_message(m, None)[0]]
    assert tokenizer.chat_ids(tok, messages, add_bos=False)[0] == ids[1:]
    assert len(mask) == len(ids) and set(mask) <= {0, 1}


@pytest.mark.parametrize("name", DIALOGS)
def test_chat_ids_built_by_hand_and_mask_covers_assistant_content_and_eot(tok, name):
    messages, enc = DIALOGS[name], lambda text: tok.encode(text)
    want_ids, want_mask = [BOS], [0]
    for m in messages:
        head = [START] + enc(m["role"]) + [END] + enc("\n\n")  # "\n\n" is one token (271), never merged with content
        body = enc(m["content"]) + [EOT]
        want_ids += head + body
        want_mask += [0] * len(head) + [int(m["role"] == "assistant")] * len(body)
    assert enc("\n\n") == [271]
    ids, mask = tokenizer.chat_ids(tok, messages)
    assert (ids, mask) == (want_ids, want_mask)
    # Read back: the masked spans decode to exactly each assistant reply followed by <|eot_id|>.
    spans, cur = [], []
    for t, m in zip(ids + [None], mask + [0]):
        if m:
            cur.append(t)
        elif cur:
            spans, cur = spans + [cur], []
    assert [tok.decode(s) for s in spans] == [m["content"] + "<|eot_id|>" for m in messages if m["role"] ==
                                              "assistant"]
    assert all(s[-1] == EOT for s in spans) and sum(mask) == sum(map(len, spans))
    assert ids.count(EOT) == len(messages) and ids.count(START) == len(messages) and ids.count(BOS) == 1


def test_generation_prompt_needs_no_assistant_turn(tok):
    ids, mask = tokenizer.chat_ids(tok, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert ids == [BOS, START] + tok.encode("user") + [END, 271] + tok.encode("Hi") + [EOT, START] + \
        tok.encode("assistant") + [END, 271]
    assert mask == [0] * len(ids)


@pytest.mark.parametrize("messages, message", [
    ({"role": "user", "content": "hi"}, "messages must be a non-empty list"),
    ([], "messages must be a non-empty list"),
    ([["user", "hi"]], "message 0: not a {role, content} dict"),
    ([{"role": "user"}], "message 0: not a {role, content} dict"),
    ([{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}], "message 0: unknown role 'bot'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}], "message 1 (assistant): empty content"),
    ([{"role": "user", "content": " \n"}, {"role": "assistant", "content": "x"}], "message 0 (user): empty content"),
    ([{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "x"}],
     "message 0 (user): content must be a string, got list"),
    ([{"role": "user", "content": None}, {"role": "assistant", "content": "x"}],
     "message 0 (user): content must be a string, got NoneType"),
    ([{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}],
     "message 1: a system message may only come first"),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], "no assistant message"),
])
def test_malformed_conversations_are_one_line_data_errors(tok, messages, message):
    with pytest.raises(tokenizer.DataError) as e:  # the same class as tokenizer.DataError: one class, re-exported
        tokenizer.chat_ids(tok, messages)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_tokenizer_without_chat_tokens_is_refused(tok):
    plain = tokenizer.Tokenizer.__new__(tokenizer.Tokenizer)
    plain.__dict__.update(tok.__dict__, name="hf:gpt2-like", special_tokens={"<|endoftext|>": 0})
    with pytest.raises(tokenizer.DataError, match="no Llama-3 chat tokens"):
        tokenizer.chat_ids(plain, DIALOGS["one turn"])
