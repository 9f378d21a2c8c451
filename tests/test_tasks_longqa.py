"""tasks/longqa.py: NarrativeQA and InfBench QA / choice selected, cut and prompted as HELMET does, against its
procedure written out again, and InfBench choice's post-processing."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tasks import TASKS, longqa, local  # noqa: E402
from tests.test_tasks_local import (DATA, LENGTH, SEED, WordTok, completion_prompt, long_enough, read,  # noqa: E402
                                    records, ref_shuffle, sha_seed, small, truncated)  # noqa: F401



def test_narrativeqa_selection(small):
    tok = WordTok()
    recs = records("narrativeqa", LENGTH["narrativeqa"], DATA, 5, SEED, tok)
    test, train = read("narrativeqa/test.jsonl"), read("narrativeqa/train.jsonl")
    chosen = [i for i in ref_shuffle(len(test), SEED) if 1 + len(WordTok.split(test[i]["document"]["text"])) > 300]
    assert [r["id"] for r in recs] == chosen[:5]
    draws = local.unseeded_shuffle_seeds(SEED, 5)  # equal to `datasets`' own draws: tests/test_helmet_exact.py
    for k, r in enumerate(recs):
        row = test[r["id"]]
        demos = [train[j] for j in ref_shuffle(len(train), draws[k])[:2]]
        assert r["demo"] == ("For example:\n\n" + "\n\n".join(f"Question: {d['question']['text']}\nAnswer: "
                                                              f"{d['answers'][0]['text']}" for d in demos)
                             + "\n\nNow, use the following story to answer the question:\n\n")
        assert r["context"] == truncated(row["document"]["text"], 400)
        assert r["question"] == row["question"]["text"] and r["answer"] == [a["text"] for a in row["answers"]]
    assert any(r["context"].endswith(local.OMITTED) for r in recs) and not all(r["context"].endswith(local.OMITTED)
                                                                             for r in recs)


@pytest.mark.parametrize("task", ["infbench_qa_eng", "infbench_choice_eng", "infbench_sum_eng"])
def test_infbench_selection(task, small):
    rows = read(f"infbench/{longqa.INFBENCH[task]}.jsonl")
    recs = records(task, LENGTH[task], DATA, 3, SEED, WordTok())
    long = [r for r in rows if long_enough(r["context"], 300)]
    assert 3 < len(long) < len(rows)
    chosen = [long[j] for j in ref_shuffle(len(long), SEED)[:3]]
    assert [r["id"] for r in recs] == [r["id"] for r in chosen]
    for rec, row in zip(recs, chosen):
        assert rec["context"] == truncated(row["context"], 400) and rec["question"] == row["input"]
        others = [x for x in rows if x["id"] != row["id"]]
        demos = [others[j] for j in ref_shuffle(len(others), SEED)[:2]]
        if task == "infbench_qa_eng":
            demo = "\n\n".join(f"[story text]\nQuestion: {d['input']}\nAnswer: {d['answer'][0]}" for d in demos)
            assert rec["answer"] == row["answer"]
        elif task == "infbench_choice_eng":
            letter = lambda d: "ABCD"[d["options"].index(d["answer"][0])]
            opts = lambda d: "A. {}\nB. {}\nC. {}\nD. {}".format(*d["options"])
            demo = "\n\n".join(f"[story text]\nQuestion: {d['input']}\nOptions:\n{opts(d)}\nAnswer: {letter(d)}"
                               for d in demos)
            assert rec["answer"] == [letter(row), f"{letter(row)}. {row['answer'][0]}"]
            assert rec["options"] == opts(row)
        else:
            demo = "\n\n".join(f"[story text]\nSummary: {d['answer'][0].strip()}" for d in demos)
            keypoints = {k["id"]: k["keypoints"] for k in read("infbench/longbook_sum_eng_keypoints.jsonl")}
            assert rec["keypoints"] == keypoints[row["id"]]
        assert rec["demo"] == f"For example:\n\n{demo}\n\nNow, read the following story:\n\n"



def test_length_filter_boundaries(tmp_path, small):
    """NarrativeQA keeps documents of more than 300 (131072) tokens with BOS, InfBench / Multi-LexSum at least 300."""
    def doc(tokens):  # WordTok tokens, plus one for BOS
        return " ".join(f"w{i}" for i in range(tokens - 1))
    os.makedirs(tmp_path / "narrativeqa")
    os.makedirs(tmp_path / "infbench")
    rows = [{"document": {"id": str(n), "text": doc(n)}, "question": {"text": f"q{n}"}, "answers": [{"text": "a"}]}
            for n in (299, 300, 301, 302)]
    for split in ("train", "test"):
        (tmp_path / "narrativeqa" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = [{"id": n, "context": doc(n), "input": f"q{n}", "answer": ["a"], "options": []} for n in (299, 300, 301)]
    (tmp_path / "infbench" / "longbook_qa_eng.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    nqa = records("narrativeqa", 10000, str(tmp_path), None, SEED, WordTok())
    assert sorted(r["question"] for r in nqa) == ["q301", "q302"]
    inf = records("infbench_qa_eng", 10000, str(tmp_path), None, SEED, WordTok())
    assert [r["id"] for r in inf] == [300, 301]  # samples None: HELMET does not shuffle



def test_choice_post_process():
    rec = {"answer": ["B", "B. Ka lo mi."]}
    em = lambda out: (TASKS["infbench_choice_eng"].score( out, rec)["exact_match"],
                      TASKS["infbench_choice_eng"].score( out, rec)["substring_exact_match"])
    assert em("B") == (1, 0) and em("Answer: B") == (1, 0) and em("(B)") == (1, 0)
    assert em("b. ka lo mi. because") == (1, 1)  # the "B. text" option anywhere in the output
    assert em("The answer is B") == (0, 0) and em("C") == (0, 0) and em("") == (0, 0)


def test_prompts_match_helmet_templates(small):
    tok = WordTok()
    rec = records("narrativeqa", 700, DATA, 1, SEED, tok)[0]
    user = ("You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
            "as concisely as you can, using a single phrase if possible.\n\n" + rec["demo"] + rec["context"]
            + "\n\nQuestion: " + rec["question"])
    assert completion_prompt("narrativeqa", rec) == user + "\nAnswer:"
    rec = records("infbench_qa_eng", 610, DATA, 1, SEED, tok)[0]
    assert completion_prompt("infbench_qa_eng", rec) == (
        "You are given a story and a question. Answer the question as concisely as you can, using a single phrase if "
        "possible.\n\n" + rec["demo"] + rec["context"] + "\n\nQuestion: " + rec["question"] + "\n\nAnswer:")
    rec = records("infbench_choice_eng", 610, DATA, 1, SEED, tok)[0]
    assert completion_prompt("infbench_choice_eng", rec) == (
        "You are given a story and a question with multiple choices. Choose the best answer from the options provided. "
        "Only one of the following options is correct, output the answer using one single letter (A, B, C, or D). "
        "Don't say anything else.\n\n" + rec["demo"] + rec["context"] + "\n\nQuestion: " + rec["question"]
        + "\nOptions:\n" + rec["options"] + "\n\nAnswer:")
