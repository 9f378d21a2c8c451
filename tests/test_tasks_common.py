"""tasks/common.py: HELMET's metrics (utils.py), its reading of .jsonl files, and prompt assembly with its one cut of
the context, checked against HELMET's definitions written out here, llama_models' own offsets and Llama-3
Instruct's chat template rendered by jinja2."""
import dataclasses
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import UserError  # noqa: E402
from tasks import TASKS  # noqa: E402
from tasks import common as tc  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "helmet")


@pytest.fixture(scope="module")
def tok():
    from tokenizer import load_tokenizer
    return load_tokenizer(None)  # the real Llama-3 tokenizer (llama-models package), offline


def prompt_text(task, rec, tok):
    """The production prompt of a record (the task's fields through encode_prompt), as text: BOS first, and
    Llama-3's decode inverts its encode, so this is exactly the string the model is given."""
    spec = TASKS[task]
    ids = tc.encode_prompt(spec, spec.prompt(rec), tok)
    assert ids[0] == tok.bos_id and tok.bos_id not in ids[1:]
    return tok.decode(ids[1:])


def template_prompt(task, fields):
    """HELMET's completion prompt written out: user template, separator, system template."""
    user, system = TASKS[task].templates
    return user.format(**fields) + TASKS[task].sep + system.format(**fields)

# ------------------------------------------------------------------------------------------------------------
# 1b. metrics on edge cases (HELMET's definitions)


@pytest.mark.parametrize("text, normalized", [
    ("The Cat!", "cat"), ("  an  apple,  a day ", "apple day"), ("theater another", "theater another"),
    ("A", ""), ("U.S.A.", "usa"), ("Rock-'n'-roll", "rocknroll"), ("THE\tEnd\n", "end"), ("the-end", "theend"),
])
def test_normalize_answer(text, normalized):
    assert tc.normalize_answer(text) == normalized


@pytest.mark.parametrize("output, gold, prefix, expected", [
    ("Answer: Paris.", "paris", "Answer:", 1.0),
    ("the answer is the Eiffel tower", ["The Eiffel Tower"], "Answer:", 1.0),
    ("London", ["Paris", "London"], "Answer:", 1.0),           # max over gold answers
    ("London", [["Paris"], ["Rome", "London"]], "Answer:", 1.0),  # nested gold lists are flattened
    ("Berlin", ["Paris", "London"], "Answer:", 0.0),
    ("1,234 people", "1234", "Answer:", 1.0),                  # punctuation removed on both sides
    ("Par is", "Paris", "Answer:", 0.0),
    ("", "Paris", "Answer:", 0.0),
    ("Corresponding value: 9f8e-77\nmore", "9f8e-77", "corresponding value:", 1.0),
])
def test_sub_em(output, gold, prefix, expected):
    assert tc.sub_em(output, gold, prefix) == expected


def test_parse_output():
    assert tc.parse_output("Answer: Paris\nBerlin") == "Paris"
    assert tc.parse_output("answer:   Answer: Paris") == "Paris"          # a repeated prefix is stripped
    assert tc.parse_output("I think\nAnswer: Rome") == "Rome"
    assert tc.parse_output("no prefix here\nsecond line") == "no prefix here"
    assert tc.parse_output("Corresponding value: abc\nxyz", "corresponding value:") == "abc"


@pytest.mark.parametrize("prediction, gold, expected", [
    ("The numbers are 1234567 and 7654321.", ["1234567", "7654321", "1111111"], 2 / 3),
    ("ABC-def", ["abc-DEF"], 1.0),           # lower-cased
    ("1,234", ["1234"], 0.0),                # but no punctuation stripping (unlike SubEM)
    ("the the", ["the"], 1.0),               # no article removal either
    ("", ["x", "y"], 0.0),
    ("x", "x", 1.0),
])
def test_ruler_recall(prediction, gold, expected):
    assert tc.ruler_recall(prediction, gold) == pytest.approx(expected)

@pytest.mark.parametrize("excess", [1, 15, 40])
def test_helmet_context_cut_once_at_the_kept_tokens_offset(tok, excess):
    """HELMET's model_utils.tokenize: truncate_length = prompt tokens - budget; the context is cut once at the start
    character of its token [-truncate_length] (offset_mapping), the prompt rebuilt, no second check. The reference
    offsets come from llama_models' own tiktoken encoding, not from our tokenizer."""
    ref = pytest.importorskip("llama_models.llama3.tokenizer").Tokenizer.get_instance()
    task = TASKS["kilt_nq"]
    rec = task.read(*task.files(8192, FIXTURES), samples=10, seed=0)[0]
    fields = task.prompt(rec)
    prompt = ref.encode(template_prompt("kilt_nq", fields), bos=True, eos=False)
    budget = len(prompt) - excess
    ctx = ref.encode(fields["context"], bos=True, eos=False)  # HELMET tokenises the context with BOS too
    _, offsets = ref.model.decode_with_offsets(ctx[1:])
    cut = fields["context"][:([0] + offsets)[-excess]]
    ids, new_fields = tc.fit_context(task, fields, tok, budget)
    assert new_fields["context"] == cut and 0 < len(cut) < len(fields["context"])
    assert ids == ref.encode(template_prompt("kilt_nq", dict(fields, context=cut)), bos=True, eos=False)
    head = template_prompt("kilt_nq", dict(fields, context="\x00")).split("\x00")
    assert tok.decode(ids[1:]) == head[0] + cut + head[1]  # instructions, demos and question untouched


def test_bos_only_where_the_tokenizer_adds_one(tok):
    spec = TASKS["json_kv"]
    fields = {"context": "{}", "demos": "", "question": "k"}
    assert tc.encode_prompt(spec, fields, tok)[0] == tok.bos_id
    tok_no_bos = type(tok).__new__(type(tok))
    tok_no_bos.__dict__.update(tok.__dict__, add_bos=False)
    assert tc.encode_prompt(spec, fields, tok_no_bos) == tc.encode_prompt(spec, fields, tok)[1:]

# ------------------------------------------------------------------------------------------------------------
# errors a user can cause


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{not json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: not a JSON line"):
        tc.read_jsonl(str(path))
    path.write_text('{"a": 1}\n["a list"]\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: expected a JSON object per line, found \["):
        tc.read_jsonl(str(path))




# Meta-Llama-3-8B-Instruct's tokenizer_config.json "chat_template", as HELMET renders it with apply_chat_template
LLAMA3_INSTRUCT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def test_chat_prompt_is_the_llama3_instruct_template_as_helmet_renders_it(tok):
    """HELMET (model_utils.tokenize): one user message, no system message, add_generation_prompt, the template's
    own BOS; the template trims the message, which matters when a question ends in whitespace."""
    import jinja2
    spec = dataclasses.replace(TASKS["narrativeqa"], templates=("Story: {context}\n\nQuestion: {question}", "Answer:"))
    fields = {"context": "  Once upon a time.", "question": "who was there? \n"}
    text = spec.templates[0].format(**fields)
    rendered = jinja2.Template(LLAMA3_INSTRUCT_TEMPLATE).render(
        messages=[{"role": "user", "content": text}], bos_token="<|begin_of_text|>", add_generation_prompt=True)
    assert tok.decode(tc.encode_prompt(spec, fields, tok, chat=True)) == rendered
