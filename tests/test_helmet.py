"""helmet.py: HELMET prompts and metrics, HELMET's data files (the synthetic tasks: tests/test_ruler.py)."""
import itertools
import json
import math
import os
import sys

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

def test_helmet_context_truncated_from_its_end_only(tok):
    rec = hm.helmet_records("kilt_nq", *hm.helmet_files("kilt_nq", 8192, FIXTURES), samples=10, seed=0)[0]
    fields = hm.prompt_fields("kilt_nq", rec)
    full = [tok.bos_id] + tok.encode(hm.build_prompt("kilt_nq", fields))
    budget = len(full) - 15
    ids = hm.fit_context("kilt_nq", fields, tok, budget)
    assert len(ids) <= budget and len(ids) >= budget - 3
    text = tok.decode(ids[1:])
    head = hm.build_prompt("kilt_nq", dict(fields, context="\x00")).split("\x00")[0]  # instructions and demos
    tail = "\n\nQuestion: " + rec["question"] + "\nAnswer:"
    assert text.startswith(head) and text.endswith(tail)
    kept = text[len(head):-len(tail)]
    assert 0 < len(kept) < len(rec["context"]) and rec["context"].startswith(kept)

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
