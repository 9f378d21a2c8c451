"""helmet.py: HELMET prompts and metrics, HELMET's data files (the synthetic tasks: tests/test_ruler.py)."""
import hashlib
import itertools
import json
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import helmet as hm  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "helmet")


@pytest.fixture(scope="module")
def tok():
    from data import load_tokenizer
    return load_tokenizer(None)  # the real Llama-3 tokenizer (llama-models package), offline


# ------------------------------------------------------------------------------------------------------------
# 1. prompts, character for character against HELMET's templates written out here


def test_json_kv_prompt_matches_helmet_template():
    rec = {"context": '{"k1": "v1",\n "k2": "v2"}', "demos": [["d1", "e1"], ["d2", "e2"], ["d3", "e3"]],
           "question": "k2", "answer": "v2"}
    expected = ('{"k1": "v1",\n "k2": "v2"}\n\nExtract the value corresponding to the specified key in the JSON '
                'object below.\n\nKey: d1\nCorresponding value: e1\n\nKey: d2\nCorresponding value: e2\n\n'
                'Key: k2\nCorresponding value:')
    assert hm.build_prompt("json_kv", hm.prompt_fields("json_kv", rec)) == expected


def test_ruler_prompts_match_helmet_templates():
    rec = {"context": "line one\nline two", "query": "calm-otter", "type_needle_v": "number", "outputs": ["1"]}
    single = ("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz "
              "you about the number afterwards.\nline one\nline two\nWhat is the special magic number for calm-otter "
              "mentioned in the provided text?\nThe special magic number for calm-otter mentioned in the provided "
              "text is")
    assert hm.build_prompt("ruler_niah_mk_2", hm.prompt_fields("ruler_niah_mk_2", rec)) == single
    assert hm.build_prompt("ruler_niah_mk_3", hm.prompt_fields("ruler_niah_mk_3", rec)) == single
    rec = dict(rec, type_needle_v="numbers")
    multi = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz "
             "you about the numbers afterwards.\nline one\nline two\nWhat are all the special magic numbers for "
             "calm-otter mentioned in the provided text?\nThe special magic numbers for calm-otter mentioned in the "
             "provided text are")
    assert hm.build_prompt("ruler_niah_mv", hm.prompt_fields("ruler_niah_mv", rec)) == multi
    rec = {"context": "VAR ABCDE = 12345", "query": "12345", "num_v": 5, "example": "EXAMPLE", "outputs": ["ABCDE"]}
    vt = ("EXAMPLE\n\nMemorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
          "VAR ABCDE = 12345\nQuestion: Find all variables that are assigned the value 12345 in the text above.\n"
          "Answer: According to the chain(s) of variable assignment in the text above, 5 variables are assigned the "
          "value 12345, they are:")
    assert hm.build_prompt("ruler_vt", hm.prompt_fields("ruler_vt", rec)) == vt


def rag_demo(question, answer, docs):
    return "\n\n".join(f"Document (Title: {t}): {x}" for t, x in docs) + f"\n\nQuestion: {question}\nAnswer: {answer}"


def test_rag_prompt_from_helmet_kilt_files():
    files = hm.helmet_files("kilt_nq", 8192, FIXTURES)
    recs = hm.helmet_records("kilt_nq", *files, samples=10, seed=0)
    rec = next(r for r in recs if r["question"] == "what is the capital of norway")
    demos = [rag_demo("who painted the mona lisa", "Leonardo da Vinci",
                      [("Mona Lisa", "The Mona Lisa is a portrait painting by Leonardo da Vinci.")]),
             rag_demo("how many legs does a spider have", "eight",
                      [("Spider", "Spiders are arachnids with eight legs.")]),
             rag_demo("what is the largest planet", "Jupiter",
                      [("Jupiter", "Jupiter is the largest planet in the Solar System.")])]
    body = ("Document (Title: Bergen): Bergen is a city on the west coast of Norway.\n\nDocument (Title: Oslo): Oslo "
            "is the capital and most populous city of Norway.\n\nQuestion: what is the capital of norway\nAnswer:")
    head = ("Use the given documents to write a concise and short answer to the question. Write your answer in the "
            "following format:\nAnswer: [answer]\n\n")
    prompt = hm.build_prompt("kilt_nq", hm.prompt_fields("kilt_nq", rec))
    # two demonstrations, in a per-question seeded order: any ordered pair of the three
    assert prompt in {head + a + "\n\n" + b + "\n\n" + body for a, b in itertools.permutations(demos, 2)}


def test_rerank_prompt_from_helmet_msmarco_files():
    files = hm.helmet_files("msmarco_rerank_psg", 8192, FIXTURES)
    recs = hm.helmet_records("msmarco_rerank_psg", *files, samples=10, seed=0)
    rec = next(r for r in recs if r["qid"] == "q1")
    demos = {"d1": "[ID: 1] Document (Title: Sky): The sky is blue.\n\n[ID: 2] Document (Title: Grass): Grass is "
                   "green.\n\nQuery: color of the sky\nRanking: 1 > 2\n\n",
             "d2": "[ID: 4] Document (Title: Alps): Mont Blanc is in the Alps.\n\n[ID: 6] Document (Title: Everest): "
                   "Everest is the tallest mountain.\n\nQuery: tallest mountain\nRanking: 6 > 4\n\n"}
    body = ("[ID: 7] Document (Title: Pet care): Feed tortoises leafy greens.\n\n[ID: 3] Document (Title: Tortoise): "
            "Tortoises can live more than 100 years.\n\n[ID: 12] Document (Title: Turtles): Sea turtles live 50 to 100 "
            "years.\n\n[ID: 5] Document (Title: Cars): Cars last about 12 years.\n\nQuery: how long do tortoises "
            "live\nRanking:")
    head = ("You are provided with a list of documents, each indicated by their ID. Rank each document based on their "
            "relevance to the question in descending order from most relelvant to least relevant texts. Include all "
            "documents in the rankings. Write your answer using the unique IDs, with the following format:\nRanking: "
            "ID3 > ID1 > ID2\n\n")
    prompt = hm.build_prompt("msmarco_rerank_psg", hm.prompt_fields("msmarco_rerank_psg", rec))
    # the demo with the test's own qid ("q1") is never used
    assert prompt in {head + demos[a] + demos[b] + body for a, b in (("d1", "d2"), ("d2", "d1"))}
    assert rec["qrels"] == {"7": 1, "3": 3, "12": 2, "5": 0}


# ------------------------------------------------------------------------------------------------------------
# 1a. which samples and which demonstrations: HELMET's procedure (data.py at 4526dfb), written out independently.
# `datasets`' Dataset.shuffle(seed) is np.random.default_rng(seed).permutation(n); when `datasets` is installed
# it is checked against that too.


def datasets_order(n, seed):
    try:
        import datasets
    except ImportError:
        return None
    return datasets.Dataset.from_dict({"i": list(range(n))}).shuffle(seed=seed)["i"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def kilt_rows(n_questions, depths, prefix, with_id=True, pop=False):
    rows = []
    for q in range(n_questions):
        for d in range(depths):  # HELMET's files hold each question at several depths: one row each
            row = {"question": f"{prefix} question {q}?", "answers": [f"answer {q}"], "depth": d / max(1, depths - 1),
                   "ctxs": [{"id": f"{q}-{d}", "title": f"T{q}", "text": f"text {q} {d}", "has_answer": True}]}
            if with_id:
                row["id"] = q * 7 if pop else f"{prefix}{q}"  # PopQA's ids are integers
            if pop:
                row["s_pop"] = 10 ** (1 + q % 4)  # log10 = 1..4: a quarter of them fail HELMET's < 3 filter
            rows.append(row)
    return rows


@pytest.mark.parametrize("task,with_id", [("kilt_nq", False), ("kilt_hotpotqa", True), ("kilt_popqa_3", True)])
def test_kilt_samples_and_demos_follow_helmet(tmp_path, task, with_id):
    pop = task == "kilt_popqa_3"
    test = kilt_rows(40, 3, "dev", with_id, pop)
    demo = test if pop else kilt_rows(25, 2, "train", with_id)
    test_file = write_jsonl(tmp_path / "test.jsonl", test)
    demo_file = write_jsonl(tmp_path / "demo.jsonl", demo)
    recs = hm.helmet_records(task, test_file, demo_file, samples=7, seed=42)

    # HELMET: popqa filter on both; random.seed(42); random.sample(sorted(set(keys)), 7); keep every row of them
    import math
    import random
    if pop:
        test = [r for r in test if math.log10(r["s_pop"]) < 3]
        demo = [r for r in demo if math.log10(r["s_pop"]) < 3]
    key = "id" if with_id else "question"
    random.seed(42)
    chosen = random.sample(sorted({r[key] for r in test}), 7)
    expected = [r for r in test if r[key] in chosen]
    assert [(r[key], r["depth"]) for r in recs] == [(r[key], r["depth"]) for r in expected]
    assert len(recs) == 21  # three depths of each of the 7 questions

    for rec in recs:
        pool = [d for d in demo if d[key] != rec[key]] if pop else demo
        h = int(hashlib.sha256(str(rec[key]).encode("utf-8")).hexdigest(), 16) % 2**31
        order = np.random.default_rng(h).permutation(len(pool))
        if datasets_order(len(pool), h) is not None:
            assert list(order) == datasets_order(len(pool), h)
        firsts = []
        for i in order:  # drop_duplicates(key) keeps the first of each key, then select(range(2))
            if pool[i][key] not in [f[key] for f in firsts]:
                firsts.append(pool[i])
        want = "\n\n".join(f"Document (Title: {d['ctxs'][0]['title']}): {d['ctxs'][0]['text']}\n\nQuestion: "
                            f"{d['question']}\nAnswer: {d['answers'][0]}" for d in firsts[:2]) + "\n\n"
        assert rec["demos"] == want


def test_msmarco_samples_and_demos_follow_helmet(tmp_path):
    def rows(n, prefix):
        return [{"qid": f"{prefix}{q}", "query": f"query {q}",
                 "ctxs": [{"id": f"{q}{j}", "title": "t", "text": f"passage {j}", "label": (q + j) % 4}
                          for j in range(3)]} for q in range(n)]
    test = rows(30, "q")
    for pool_size, filtered_up_front in ((80, True), (10, False)):  # a pool over 2x the sampled rows loses their qids
        demo = rows(pool_size, "q")  # HELMET's demo file shares qids with the test file
        recs = hm.helmet_records("msmarco_rerank_psg", write_jsonl(tmp_path / "t.jsonl", test),
                                 write_jsonl(tmp_path / "d.jsonl", demo), samples=5, seed=42)
        import random
        random.seed(42)
        chosen = random.sample(sorted({r["qid"] for r in test}), 5)
        assert [r["qid"] for r in recs] == [r["qid"] for r in test if r["qid"] in chosen]
        for rec in recs:
            pool = [d for d in demo if d["qid"] not in chosen] if filtered_up_front else \
                [d for d in demo if d["qid"] != rec["qid"]]
            h = abs(int(hashlib.sha256(rec["qid"].encode("utf-8")).hexdigest(), 16) % 2**31)
            picked = [pool[i] for i in np.random.default_rng(h).permutation(len(pool))[:2]]  # qids are unique
            assert [f"Query: {d['query']}\n" in rec["demos"] for d in picked] == [True, True]
            assert rec["demos"].index(picked[0]["query"] + "\n") < rec["demos"].index(picked[1]["query"] + "\n")
            assert rec["demos"].count("Query: ") == 2


@pytest.mark.parametrize("task", ["json_kv", "ruler_niah_mk_2"])
def test_json_kv_and_ruler_files_sample_like_datasets_shuffle(tmp_path, task):
    rows = [{"context": f"c{i}", "demos": [], "question": f"k{i}", "answer": f"v{i}", "query": f"k{i}",
             "type_needle_v": "number", "outputs": [f"v{i}"], "depth": i % 6, "num_kvs": 1} for i in range(250)]
    recs = hm.helmet_records(task, write_jsonl(tmp_path / "f.jsonl", rows), None, samples=100, seed=42)
    expected = np.random.default_rng(42).permutation(250)[:100]  # data.shuffle(seed=42).select(range(100))
    assert [r["context"] for r in recs] == [f"c{i}" for i in expected]
    if datasets_order(250, 42) is not None:
        assert list(expected) == datasets_order(250, 42)[:100]


# ------------------------------------------------------------------------------------------------------------
# 1b. metrics on edge cases (HELMET's definitions)


@pytest.mark.parametrize("text, normalized", [
    ("The Cat!", "cat"), ("  an  apple,  a day ", "apple day"), ("theater another", "theater another"),
    ("A", ""), ("U.S.A.", "usa"), ("Rock-'n'-roll", "rocknroll"), ("THE\tEnd\n", "end"), ("the-end", "theend"),
])
def test_normalize_answer(text, normalized):
    assert hm.normalize_answer(text) == normalized


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
    assert hm.sub_em(output, gold, prefix) == expected


def test_parse_output():
    assert hm.parse_output("Answer: Paris\nBerlin") == "Paris"
    assert hm.parse_output("answer:   Answer: Paris") == "Paris"          # a repeated prefix is stripped
    assert hm.parse_output("I think\nAnswer: Rome") == "Rome"
    assert hm.parse_output("no prefix here\nsecond line") == "no prefix here"
    assert hm.parse_output("Corresponding value: abc\nxyz", "corresponding value:") == "abc"


@pytest.mark.parametrize("prediction, gold, expected", [
    ("The numbers are 1234567 and 7654321.", ["1234567", "7654321", "1111111"], 2 / 3),
    ("ABC-def", ["abc-DEF"], 1.0),           # lower-cased
    ("1,234", ["1234"], 0.0),                # but no punctuation stripping (unlike SubEM)
    ("the the", ["the"], 1.0),               # no article removal either
    ("", ["x", "y"], 0.0),
    ("x", "x", 1.0),
])
def test_ruler_recall(prediction, gold, expected):
    assert hm.ruler_recall(prediction, gold) == pytest.approx(expected)

# ------------------------------------------------------------------------------------------------------------
# 4. nDCG@10 by hand


def test_ndcg_hand_computed():
    qrels = {"1": 3, "2": 2, "3": 0, "4": 1}
    ranking = hm.parse_rankings("Ranking: [2] > [1] > [4] > [3] (and maybe 3 > 1)")
    assert ranking == {"2": 4, "1": 3, "4": 2, "3": 1}
    dcg = 2 / 1 + 3 / math.log2(3) + 1 / 2
    idcg = 3 / 1 + 2 / math.log2(3) + 1 / 2
    assert hm.ndcg_at_k(ranking, qrels) == pytest.approx(dcg / idcg)  # 0.92249...
    assert hm.ndcg_at_k(ranking, qrels) == pytest.approx(4.392789 / 4.761860, abs=1e-6)  # 0.922494
    # unjudged ids count as irrelevant; a relevant doc left out of the ranking still counts in the ideal
    assert hm.ndcg_at_k(hm.parse_rankings("ID9 > ID1"), qrels) == pytest.approx((3 / math.log2(3)) / idcg)
    assert hm.ndcg_at_k(hm.parse_rankings("no ranking at all"), qrels) == 0.0
    assert hm.parse_rankings("1 > 2 > 1 > 3") == {"1": 4, "2": 3, "3": 1}  # first mention of a repeated id wins
    # cut at 10: a relevant doc at rank 11 adds nothing
    many = {str(i): 0 for i in range(10, 20)}
    many["99"] = 3
    ranking = hm.parse_rankings(" > ".join([str(i) for i in range(10, 20)] + ["99"]))
    assert hm.ndcg_at_k(ranking, many) == 0.0

@pytest.mark.parametrize("excess", [1, 15, 40])
def test_helmet_context_cut_once_at_the_kept_tokens_offset(tok, excess):
    """HELMET's model_utils.tokenize: truncate_length = prompt tokens - budget; the context is cut once at the start
    character of its token [-truncate_length] (offset_mapping), the prompt rebuilt, no second check. The reference
    offsets come from llama_models' own tiktoken encoding, not from our tokenizer."""
    ref = pytest.importorskip("llama_models.llama3.tokenizer").Tokenizer.get_instance()
    rec = hm.helmet_records("kilt_nq", *hm.helmet_files("kilt_nq", 8192, FIXTURES), samples=10, seed=0)[0]
    fields = hm.prompt_fields("kilt_nq", rec)
    prompt = ref.encode(hm.build_prompt("kilt_nq", fields), bos=True, eos=False)
    budget = len(prompt) - excess
    ctx = ref.encode(fields["context"], bos=True, eos=False)  # HELMET tokenises the context with BOS too
    _, offsets = ref.model.decode_with_offsets(ctx[1:])
    cut = fields["context"][:([0] + offsets)[-excess]]
    ids, new_fields = hm.fit_context("kilt_nq", fields, tok, budget)
    assert new_fields["context"] == cut and 0 < len(cut) < len(fields["context"])
    assert ids == ref.encode(hm.build_prompt("kilt_nq", dict(fields, context=cut)), bos=True, eos=False)
    head = hm.build_prompt("kilt_nq", dict(fields, context="\x00")).split("\x00")
    assert tok.decode(ids[1:]) == head[0] + cut + head[1]  # instructions, demos and question untouched


def test_bos_only_where_the_tokenizer_adds_one(tok):
    spec = hm.TASKS["json_kv"]
    fields = {"context": "{}", "demos": "", "question": "k"}
    assert hm.encode_prompt(spec, fields, tok)[0] == tok.bos_id
    tok_no_bos = type(tok).__new__(type(tok))
    tok_no_bos.__dict__.update(tok.__dict__, add_bos=False)
    assert hm.encode_prompt(spec, fields, tok_no_bos) == hm.encode_prompt(spec, fields, tok)[1:]

# ------------------------------------------------------------------------------------------------------------
# errors a user can cause


def test_record_without_a_template_field_is_a_clear_error():
    with pytest.raises(ValueError, match="ruler_niah_mk_2: the record has no 'type_needle_v' field"):
        hm.build_prompt("ruler_niah_mk_2", hm.prompt_fields("ruler_niah_mk_2", {"context": "c", "query": "q"}))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON line"):
        hm.read_jsonl(str(path))
    path.write_text('{"a": 1}\n["a list"]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object per line, found \["):
        hm.read_jsonl(str(path))


def test_popqa_without_a_positive_popularity_names_the_file(tmp_path):
    row = {"id": 1, "question": "q", "answers": ["a"], "ctxs": [], "s_pop": 0}
    path = tmp_path / "popqa.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"popqa.jsonl: a PopQA record has s_pop 0: HELMET's log10 filter needs"):
        hm.helmet_records("kilt_popqa_3", str(path), None, 10, 42)


def copy_with(src, dst, edit):
    """A copy of a HELMET .jsonl file with `edit` applied to every record."""
    records = [json.loads(line) for line in open(src, encoding="utf-8") if line.strip()]
    for r in records:
        edit(r)
    dst.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(dst)


def test_helmet_file_missing_a_field_names_the_file_and_the_field(tmp_path):
    test, demo = hm.helmet_files("kilt_nq", 8192, FIXTURES)
    # popqa reads s_pop (the nq fixture has none), in the test file first
    with pytest.raises(ValueError, match=r"nq-dev-multikilt_1000_k50_dep6.jsonl: a record has no 's_pop' field, "
                                         r"which kilt_popqa_3 reads$"):
        hm.helmet_records("kilt_popqa_3", test, demo, samples=5, seed=0)
    # the demonstrations' file, when it is the one that lacks the field
    bad = copy_with(demo, tmp_path / "demo.jsonl", lambda r: r.pop("answers"))
    with pytest.raises(ValueError, match=r"demo.jsonl: a record has no 'answers' field, which kilt_nq reads"):
        hm.helmet_records("kilt_nq", test, bad, samples=5, seed=0)
    bad = copy_with(test, tmp_path / "test.jsonl", lambda r: r["ctxs"][-1].pop("title"))
    with pytest.raises(ValueError, match=r"test.jsonl: a record's passage \(in ctxs\) has no 'title' field"):
        hm.helmet_records("kilt_nq", bad, demo, samples=5, seed=0)
    # fields read only by the prompt or the score fail at once, not after generation
    kv, _ = hm.helmet_files("json_kv", 8192, FIXTURES)
    with pytest.raises(ValueError, match=r"kv.jsonl: a record has no 'answer' field, which json_kv reads"):
        hm.helmet_records("json_kv", copy_with(kv, tmp_path / "kv.jsonl", lambda r: r.pop("answer")), None, 5, 0)
    ruler, _ = hm.helmet_files("ruler_niah_mk_2", 8192, FIXTURES)
    with pytest.raises(ValueError, match=r"r.jsonl: a record has no 'outputs' field, which ruler_niah_mk_2 reads"):
        hm.helmet_records("ruler_niah_mk_2", copy_with(ruler, tmp_path / "r.jsonl", lambda r: r.pop("outputs")),
                          None, 5, 0)


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
    spec = hm.Task("LongQA", ("Story: {context}\n\nQuestion: {question}", "Answer:"), 100, False, "x", "\n", True)
    fields = {"context": "  Once upon a time.", "question": "who was there? \n"}
    text = spec.templates[0].format(**fields)
    rendered = jinja2.Template(LLAMA3_INSTRUCT_TEMPLATE).render(
        messages=[{"role": "user", "content": text}], bos_token="<|begin_of_text|>", add_generation_prompt=True)
    assert tok.decode(hm.encode_prompt(spec, fields, tok, chat=True)) == rendered
