"""HELMET's Summ tasks, InfBench's English book summaries and Multi-LexSum's civil-rights cases, read from local
copies of their datasets (tasks/local.py's layout), with the key points that HELMET's GPT-4o judge needs.

The one idea: the score that counts is the judge's, fluency x the F1 of key-point recall and sentence precision
(tasks/judge.py); without a judge the runner reports ROUGE-L and leaves the task out of the averages. Multi-LexSum
keeps validation cases with a short summary and at least 65536 Llama-2 tokens of sources, shuffled with `seed` and
cut to `samples` only when there are more, and its sources are cut to length - 700 tokens. Its demos come from
HELMET's unseeded train.shuffle(), replayed from numpy's global state after set_seed(seed) (tasks/local.py).
"""
from common import UserError
import tasks.judge as judge
from tasks.common import expect, shuffle_order
from tasks.local import (LAYOUT, MIN_TOKENS, document_task, keypoints, rows, split_path, train_demos,
                         unseeded_shuffle_seeds)
from tasks.longqa import infbench_files, infbench_records, post_process

INFBENCH_SUM = ("You are given a book and you are tasked to summarize it. Write a summary of about 1000 to 1200 words. "
                "Only write about the plot and characters of the story. Do not discuss the themes or background of "
                "the book. Do not provide any analysis or commentary.\n\n{demo}{context}\n\nNow summarize the book.",
                "Summary:")
MULTI_LEXSUM = ("You are given the legal documents in a civil rights lawsuit, and you are tasked to summarize the "
                "case. Write a concise summary of one paragraph (200 to 250 words). The summary should contain a short "
                "description of the background, the parties involved, and the outcomes of the case.\n\n{demo}Legal "
                "documents:\n{context}\n\nNow please summarize the case.", "Summary:")
# where HELMET's judge finds each task's key points (its data/ folder)
KEYPOINTS = {"infbench_sum_eng": ("infbench/longbook_sum_eng_keypoints.jsonl", "keypoints"),
             "multi_lexsum": ("multi_lexsum/multi_lexsum_val.jsonl", "summary/short_keypoints")}


def multi_lexsum_files(data_dir):
    return [split_path(data_dir, "multi_lexsum", s) for s in ("train", "validation")]


def multi_lexsum_records(run, shots, keep, count):
    train_path, val_path = multi_lexsum_files(run.data_dir)
    val, test, rank = rows(val_path), [], {}
    for i, r in enumerate(val):  # all_data.filter(summary/short is not None), then filter_length on the sources
        where = f"{val_path}: row {i + 1}"
        if not all(isinstance(x, str) for x in expect(r, "sources", list, "the case's documents (texts)", where)):
            raise ValueError(f"{where}: field 'sources' is {str(r['sources'])[:60]}: expected a list of texts")
        if r["summary/short"] is not None:
            rank[i] = len(rank)  # its place among the filtered rows, which HELMET's demo draws follow
            if run.helmet_version == "985b73b" or count("\n\n".join(r["sources"])) >= MIN_TOKENS["multi_lexsum"]:
                test.append(i)  # the sources are read again for the chosen cases only
    if run.samples is not None and len(test) > run.samples:
        test = [test[j] for j in shuffle_order(len(test), run.seed)[:run.samples]]
    pool = [r["summary/short"] for r in rows(train_path, ["summary/short"]) if r["summary/short"] is not None] \
        if shots else []
    points, out = keypoints(run.data_dir, *KEYPOINTS["multi_lexsum"], "multi_lexsum"), []
    # HELMET's demo map runs over the DatasetDict, train first: each train row, then each validation row with a
    # short summary, draws one unseeded train.shuffle(); validation row i draws number len(train) + its rank
    seeds = unseeded_shuffle_seeds(run.seed, len(pool) + len(rank)) if shots else []
    for i in test:
        r = val[i]
        rec = {"id": r["id"], "context": count.truncate("\n\n".join(r["sources"]), keep), "question": "", "demo": "",
               "answer": r["summary/short"], "summary/long": r["summary/long"]}  # the judge's expert summary
        if shots:
            rec["demo"] = "Example summaries:\n\n" + "\n\n".join(
                "Summary: {}".format(d) for d in train_demos(pool, seeds[len(pool) + rank[i]], shots)) + \
                "\n\nNow, write a summary of the following legal documents.\n"
        if points is not None and str(rec["id"]) in points:
            rec["keypoints"] = points[str(rec["id"])]
        out.append(rec)
    return out


def with_keypoints(name, read):
    """A judged run needs every sample's key points: say so before any generation."""
    def records(run, shots, keep, count):
        out = read(run, shots, keep, count)
        if run.judged and any(not r.get("keypoints") for r in out):
            raise UserError(f"{name}: --judge-url needs HELMET's key points, and {run.data_dir} has none for some "
                            f"samples (expected {KEYPOINTS[name][0]}, field {KEYPOINTS[name][1]!r})")
        return out
    return records


def judge_summ(reference, book):
    """HELMET's key-point judge; the precision reference is Multi-LexSum's long summary, InfBench's answer."""
    return lambda client, output, rec: judge.judge_summ(client, output, rec["keypoints"], rec[reference], book=book)


infbench_sum = document_task("infbench_sum_eng", infbench_files("infbench_sum_eng"), LAYOUT["infbench"], 1400,
                             with_keypoints("infbench_sum_eng",
                                            infbench_records("infbench_sum_eng", KEYPOINTS["infbench_sum_eng"])),
                             category="Summ", templates=INFBENCH_SUM, gen_len=1200, stop_newline=False,
                             metric="gpt-4-f1", sep="\n\n", score=post_process(), judge=judge_summ("answer", True))
multi_lexsum = document_task("multi_lexsum", multi_lexsum_files, LAYOUT["multi_lexsum"], 700,
                             with_keypoints("multi_lexsum", multi_lexsum_records), category="Summ",
                             templates=MULTI_LEXSUM, gen_len=400, stop_newline=False, metric="gpt-4-f1", sep="\n\n",
                             score=post_process("Summary:"), judge=judge_summ("summary/long", False))
