"""tasks/rag.py: KILT and MS MARCO from HELMET's files, prompts character for character and the selection of
samples and demonstrations by HELMET's procedure (data.py at 4526dfb) written out again; nDCG@10 by hand."""
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
from common import UserError  # noqa: E402
from tasks import TASKS, rag  # noqa: E402
from tests.test_tasks_common import FIXTURES, prompt_text, tok  # noqa: E402,F401


def helmet_records(task, test_file, demo_file, samples, seed):
    return TASKS[task].read(test_file, demo_file, samples, seed)


def files(task, length=8192):
    return TASKS[task].files(length, FIXTURES)

def rag_demo(question, answer, docs):
    return "\n\n".join(f"Document (Title: {t}): {x}" for t, x in docs) + f"\n\nQuestion: {question}\nAnswer: {answer}"


def test_rag_prompt_from_helmet_kilt_files(tok):
    recs = helmet_records("kilt_nq", *files("kilt_nq"), samples=10, seed=0)
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
    prompt = prompt_text("kilt_nq", rec, tok)
    # two demonstrations, in a per-question seeded order: any ordered pair of the three
    assert prompt in {head + a + "\n\n" + b + "\n\n" + body for a, b in itertools.permutations(demos, 2)}


def test_rerank_prompt_from_helmet_msmarco_files(tok):
    recs = helmet_records("msmarco_rerank_psg", *files("msmarco_rerank_psg"), samples=10, seed=0)
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
    prompt = prompt_text("msmarco_rerank_psg", rec, tok)
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
    recs = helmet_records(task, test_file, demo_file, samples=7, seed=42)

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
        recs = helmet_records("msmarco_rerank_psg", write_jsonl(tmp_path / "t.jsonl", test),
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



# ------------------------------------------------------------------------------------------------------------
# 4. nDCG@10 by hand


def test_ndcg_hand_computed():
    qrels = {"1": 3, "2": 2, "3": 0, "4": 1}
    ranking = rag.parse_rankings("Ranking: [2] > [1] > [4] > [3] (and maybe 3 > 1)")
    assert ranking == {"2": 4, "1": 3, "4": 2, "3": 1}
    dcg = 2 / 1 + 3 / math.log2(3) + 1 / 2
    idcg = 3 / 1 + 2 / math.log2(3) + 1 / 2
    assert rag.ndcg_at_k(ranking, qrels) == pytest.approx(dcg / idcg)  # 0.92249...
    assert rag.ndcg_at_k(ranking, qrels) == pytest.approx(4.392789 / 4.761860, abs=1e-6)  # 0.922494
    # unjudged ids count as irrelevant; a relevant doc left out of the ranking still counts in the ideal
    assert rag.ndcg_at_k(rag.parse_rankings("ID9 > ID1"), qrels) == pytest.approx((3 / math.log2(3)) / idcg)
    assert rag.ndcg_at_k(rag.parse_rankings("no ranking at all"), qrels) == 0.0
    assert rag.parse_rankings("1 > 2 > 1 > 3") == {"1": 4, "2": 3, "3": 1}  # first mention of a repeated id wins
    # cut at 10: a relevant doc at rank 11 adds nothing
    many = {str(i): 0 for i in range(10, 20)}
    many["99"] = 3
    ranking = rag.parse_rankings(" > ".join([str(i) for i in range(10, 20)] + ["99"]))
    assert rag.ndcg_at_k(ranking, many) == 0.0


# ------------------------------------------------------------------------------------------------------------
# errors a user can cause


def test_popqa_without_a_positive_popularity_names_the_file(tmp_path):
    row = {"id": 1, "question": "q", "answers": ["a"], "ctxs": [{"title": "t", "text": "x"}], "s_pop": 0}
    path = tmp_path / "popqa.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=r"popqa.jsonl: a PopQA record has s_pop 0: HELMET's log10 filter needs"):
        helmet_records("kilt_popqa_3", str(path), None, 10, 42)


def copy_with(src, dst, edit):
    """A copy of a HELMET .jsonl file with `edit` applied to every record."""
    records = [json.loads(line) for line in open(src, encoding="utf-8") if line.strip()]
    for r in records:
        edit(r)
    dst.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(dst)


def test_helmet_file_missing_a_field_names_the_file_and_the_field(tmp_path):
    test, demo = files("kilt_nq")
    # popqa reads s_pop (the nq fixture has none), in the test file first
    with pytest.raises(UserError, match=r"nq-dev-multikilt_1000_k50_dep6.jsonl: a record has no 's_pop' field, "
                                         r"which kilt_popqa_3 reads$"):
        helmet_records("kilt_popqa_3", test, demo, samples=5, seed=0)
    # the demonstrations' file, when it is the one that lacks the field
    bad = copy_with(demo, tmp_path / "demo.jsonl", lambda r: r.pop("answers"))
    with pytest.raises(UserError, match=r"demo.jsonl: a record has no 'answers' field, which kilt_nq reads"):
        helmet_records("kilt_nq", test, bad, samples=5, seed=0)
    bad = copy_with(test, tmp_path / "test.jsonl", lambda r: r["ctxs"][-1].pop("title"))
    with pytest.raises(UserError, match=r"test.jsonl: a record's passage \(in ctxs\) has no 'title' field"):
        helmet_records("kilt_nq", bad, demo, samples=5, seed=0)
    # fields read only by the prompt or the score fail at once, not after generation
    kv, _ = files("json_kv")
    with pytest.raises(UserError, match=r"kv.jsonl: a record has no 'answer' field, which json_kv reads"):
        helmet_records("json_kv", copy_with(kv, tmp_path / "kv.jsonl", lambda r: r.pop("answer")), None, 5, 0)
    ruler, _ = files("ruler_niah_mk_2")
    with pytest.raises(UserError, match=r"r.jsonl: a record has no 'outputs' field, which ruler_niah_mk_2 reads"):
        helmet_records("ruler_niah_mk_2", copy_with(ruler, tmp_path / "r.jsonl", lambda r: r.pop("outputs")),
                          None, 5, 0)
