"""
HELMET's tasks, as data: prompt templates, the synthetic generators (JSON KV, RULER), readers for HELMET's published
data folder, the selection of records, metrics and category tables. Nothing here knows about models: evaluate.py runs
a checkpoint on what this file defines (a tokenizer only measures prompts, in the checkpoint's own tokens).

How HELMET evaluates, and so how evaluate.py does (facts in shared/HELMET.md, from princeton-nlp/HELMET):
- Completion mode. Every task has a user template and a system template; the prompt is
  `user.format(**fields) + "\n" + system.format(**fields)`, tokenised with BOS in front, and the model continues it
  greedily for a per-task number of tokens (`TASKS`). RAG and re-ranking also stop at the first newline token; all
  tasks stop at end-of-text / end-of-turn. Before scoring, the system template is put back in front of the output
  (HELMET does this so that "Answer: ..." parsing sees the prefix the model was completing).
- Lengths are in the checkpoint's own tokens and count prompt + generation. Synthetic tasks are generated to fit:
  the number of JSON pairs / haystack sentences is searched so that BOS + prompt + generation tokens <= length and
  at least ~90% of it is used. HELMET's published files were sized with the Llama-2 tokenizer, so their `context`
  is cut from its end (and only it) when a prompt is too long, as HELMET does.
- Metrics, averaged over samples and x100: SubEM (normalised gold answer is a substring of the normalised output,
  max over the raw output and the text after the "Answer:"-style prefix), `ruler_recall` (share of gold strings
  found, lower-cased), nDCG@10 (trec_eval's, linear gain on graded labels 0-3, over the longest "ID > ID" chain).
  Category averages are HELMET's `custom_avgs` (Recall = json_kv + niah_mk_2 + niah_mk_3 + niah_mv).
- Synthetic data is made offline and deterministically from `--seed`: uuid4 strings from a seeded RNG, RULER word
  keys from a small embedded word list (RULER uses wonderwords), and for niah_mv an "essay" haystack that is the
  docstrings of this Python's standard library instead of RULER's Paul Graham essays (not available offline; the
  text, and so scores, can shift slightly between Python versions).
"""

import hashlib
import json
import math
import os
import random
import re
import string
from collections import namedtuple

import numpy as np

# ----------------------------------------------------------------------------------------------------------------
# scoring, as HELMET's utils.py


def normalize_answer(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def parse_output(output, prefix="Answer:"):
    """Text after `prefix` up to the newline (else the first line), the prefix stripped once more if repeated."""
    for pattern in (re.compile(f"(?:{prefix})(.*)(?:\n|$)", re.IGNORECASE), re.compile(r"(?:^)(.*)(?:\n|$)")):
        match = pattern.search(output)
        if match is not None:
            return re.sub(f"^{re.escape(prefix)}", "", match[1].strip(), flags=re.IGNORECASE).strip()
    return None


def _gold_list(answers):
    if isinstance(answers, str):
        return [answers]
    return [a for x in answers for a in (x if isinstance(x, list) else [x])]


def substring_exact_match(prediction, answers):
    return float(max(normalize_answer(a) in normalize_answer(prediction) for a in _gold_list(answers)))


def sub_em(output, answers, prefix="Answer:"):
    """HELMET's SubEM: the better of the raw output and the parsed answer after `prefix`."""
    parsed = parse_output(output, prefix)
    score = substring_exact_match(output, answers)
    return max(score, substring_exact_match(parsed, answers)) if parsed is not None else score


def ruler_recall(prediction, answers):
    answers = _gold_list(answers)
    return sum(a.lower() in prediction.lower() for a in answers) / len(answers)


def parse_rankings(output):
    """{doc id: score}, the score falling with rank, from the longest "ID > ID > ..." chain in the output."""
    output = re.sub(r"[\[\]:]", "", output).lower().replace("id", "")
    longest = ""
    for m in re.finditer(r"(\d+)(?:\s*>\s*(\d+))*", output):
        if len(m.group(0)) > len(longest):
            longest = m.group(0)
    ranks = [n.strip() for n in longest.split(">") if n.strip().isdigit()] if longest else [output]
    results = {}
    for i, doc in enumerate(ranks):
        results.setdefault(doc, len(ranks) - i)
    return results


def ndcg_at_k(results, qrels, k=10):
    """trec_eval's ndcg_cut (HELMET calls it through pytrec_eval): gain = label, discount log2(rank + 1)."""
    ranked = sorted(results, key=lambda d: (-results[d], d))[:k]
    dcg = sum(qrels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked) if qrels.get(d, 0) > 0)
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0

# ----------------------------------------------------------------------------------------------------------------
# tasks: templates, generation lengths, metrics, category averages (HELMET's data.py and configs/*.yaml)


RULER_NIAH = ("A special magic {type_needle_v} is hidden within the following text. Make sure to memorize it. I will "
              "quiz you about the {type_needle_v} afterwards.\n{context}\nWhat is the special magic {type_needle_v} "
              "for {query} mentioned in the provided text?",
              "The special magic {type_needle_v} for {query} mentioned in the provided text is")
RULER_MV = ("Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. I "
            "will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat are all the special magic "
            "{type_needle_v} for {query} mentioned in the provided text?",
            "The special magic {type_needle_v} for {query} mentioned in the provided text are")
RULER_VT = ("{example}Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
            "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.",
            "Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
            "assigned the value {query}, they are:")
JSON_KV = ("{context}\n\nExtract the value corresponding to the specified key in the JSON object below.\n\n{demos}"
           "Key: {question}", "Corresponding value:")
RAG = ("Use the given documents to write a concise and short answer to the question. Write your answer in the "
       "following format:\nAnswer: [answer]\n\n{demos}{context}\n\nQuestion: {question}", "Answer:")
RERANK = ("You are provided with a list of documents, each indicated by their ID. Rank each document based on their "
          "relevance to the question in descending order from most relelvant to least relevant texts. Include all "
          "documents in the rankings. Write your answer using the unique IDs, with the following format:\nRanking: "
          "ID3 > ID1 > ID2\n\n{demos}{context}\n\nQuery: {question}", "Ranking:")

# A task as HELMET configures it: its category (collect_results.py), (user, system) templates joined by `sep` into
# the completion prompt, generation budget, whether HELMET's config asks to stop at a newline, the metric that
# collect_results.py reads, and whether an instruct model gets the chat template (LongQA and Summ only).
Task = namedtuple("Task", "category templates gen_len stop_newline metric sep chat", defaults=("\n", False))
TASKS = {
    "json_kv": Task("Recall", JSON_KV, 100, False, "substring_exact_match"),
    "ruler_niah_mk_2": Task("Recall", RULER_NIAH, 50, False, "ruler_recall"),
    "ruler_niah_mk_3": Task("Recall", RULER_NIAH, 100, False, "ruler_recall"),
    "ruler_niah_mv": Task("Recall", RULER_MV, 50, False, "ruler_recall"),
    "ruler_vt": Task("RULER", RULER_VT, 50, False, "ruler_recall"),
    "kilt_nq": Task("RAG", RAG, 20, True, "substring_exact_match"),
    "kilt_triviaqa": Task("RAG", RAG, 20, True, "substring_exact_match"),
    "kilt_hotpotqa": Task("RAG", RAG, 20, True, "substring_exact_match"),
    "kilt_popqa_3": Task("RAG", RAG, 20, True, "substring_exact_match"),
    "msmarco_rerank_psg": Task("Re-rank", RERANK, 200, True, "NDCG@10"),
}
SYNTHETIC = ["json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv", "ruler_vt"]
CATEGORIES = {c: [t for t, spec in TASKS.items() if spec[0] == c] for c in ("Recall", "RAG", "Re-rank")}


def build_prompt(task, fields):
    user, system = TASKS[task][1]
    try:
        return user.format(**fields) + "\n" + system.format(**fields)
    except KeyError as e:
        raise ValueError(f"{task}: the record has no {e.args[0]!r} field, which the prompt template needs") from None


def prompt_fields(task, rec):
    """Template fields from a record in HELMET's published layout (synthetic records use the same layout)."""
    if task == "json_kv":
        demos = "\n\n".join(f"Key: {k}\nCorresponding value: {v}" for k, v in rec["demos"][:2])
        return {"context": rec["context"], "question": rec["question"], "demos": demos + "\n\n" if demos else ""}
    if task.startswith("ruler_"):
        example = rec.get("example") or ""
        return {"context": rec["context"], "query": rec.get("query", rec.get("question", "")),
                "example": example + "\n\n" if example else "", **{k: rec[k] for k in ("type_needle_v", "num_v")
                                                                    if k in rec}}
    return {"context": rec["context"], "question": rec["question"], "demos": rec.get("demos", "")}


def score(task, output, rec):
    if task == "json_kv":
        return sub_em(output, rec["answer"], prefix="corresponding value:")
    if task.startswith("ruler_"):
        return ruler_recall(output, rec.get("answer", rec.get("outputs")))
    if task.startswith("kilt_"):
        return sub_em(output, rec["answers"])
    return ndcg_at_k(parse_rankings(output), rec["qrels"], k=10)


def category_averages(scores):
    """HELMET's custom_avgs for the categories whose tasks ran: {category: {length: mean}}, with the members used."""
    out = {}
    for cat, members in CATEGORIES.items():
        for length in sorted({L for t in members for L in scores.get(t, {})}):
            have = [t for t in members if length in scores.get(t, {})]
            out.setdefault(cat, {})[length] = {"score": float(np.mean([scores[t][length] for t in have])),
                                              "tasks": have, "complete": len(have) == len(members)}
    return out

# ----------------------------------------------------------------------------------------------------------------
# HELMET's published data (--helmet-data DIR, the `data/` folder of princeton-nlp/HELMET)


# HELMET's file for each input length (configs/*_short.yaml and *.yaml), by number of pairs / passages.
KV_FILES = {4096: 50, 8192: 105, 16384: 220, 32768: 440, 65536: 900, 131072: 1800}
KILT_FILES = {8192: 50, 16384: 105, 32768: 220, 65536: 440, 131072: 1000}
MSMARCO_FILES = {8192: 50, 16384: 130, 32768: 285, 65536: 600, 131072: 1000}
RULER_DIRS = {"ruler_niah_mk_2": "niah_multikey_2", "ruler_niah_mk_3": "niah_multikey_3",
              "ruler_niah_mv": "niah_multivalue", "ruler_vt": "vt"}
KILT_NAMES = {"kilt_nq": ("nq-dev-multikilt_1000_k{k}_dep6", "nq-train-multikilt_1000_k3_dep6"),
              "kilt_triviaqa": ("triviaqa-dev-multikilt_1000_k{k}_dep6", "triviaqa-train-multikilt_1000_k3_dep6"),
              "kilt_hotpotqa": ("hotpotqa-dev-multikilt_1000_k{k}_dep3", "hotpotqa-train-multikilt_1000_k3_dep3"),
              "kilt_popqa_3": ("popqa_test_1000_k{k}_dep6", "popqa_test_1000_k3_dep6")}


def helmet_files(task, length, data_dir):
    """(test file, demo file or None) for a task at a length, or None when HELMET has no such file."""
    if task == "json_kv" and length in KV_FILES:
        return os.path.join(data_dir, "json_kv", f"test_k{KV_FILES[length]}_dep6.jsonl"), None
    if task in RULER_DIRS:
        return os.path.join(data_dir, "ruler", RULER_DIRS[task], f"validation_{length}.jsonl"), None
    if task in KILT_NAMES and length in KILT_FILES:
        test, demo = KILT_NAMES[task]
        return (os.path.join(data_dir, "kilt", test.format(k=KILT_FILES[length]) + ".jsonl"),
                os.path.join(data_dir, "kilt", demo + ".jsonl"))
    if task == "msmarco_rerank_psg" and length in MSMARCO_FILES:
        return (os.path.join(data_dir, "msmarco", f"test_reranking_data_k{MSMARCO_FILES[length]}_dep3.jsonl"),
                os.path.join(data_dir, "msmarco", "test_reranking_data_k10_dep3.jsonl"))
    return None


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        records = []
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not a JSON line ({e.msg})") from None
    return records


def _demo_order(key, demos, exclude=None):
    """Demonstrations in a per-question order seeded by sha256, as HELMET (its shuffle is `datasets`'s; ours is
    Python's, so the chosen demos differ from HELMET's while the format is the same)."""
    order = [d for d in demos if exclude is None or d[exclude[0]] != exclude[1]]
    random.Random(int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 2**31).shuffle(order)
    return order


PASSAGE_FIELDS = ("id", "title", "text", "label")  # the fields of a passage in a record's `ctxs`


def helmet_records(task, test_file, demo_file, samples, seed, shots=2):
    """`samples` records of a task's HELMET file, chosen with `seed`, with their prompt fields (and demonstrations
    from `demo_file`). A record without a field that the task reads is a one-line error naming the file."""
    data = read_jsonl(test_file)
    demos = read_jsonl(demo_file) if demo_file and os.path.exists(demo_file) else []
    try:
        return _helmet_records(task, data, demos, samples, seed, shots)
    except KeyError as e:
        field = e.args[0]
        passage = field in PASSAGE_FIELDS

        def lacks(records):
            if passage:
                return any(field not in c for r in records for c in r.get("ctxs") or [])
            return any(field not in r for r in records)
        path = test_file if lacks(data) or not demos or not lacks(demos) else demo_file
        where = "a record's passage (in ctxs)" if passage else "a record"
        raise ValueError(f"{path}: {where} has no {field!r} field, which {task} reads") from None


def _check_fields(task, rec):
    """Read what the prompt and the score will read, so that a missing field fails now, not after generation."""
    fields = prompt_fields(task, rec)
    for template in TASKS[task][1]:
        template.format(**fields)
    if task.startswith("ruler_") and "answer" not in rec and "outputs" not in rec:
        raise KeyError("outputs")
    score(task, "", rec)


def _helmet_records(task, data, demos, samples, seed, shots):
    if task == "kilt_popqa_3":  # HELMET keeps the long-tail questions only: log10(subject popularity) < 3
        data = [d for d in data if math.log10(d["s_pop"]) < 3]
        demos = [d for d in demos if math.log10(d["s_pop"]) < 3]
    data = random.Random(seed).sample(data, min(samples, len(data)))
    out = []
    for rec in data:
        rec = dict(rec)
        if task.startswith("kilt_"):
            passage = "Document (Title: {title}): {text}"
            key = rec.get("id", rec["question"])
            picked, seen = [], set()
            for d in _demo_order(key, demos, ("question", rec["question"]) if "popqa" in task else None):
                if d.get("id", d["question"]) not in seen and len(picked) < shots:
                    seen.add(d.get("id", d["question"]))
                    picked.append("\n\n".join(passage.format(**c) for c in d["ctxs"])
                                  + f"\n\nQuestion: {d['question']}\nAnswer: {d['answers'][0]}")
            rec["demos"] = "\n\n".join(picked) + "\n\n" if picked else ""
            rec["context"] = "\n\n".join(passage.format(**c) for c in rec["ctxs"])
        elif task == "msmarco_rerank_psg":
            passage = "[ID: {id}] Document (Title: {title}): {text}" if "title" in rec["ctxs"][0] \
                else "[ID: {id}] Document: {text}"
            text = ""
            seen = set()
            for d in _demo_order(str(rec["qid"]), demos, ("qid", rec["qid"])):
                if d["qid"] not in seen and len(seen) < shots:
                    seen.add(d["qid"])
                    ranking = " > ".join(str(c["id"]) for c in sorted(d["ctxs"], key=lambda c: -c["label"]))
                    text += "\n\n".join(passage.format(**c) for c in d["ctxs"]) + \
                        f"\n\nQuery: {d['query']}\nRanking: {ranking}\n\n"
            rec.update(demos=text, question=rec["query"], context="\n\n".join(passage.format(**c) for c in rec["ctxs"]),
                       qrels={str(c["id"]): int(c["label"]) for c in rec["ctxs"]})
        _check_fields(task, rec)
        out.append(rec)
    return out


def fit_context(task, fields, tok, budget):
    """BOS + prompt ids within `budget` tokens, cutting only the context from its end (HELMET's truncation)."""
    ids = [tok.bos_id] + tok.encode(build_prompt(task, fields))
    while len(ids) > budget:
        context = tok.encode(fields["context"])
        if not context:
            raise ValueError(f"{task}: the prompt without its context is {len(ids)} tokens, over the {budget} "
                             f"tokens left after generation")
        fields = dict(fields, context=tok.decode(context[:max(0, len(context) - (len(ids) - budget))]))
        ids = [tok.bos_id] + tok.encode(build_prompt(task, fields))
    return ids


def check_helmet_data(data_dir, tasks, lengths):
    """--helmet-data must be HELMET's data/ folder and hold a file for some task and length (lengths None: not
    known yet, check the folders only): otherwise the run would end with no task and no error."""
    expected = "HELMET's data/ folder (json_kv/, ruler/, kilt/, msmarco/ with HELMET's .jsonl files)"
    if not data_dir or not tasks:
        return
    if not os.path.isdir(data_dir):
        raise ValueError(f"--helmet-data {data_dir}: no such directory; expected {expected}")
    if not any(os.path.isdir(os.path.join(data_dir, d)) for d in ("json_kv", "ruler", "kilt", "msmarco")):
        raise ValueError(f"--helmet-data {data_dir} has none of json_kv/, ruler/, kilt/, msmarco/; expected {expected}")
    wanted = [f[0] for t in tasks for L in lengths or [] if (f := helmet_files(t, L, data_dir))]
    if lengths and not any(map(os.path.exists, wanted)):
        files = ", ".join(os.path.relpath(f, data_dir) for f in wanted[:4])
        raise ValueError(f"--helmet-data {data_dir} has no file for {','.join(tasks)} at lengths "
                         f"{','.join(map(str, lengths))}" + (f"; expected {files}" if files else
                                                             " (HELMET's files are for 8192 to 131072 tokens)"))
