"""
HELMET's Recall, RAG and Re-rank tasks, as data: prompt templates, readers for HELMET's published data folder, the
selection of samples and demonstrations, prompt assembly and truncation, metrics, and the two category tables.
Nothing here knows about models: evaluate.py runs a checkpoint on what this file defines. The synthetic JSON KV and
RULER records are made by ruler.py; ICL, LongQA and Summ are in helmet_long.py. Everything follows HELMET's code at
commit 4526dfb (data.py, eval.py, model_utils.py, utils.py, scripts/), the code behind the published HELMET and
ProLong numbers (facts in shared/HELMET.md).

- Completion mode. Every task has a user and a system template; the prompt is `user + sep + system` formatted with
  the record's fields, tokenised with the tokenizer's own defaults (a BOS only where it adds one: Llama-3 does),
  and continued greedily for the task's budget. LongQA and Summ on an instruct model use the chat template instead
  (the user template as the only message). Before scoring, the system template is put back in front of a
  completion-mode output, as HELMET's eval.py does, so that "Answer: ..." parsing sees the prefix it completed.
- A newline stop: HELMET's configs ask for it on RAG, re-rank and ICL, but its code at 4526dfb never applied it
  (the flag is spelled --stop_newline, the configs' key stop_new_line). Task.stop_newline records the configs'
  wish; evaluate.py applies it only with --stop-newline.
- Lengths count prompt + generation. A prompt that is too long loses the end of its `context` (and only that), cut
  once at the character where the kept tokens end (fit_context).
- Selection: KILT and MS MARCO `random.seed(seed); random.sample(sorted(unique keys), samples)`, keeping every row of
  the chosen keys; JSON KV and RULER files `datasets`' shuffle(seed), i.e. np.random.default_rng(seed).permutation.
  Demonstrations: the pool shuffled with sha256(key) % 2**31, duplicates dropped, the first two.
- Metrics, averaged over samples and x100: SubEM (normalised gold answer is a substring of the normalised output,
  max over the raw output and the text after the "Answer:"-style prefix), `ruler_recall` (share of gold strings
  found, lower-cased), nDCG@10 (trec_eval's, linear gain on graded labels 0-3, over the longest "ID > ID" chain).
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


def gold_list(answers):
    if isinstance(answers, str):
        return [answers]
    return [a for x in answers for a in (x if isinstance(x, list) else [x])]


def substring_exact_match(prediction, answers):
    return float(max(normalize_answer(a) in normalize_answer(prediction) for a in gold_list(answers)))


def sub_em(output, answers, prefix="Answer:"):
    """HELMET's SubEM: the better of the raw output and the parsed answer after `prefix`."""
    parsed = parse_output(output, prefix)
    score = substring_exact_match(output, answers)
    return max(score, substring_exact_match(parsed, answers)) if parsed is not None else score


def ruler_recall(prediction, answers):
    answers = gold_list(answers)
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
# Two ways to average tasks into categories. HELMET's (scripts/collect_results.py custom_avgs), and the ProLong
# paper's own (its Table 13), which keeps fewer tasks per category. The ICL, LongQA and Summ tasks are defined in
# helmet_long.py.
CATEGORIES = {
    "Recall": ["json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv"],
    "RAG": ["kilt_nq", "kilt_triviaqa", "kilt_hotpotqa", "kilt_popqa_3"],
    "Re-rank": ["msmarco_rerank_psg"],
    "ICL": ["icl_trec_coarse", "icl_trec_fine", "icl_banking77", "icl_clinic150", "icl_nlu"],
    "LongQA": ["narrativeqa", "infbench_qa_eng", "infbench_choice_eng"],
    "Summ": ["infbench_sum_eng", "multi_lexsum"],
}
PAPER_CATEGORIES = {
    "Recall": ["json_kv"],
    "RAG": ["kilt_nq", "kilt_hotpotqa", "kilt_popqa_3"],
    "Re-rank": ["msmarco_rerank_psg"],
    "ICL": ["icl_trec_coarse", "icl_trec_fine", "icl_nlu", "icl_banking77", "icl_clinic150"],
    "QA": ["narrativeqa"],
    "Summ": ["multi_lexsum"],
}


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


def category_averages(scores, categories=CATEGORIES):
    """Category means over the tasks that ran: {category: {length: {score, tasks used, complete}}}."""
    out = {}
    for cat, members in categories.items():
        for length in sorted({L for t in members for L in scores.get(t, {})}):
            have = [t for t in members if length in scores.get(t, {})]
            out.setdefault(cat, {})[length] = {"score": float(np.mean([scores[t][length] for t in have])),
                                              "tasks": have, "complete": len(have) == len(members)}
    return out

# ----------------------------------------------------------------------------------------------------------------
# HELMET's published data (--helmet-data DIR, the `data/` folder of princeton-nlp/HELMET)


# HELMET's file for each input length (configs/*_short.yaml and *.yaml), by number of pairs / passages.
KV_FILES = {4096: 50, 8192: 105, 16384: 220, 32768: 440, 65536: 900, 131072: 1800}
KILT_FILES = {4096: 20, 8192: 50, 16384: 105, 32768: 220, 65536: 440, 131072: 1000}
MSMARCO_FILES = {4096: 14, 8192: 50, 16384: 130, 32768: 285, 65536: 600, 131072: 1000}
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
                if not isinstance(records[-1], dict):
                    raise ValueError(f"{path}:{i}: expected a JSON object per line, found {line.strip()[:60]}")
    return records


def shuffle_order(n, seed):
    """The order of `datasets`' Dataset.shuffle(seed=seed): np.random.default_rng(seed).permutation(n)."""
    return np.random.default_rng(seed).permutation(n)


def sample_keys(data, key, samples, seed):
    """HELMET's KILT / MS MARCO selection: random.seed(seed); random.sample(sorted(unique keys), samples), keeping
    every row of the chosen keys, in file order (data.filter)."""
    keys = sorted({d[key] for d in data})
    chosen = set(random.Random(seed).sample(keys, min(samples, len(keys))))
    return [d for d in data if d[key] in chosen]


def pick_demos(sample_key, pool, key, shots):
    """HELMET's demonstrations for one test question: pool.shuffle(seed=sha256(str(sample_key)) % 2**31), drop
    duplicate keys keeping the first, take `shots` (keys compared as they are; the seed from their str)."""
    h = int(hashlib.sha256(str(sample_key).encode("utf-8")).hexdigest(), 16) % 2**31
    picked, seen = [], set()
    for i in shuffle_order(len(pool), h):
        if len(picked) == shots:
            break
        if pool[i][key] not in seen:
            seen.add(pool[i][key])
            picked.append(pool[i])
    return picked


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
    except ValueError as e:  # a field with a value the task cannot use
        raise ValueError(f"{test_file}" + (f" or {demo_file}" if demos else "") + f": {e}") from None


def _checked(task, rec):
    """Read what the prompt and the score will read, so that a missing field fails now, not after generation."""
    fields = prompt_fields(task, rec)
    for template in TASKS[task][1]:
        template.format(**fields)
    if task.startswith("ruler_") and "answer" not in rec and "outputs" not in rec:
        raise KeyError("outputs")
    score(task, "", rec)
    return rec


def _helmet_records(task, data, demos, samples, seed, shots):
    if task == "json_kv" or task.startswith("ruler_"):  # HELMET: data.shuffle(seed).select(range(samples))
        return [_checked(task, dict(data[i])) for i in shuffle_order(len(data), seed)[:samples]]
    if task == "kilt_popqa_3":  # HELMET keeps the long-tail questions only: log10(subject popularity) < 3
        def long_tail(d):
            if not isinstance(d["s_pop"], (int, float)) or d["s_pop"] <= 0:
                raise ValueError(f"a PopQA record has s_pop {d['s_pop']!r}: HELMET's log10 filter needs a "
                                 f"positive popularity")
            return math.log10(d["s_pop"]) < 3
        data, demos = [d for d in data if long_tail(d)], [d for d in demos if long_tail(d)]
    if task.startswith("kilt_"):
        key = "id" if data and "id" in data[0] else "question"  # HELMET: NQ has no id, questions are unique
        passage = "Document (Title: {title}): {text}"
        out = []
        for rec in sample_keys(data, key, samples, seed):
            pool = [d for d in demos if d[key] != rec[key]] if "popqa" in task else demos  # PopQA: one split
            picked = ["\n\n".join(passage.format(**c) for c in d["ctxs"])
                      + f"\n\nQuestion: {d['question']}\nAnswer: {d['answers'][0]}"
                      for d in pick_demos(rec[key], pool, key, shots)]
            out.append(_checked(task, dict(rec, demos="\n\n".join(picked) + "\n\n" if picked else "",
                                           context="\n\n".join(passage.format(**c) for c in rec["ctxs"]))))
        return out
    # msmarco_rerank_psg
    key = "qid" if data and "qid" in data[0] else "query"
    data = sample_keys(data, key, samples, seed)
    if len(demos) > 2 * len(data):  # HELMET: a large demo pool loses every test question once, up front
        qids = {d["qid"] for d in data}
        demos, filtered = [d for d in demos if d["qid"] not in qids], True
    else:
        filtered = False
    out = []
    for rec in data:
        passage = "[ID: {id}] Document (Title: {title}): {text}" if "title" in rec["ctxs"][0] \
            else "[ID: {id}] Document: {text}"
        pool = demos if filtered else [d for d in demos if d["qid"] != rec["qid"]]
        text = ""
        for d in pick_demos(rec["qid"], pool, "qid", shots):
            ranking = " > ".join(str(c["id"]) for c in sorted(d["ctxs"], key=lambda c: -c["label"]))
            text += "\n\n".join(passage.format(**c) for c in d["ctxs"])
            text += f"\n\nQuery: {d['query']}\nRanking: {ranking}\n\n"
        out.append(_checked(task, dict(rec, demos=text, question=rec["query"],
                                       context="\n\n".join(passage.format(**c) for c in rec["ctxs"]),
                                       qrels={str(c["id"]): int(c["label"]) for c in rec["ctxs"]})))
    return out


def encode_prompt(spec, fields, tok, chat=False):
    """A task's prompt as ids, as HELMET's model_utils.tokenize builds it. Completion mode: user + sep + system
    templates, tokenised with the tokenizer's defaults (a BOS only where the tokenizer adds one: Llama-3 does). Chat
    mode (an instruct model on LongQA/Summ): the user template alone as the one user message, no system message
    (HELMET's HFModel passes none), then the assistant header; the chat format brings its own BOS."""
    spec = TASKS[spec] if isinstance(spec, str) else spec  # a helmet.py task's name, or any Task
    user, system = spec.templates
    if chat:
        from tokenizer import chat_ids
        # Llama-3's chat template trims each message (`message['content'] | trim`), so HELMET's prompt is trimmed
        return chat_ids(tok, [{"role": "user", "content": user.format(**fields).strip()}],
                        add_generation_prompt=True)[0]
    bos = [tok.bos_id] if getattr(tok, "add_bos", True) else []
    return bos + tok.encode(user.format(**fields) + spec.sep + system.format(**fields))


def fit_context(spec, fields, tok, budget, chat=False):
    """(ids, fields) of a prompt within `budget` tokens where HELMET's would be: when too long, the context alone is
    cut once, at the start of the context token that leaves `budget` (HELMET cuts at that token's character offset
    and does not re-check, so a re-tokenised boundary can leave a token or two over; so does this)."""
    ids = encode_prompt(spec, fields, tok, chat)
    excess = len(ids) - budget
    if excess > 0:
        context = fields["context"]
        ctx = tok.encode(context)
        if excess > len(ctx):
            raise ValueError(f"the prompt without its context is {len(ids) - len(ctx)} tokens, over the {budget} "
                             f"tokens left after generation")
        kept = tok.decode(ctx[:len(ctx) - excess])
        # the kept tokens' text is the context's prefix, except where a cut splits a multi-byte character
        fields = dict(fields, context=context[:len(kept)] if context.startswith(kept) else kept)
        ids = encode_prompt(spec, fields, tok, chat)
    return ids, fields


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
                                                             " (HELMET's files are for 4096 to 131072 tokens)"))
