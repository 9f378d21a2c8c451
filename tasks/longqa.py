"""HELMET's LongQA tasks, NarrativeQA and InfBench's English QA and multiple choice, on whole books read from local
copies of their datasets (tasks/local.py's layout), and the InfBench reader that Summ's InfBench task shares.

The one idea: HELMET keeps only long documents (NarrativeQA over 131072, InfBench at least 65536 Llama-2 tokens),
shuffles with `seed`, takes the first `samples`, and cuts each document to length - 200 - generation tokens with "
... [the rest of the text is omitted]". NarrativeQA is judged by GPT-4o (tasks/judge.py); InfBench QA scores
ROUGE-L F1 and choice exact match, each the better of the raw and the parsed output (HELMET's post-processing).
Kept from HELMET on purpose: in choice, normalize_answer("A") is "" (the article goes), so an output that
normalises to "" exactly matches the gold letter A. NarrativeQA's demos come from HELMET's unseeded
train.shuffle(), one per filtered test row, replayed from numpy's global state after set_seed(seed)
(tasks/local.py's unseeded_shuffle_seeds).
"""
import os

import tasks.judge as judge
from tasks.common import best, calculate_metrics, expect, expect_strings, parse_output, shuffle_order
from tasks.local import (LAYOUT, MIN_TOKENS, Jsonl, document_task, keypoints, rows, split_path, train_demos,
                         unseeded_shuffle_seeds)

NARRATIVEQA = ("You are given a story, which can be either a novel or a movie script, and a question. Answer the "
               "question as concisely as you can, using a single phrase if possible.\n\n{demo}{context}\n\n"
               "Question: {question}", "Answer:")
INFBENCH_QA = ("You are given a story and a question. Answer the question as concisely as you can, using a single "
               "phrase if possible.\n\n{demo}{context}\n\nQuestion: {question}", "Answer:")
INFBENCH_CHOICE = ("You are given a story and a question with multiple choices. Choose the best answer from the "
                   "options provided. Only one of the following options is correct, output the answer using one "
                   "single letter (A, B, C, or D). Don't say anything else.\n\n{demo}{context}\n\nQuestion: "
                   "{question}\nOptions:\n{options}", "Answer:")
INFBENCH = {"infbench_qa_eng": "longbook_qa_eng", "infbench_choice_eng": "longbook_choice_eng",
            "infbench_sum_eng": "longbook_sum_eng"}


def narrativeqa_files(data_dir):
    return [split_path(data_dir, "narrativeqa", s) for s in ("train", "test")]


def narrativeqa_records(run, shots, keep, count):
    train_path, test_path = narrativeqa_files(run.data_dir)
    test = rows(test_path)
    pool, out = None, []
    # HELMET's demo map draws one unseeded train.shuffle() per row of the filtered, shuffled test set, in order
    seeds = unseeded_shuffle_seeds(run.seed, len(test) if run.samples is None else run.samples) if shots else []
    for i in shuffle_order(len(test), run.seed):
        if run.samples is not None and len(out) >= run.samples:
            break
        row = test[i]
        where = f"{test_path}: row {i + 1}"
        text = expect(expect(row, "document", dict, "an object with the story's text", where), "text", str,
                      "the story", where + ": document")
        expect(expect(row, "question", dict, "an object {\"text\": ...}", where), "text", str, "text", where)
        if not all(isinstance(a, dict) and isinstance(a.get("text"), str)
                   for a in expect(row, "answers", list, "a list of {\"text\": ...}", where)):
            raise ValueError(f"{where}: field 'answers' is {str(row['answers'])[:60]}: expected a list of "
                             f"{{\"text\": ...}}")
        if run.helmet_version != "985b73b" and count(text) < MIN_TOKENS["narrativeqa"]:  # 985b73b: no filter
            continue
        demo = ""
        if shots:
            if pool is None:
                pool = rows(train_path, ["question", "answers"])
            demos = train_demos(pool, seeds[len(out)], shots)
            demo = "For example:\n\n" + "\n\n".join(f"Question: {d['question']['text']}\nAnswer: "
                                                      f"{d['answers'][0]['text']}" for d in demos) + \
                "\n\nNow, use the following story to answer the question:\n\n"
        out.append({"context": count.truncate(text, keep), "question": row["question"]["text"], "demo": demo,
                    "answer": [a["text"] for a in row["answers"]], "id": i})
    return out


def infbench_files(name):
    return lambda data_dir: [os.path.join(data_dir, "infbench", INFBENCH[name] + ".jsonl")]


def infbench_records(name, points_file=None):
    """InfBench: rows of at least 65536 Llama-2 tokens, shuffled with `seed`, the first `samples`; demos are the
    first `shots` of the other rows shuffled with `seed`, their stories replaced by "[story text]". `points_file`:
    (path under DIR, field) of the judge's key points."""
    def read(run, shots, keep, count):
        path = infbench_files(name)(run.data_dir)[0]
        rows_ = []  # everything but the contexts, which are counted now and re-read for the chosen rows
        for i, r in enumerate(Jsonl(path)):
            where = f"{path}: row {i + 1}"
            expect(r, "context", str, "the book's text", where)
            expect(r, "input", str, "the question (text)", where, empty=True)  # sum_eng asks none
            answer = expect_strings(r, "answer", "the gold answer(s)", where)
            answer = answer if isinstance(answer, list) else [answer]
            rec = {"id": r["id"], "question": r["input"], "answer": answer, "row": i,
                   "long": count(r["context"]) >= MIN_TOKENS["infbench"]}
            if name == "infbench_choice_eng":
                options = expect(r, "options", list, "the 4 options A-D", where)
                if len(options) != 4 or not all(isinstance(o, str) for o in options):
                    raise ValueError(f"{where}: field 'options' is {str(options)[:60]}: expected the 4 options A-D, "
                                     f"as text")
                if answer[0] not in r["options"]:
                    raise ValueError(f"{path}: id {r['id']}: the answer {answer[0]!r} is not among the options")
                letter = chr(ord("A") + r["options"].index(answer[0]))
                rec.update(options="A. {}\nB. {}\nC. {}\nD. {}".format(*r["options"]),
                           answer=[letter, f"{letter}. {answer[0]}"])
            rows_.append(rec)
        # filter_length runs after the demos were added, so demos may come from rows the filter drops
        if not rows_:
            raise ValueError(f"{path}: no rows")
        chosen = [r for r in rows_ if r["long"] or run.helmet_version == "985b73b"]  # 985b73b: no filter
        if run.samples is not None:
            chosen = [chosen[j] for j in shuffle_order(len(chosen), run.seed)[:run.samples]]
        if name == "infbench_qa_eng":
            demo_text = lambda x: f"[story text]\nQuestion: {x['question']}\nAnswer: {x['answer'][0]}"  # noqa: E731
        elif name == "infbench_choice_eng":
            demo_text = lambda x: (f"[story text]\nQuestion: {x['question']}\nOptions:\n{x['options']}\n"  # noqa
                                   f"Answer: {x['answer'][0]}")
        else:
            demo_text = lambda x: f"[story text]\nSummary: {x['answer'][0].strip()}"  # noqa: E731
        points = keypoints(run.data_dir, *points_file, name) if points_file else None
        source, out = Jsonl(path), []
        for r in chosen:
            rec = {k: v for k, v in r.items() if k not in ("row", "long")}
            rec["demo"] = ""
            if shots:  # data.filter(id != this id).shuffle(seed).select(range(shots))
                others = [x for x in rows_ if x["id"] != r["id"]]
                demos = "\n\n".join(demo_text(others[j]) for j in shuffle_order(len(others), run.seed)[:shots])
                rec["demo"] = f"For example:\n\n{demos}\n\nNow, read the following story:\n\n"
            rec["context"] = count.truncate(source[r["row"]]["context"], keep)
            if points is not None and str(r["id"]) in points:
                rec["keypoints"] = points[str(r["id"])]
            out.append(rec)
        return out
    return read


def post_process(prefix="Answer:"):
    """HELMET's default_post_process: every metric the better of the raw and the parsed output."""
    return lambda output, rec: best(calculate_metrics(output, rec["answer"]),
                                    calculate_metrics(parse_output(output, prefix), rec["answer"]))


def choice_score(output, rec):
    """choice_post_process: the parsed letter, or the "B. text" option appearing verbatim in the output."""
    answers = rec["answer"]
    mets = best(calculate_metrics(output, answers, rouge=False),
                calculate_metrics(parse_output(output), answers, rouge=False))
    mets["substring_exact_match"] = float(answers[1].lower() in output.lower())
    if mets["substring_exact_match"]:
        mets["exact_match"] = 1.0
    return mets


def judge_narrativeqa(client, output, rec):
    """HELMET's GPT-4o judge: 0-3 correctness x fluency."""
    return judge.judge_longqa(client, rec["question"], rec["answer"], output)


# Tokens kept of the context: HELMET's name postfix is length - 200 - generation.
narrativeqa = document_task("narrativeqa", narrativeqa_files, LAYOUT["narrativeqa"], 300, narrativeqa_records,
                            category="LongQA", templates=NARRATIVEQA, gen_len=100, stop_newline=False,
                            metric="gpt-4-score", score=post_process(), judge=judge_narrativeqa)
infbench_qa = document_task("infbench_qa_eng", infbench_files("infbench_qa_eng"), LAYOUT["infbench"], 210,
                            infbench_records("infbench_qa_eng"), category="LongQA", templates=INFBENCH_QA,
                            gen_len=10, stop_newline=False, metric="rougeL_f1", sep="\n\n", score=post_process())
infbench_choice = document_task("infbench_choice_eng", infbench_files("infbench_choice_eng"), LAYOUT["infbench"],
                                210, infbench_records("infbench_choice_eng"), category="LongQA",
                                templates=INFBENCH_CHOICE, gen_len=10, stop_newline=False, metric="exact_match",
                                sep="\n\n", score=choice_score)
