"""tasks/summ.py: Multi-LexSum and InfBench sum selected, cut and prompted as HELMET does, with the judge's key points,
against HELMET's procedure written out again; the better of the raw and the parsed summary."""
import os
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tasks import TASKS, local  # noqa: E402
from tests.test_tasks_local import (DATA, SEED, WordTok, completion_prompt, long_enough, read, records,  # noqa: E402
                                    ref_shuffle, sha_seed, small, truncated)  # noqa: F401



def test_multi_lexsum_selection(small):
    val, train = read("multi_lexsum/validation.jsonl"), read("multi_lexsum/train.jsonl")
    test = [r for r in val if r["summary/short"] is not None and long_enough("\n\n".join(r["sources"]), 300)]
    pool = [r for r in train if r["summary/short"] is not None]
    keypoints = {k["id"]: k["summary/short_keypoints"] for k in read("multi_lexsum/multi_lexsum_val.jsonl")}
    everything = records("multi_lexsum", 1100, DATA, len(test), SEED, WordTok())
    assert [r["id"] for r in everything] == [r["id"] for r in test]  # not more than `samples`: no shuffle
    recs = records("multi_lexsum", 1100, DATA, 3, SEED, WordTok())
    chosen = [test[j] for j in ref_shuffle(len(test), SEED)[:3]]
    assert [r["id"] for r in recs] == [r["id"] for r in chosen]
    summarized = [r["id"] for r in val if r["summary/short"] is not None]  # train's draws, then these rows'
    draws = local.unseeded_shuffle_seeds(SEED, len(pool) + len(summarized))  # = `datasets`': test_helmet_exact.py
    for rec, row in zip(recs, chosen):
        demos = [pool[j] for j in ref_shuffle(len(pool), draws[len(pool) + summarized.index(row["id"])])[:2]]
        assert rec["demo"] == ("Example summaries:\n\n" + "\n\n".join(f"Summary: {d['summary/short']}" for d in demos)
                               + "\n\nNow, write a summary of the following legal documents.\n")
        assert rec["context"] == truncated("\n\n".join(row["sources"]), 400)
        assert (rec["answer"], rec["question"], rec["summary/long"]) == (row["summary/short"], "", row["summary/long"])
        assert rec["keypoints"] == keypoints[row["id"]]



def test_summary_parsing_takes_the_better_of_raw_and_parsed():
    rec = {"answer": "Ka lo mi ne ru."}
    out = TASKS["multi_lexsum"].score( "Summary: Ka lo mi ne ru.\nSomething else entirely here.", rec)
    assert out["exact_match"] == 1.0 and out["rougeL_f1"] == 1.0
    assert TASKS["narrativeqa"].score( "Answer: the Ka lo\nmore", {"answer": ["ka lo", "x"]})["exact_match"] == 1.0
    assert TASKS["infbench_qa_eng"].score( "yes", {"answer": ["no"]})["f1"] == 0.0

def test_prompts_match_helmet_templates(small):
    tok = WordTok()
    rec = records("infbench_sum_eng", 1800, DATA, 1, SEED, tok)[0]
    assert completion_prompt("infbench_sum_eng", rec) == (
        "You are given a book and you are tasked to summarize it. Write a summary of about 1000 to 1200 words. Only "
        "write about the plot and characters of the story. Do not discuss the themes or background of the book. Do not "
        "provide any analysis or commentary.\n\n" + rec["demo"] + rec["context"] + "\n\nNow summarize the book."
        + "\n\nSummary:")
    rec = records("multi_lexsum", 1100, DATA, 1, SEED, tok)[0]
    assert completion_prompt("multi_lexsum", rec) == (
        "You are given the legal documents in a civil rights lawsuit, and you are tasked to summarize the case. Write "
        "a concise summary of one paragraph (200 to 250 words). The summary should contain a short description of the "
        "background, the parties involved, and the outcomes of the case.\n\n" + rec["demo"] + "Legal documents:\n"
        + rec["context"] + "\n\nNow please summarize the case." + "\n\nSummary:")



def test_without_keypoint_file_records_have_none(tmp_path, small):
    os.makedirs(tmp_path / "infbench")
    src = os.path.join(DATA, "infbench", "longbook_sum_eng.jsonl")
    (tmp_path / "infbench" / "longbook_sum_eng.jsonl").write_bytes(open(src, "rb").read())
    recs = records("infbench_sum_eng", 1800, str(tmp_path), 2, SEED, WordTok())
    assert recs and all("keypoints" not in r for r in recs)

