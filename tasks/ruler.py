"""The rest of RULER (NVIDIA/RULER at e40fae1, its last commit of October 2024): niah_single_1/2/3, niah_multikey_1,
niah_multiquery, cwe, fwe, qa_1 (SQuAD) and qa_2 (HotpotQA), read from HELMET's data/ruler/ files or generated
offline as RULER's scripts/data/synthetic/*.py build them, and RULER's own score: string_match_all (string_match_part
for QA) on the generated text, averaged over its 13 tasks.

The one idea: these tasks run as HELMET's configs/ruler.yaml runs them (HELMET's templates and generation budgets,
scored with HELMET's ruler_recall / SubEM), while the RULER table scores the same outputs RULER's way: the
continuation alone (RULER's answer prefix is part of its prompt, not of its prediction), stripped and with control
characters turned into newlines (scripts/eval/evaluate.py), a gold string found lower-cased. RULER draws from one
global `random` per file; a generated record here draws from its own seeded generator, in RULER's order of draws,
and the shuffles RULER seeds with the file's seed (`random.Random(args.random_seed)`) use the run's seed.
"""

import json
import math
import os
import random
import re
import string

import numpy as np

from common import UserError
from tasks.common import calculate_metrics, encode_prompt, file_task, gold_list, parse_output
from tasks.recall import (NEEDLE, NOISE, RULER_DEPTHS, RULER_MV, RULER_NIAH, _random, check_length, essay_words,
                          ruler_fields, ruler_files, ruler_score, shuffled, synthetic_records)

# HELMET's templates (data.py load_ruler at 4526dfb); the niah ones are tasks.recall's
CWE = ("{example}Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
       "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?",
       "Answer: The top 10 words that appear most often in the list are:")
FWE = ("Read the following coded text and track the frequency of each coded word. Find the three most frequently "
       "appeared coded words.\n{context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
       "What are the three most frequently appeared words in the above coded text?",
       "Answer: According to the coded text above, the three most frequently appeared words are:")
QA = ("Answer the question based on the given documents. Only give me the answer and do not output any other words."
      "\n\nThe following are given documents.\n\n{context}\n\nAnswer the question based on the given documents. Only "
      "give me the answer and do not output any other words.\n\nQuestion: {question}", "Answer:")
# RULER's own cwe and fwe text (scripts/data/synthetic/constants.py: template + answer_prefix, as prepare.py joins
# them for a base model): the cwe one-shot example is written in it, and RULER sizes fwe by it
RULER_CWE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the "
             "ones that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?"
             " Answer: The top 10 words that appear most often in the list are:")
RULER_FWE = ("Read the following coded text and track the frequency of each coded word. Find the three most "
             "frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the "
             "dots '....'. What are the three most frequently appeared words in the above coded text? Answer: "
             "According to the coded text above, the three most frequently appeared words are:")

# ----------------------------------------------------------------------------------------------------------------
# RULER's metrics (scripts/eval/synthetic/constants.py, evaluate.py's postprocess_pred), per sample in [0, 1]


def postprocess(prediction):
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def string_match_all(prediction, golds):
    return sum(g.lower() in prediction.lower() for g in golds) / len(golds)


def string_match_part(prediction, golds):
    return float(max(g.lower() in prediction.lower() for g in golds))

# ----------------------------------------------------------------------------------------------------------------
# niah (scripts/data/synthetic/niah.py; the needle haystack of niah_multikey_2/3 is tasks.recall's)


def make_niah(haystack, kind_k, kind_v, num_k, num_v, num_q, file_seed):
    """RULER's generate_input_output for an essay or repeat haystack of n words / sentences."""
    num_k = max(num_k, num_q)

    def make(n, seed, depth=None):
        rng = random.Random(seed)
        keys, values, needles = [], [], []
        for _ in range(num_k):
            keys.append(_random(rng, kind_k))
            values.append([])
            for _ in range(num_v):
                values[-1].append(_random(rng, kind_v))
                needles.append(NEEDLE.format(type_needle_v=kind_v, key=keys[-1], value=values[-1][-1]))
        random.Random(file_seed).shuffle(needles)  # RULER: random.Random(args.random_seed), the file's seed
        if haystack == "essay":
            # RULER splits sentences with nltk's sent_tokenize; a punctuation rule does it on this text
            sents = re.split(r"(?<=[.!?])\s+", " ".join(essay_words(n)).strip())
            depths = rng.sample(RULER_DEPTHS, len(needles))
            cuts = [0] + sorted(int(len(sents) * (d / 100)) for d in depths) + [len(sents)]
            parts = []
            for i in range(1, len(cuts)):
                parts.append(" ".join(sents[cuts[i - 1]:cuts[i]]))
                if i - 1 < len(needles):
                    parts.append(needles[i - 1])
            context, where = " ".join(parts), depths[0] / 100
        else:  # "repeat": the noise paragraph n times, one per line, needles inserted at random lines
            sents = [NOISE] * max(n, len(needles))
            indexes = sorted(rng.sample(range(n), len(needles)), reverse=True)
            for index, needle in zip(indexes, needles):
                sents.insert(index, needle)
            context, where = "\n".join(sents), indexes[-1] / n
        chosen = rng.sample(range(num_k), num_q)
        queries = [keys[i] for i in chosen]
        query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
        single = num_q * num_v == 1  # RULER: "numbers" -> "number" for a single answer
        return {"context": context, "query": query, "type_needle_v": kind_v[:-1] if single else kind_v,
                "outputs": [a for i in chosen for a in values[i]], "depth": where if len(needles) == 1 else None}
    return make

# ----------------------------------------------------------------------------------------------------------------
# cwe (scripts/data/synthetic/common_words_extraction.py: freq_cw 30, freq_ucw 3, num_cw 10)

_CWE_WORDS = None


def cwe_words():
    """RULER's list: sorted(set(nouns + adjs + verbs)) of wonderwords' shipped files, read as RULER reads them."""
    global _CWE_WORDS
    if _CWE_WORDS is None:
        from importlib.resources import files
        try:
            words = []
            for name in ("nounlist.txt", "adjectivelist.txt", "verblist.txt"):
                with files("wonderwords").joinpath("assets", name).open("r") as f:
                    words += [w.rstrip() for w in f.readlines()]
        except (ImportError, OSError):
            raise UserError("ruler_cwe needs RULER's word lists: pip install wonderwords") from None
        _CWE_WORDS = sorted(set(words))
    return _CWE_WORDS


def cwe_maker(length, file_seed):
    words = list(cwe_words())
    random.Random(file_seed).shuffle(words)
    repeats = (3, 1, 6, 1) if length < 4096 else (10, 3, 30, 3)  # RULER's example / test frequencies

    def example(rng, n, common, uncommon):
        chosen = rng.sample(words, n)
        listed = chosen[:10] * common + chosen[10:] * uncommon
        random.Random(file_seed).shuffle(listed)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), chosen[:10]

    def make(n, seed, depth=None):
        rng = random.Random(seed)
        ctx_example, answer_example = example(rng, 20 if length < 4096 else 40, *repeats[:2])
        context, answer = example(rng, min(max(n, 11), len(words)), *repeats[2:])  # RULER caps at the list
        shot = RULER_CWE.format(context=ctx_example) + " ".join(f"{i + 1}. {w}" for i, w in enumerate(answer_example))
        return {"context": context, "example": shot, "outputs": answer, "depth": None}
    return make

# ----------------------------------------------------------------------------------------------------------------
# fwe (scripts/data/synthetic/freq_words_extraction.py: alpha 2, coded words of 6 letters, vocab length // 50)


def fwe_text(rng, file_seed, vocab_size, num_words, alpha=2.0):
    vocab = ["".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(vocab_size)]
    while len(set(vocab)) < vocab_size:
        vocab.append("".join(rng.choices(string.ascii_lowercase, k=6)))
    vocab = sorted(set(vocab))
    random.Random(file_seed).shuffle(vocab)
    vocab[0] = "..."  # the most frequent "word" is noise
    counts = (num_words * (np.arange(1, len(vocab) + 1) ** -alpha) / (math.pi ** 2 / 6)).astype(int)  # zeta(2)
    words = [w for w, c in zip(vocab, counts) for _ in range(c)]
    random.Random(file_seed).shuffle(words)
    return " ".join(words), vocab[1:4]


def fwe_records(length, run):
    """RULER at e40fae1 sizes fwe by its own prompt text alone, up to the full length (its tokens_to_generate is not
    subtracted: fixed in 2025), on a grid of length // 32 words from length // 6; every sample redraws its vocabulary
    and steps down while over. HELMET then cuts the context to fit its generation budget."""
    vocab_size, step = max(4, length // 50), max(1, length // 32)
    tokens = lambda text: len(run.tok.encode(RULER_FWE.format(context=text)))
    probe = random.Random(f"{run.seed}-ruler_fwe-{length}-probe")
    n = length // 6
    while tokens(fwe_text(probe, run.seed, vocab_size, n)[0]) < length:
        n += step
    n = max(step, n - step)
    records = []
    for i in range(run.samples):
        s, used = f"{run.seed}-ruler_fwe-{length}-{i}", n
        while True:
            context, answer = fwe_text(random.Random(s), run.seed, vocab_size, used)
            if tokens(context) <= length or used <= step:
                break
            used -= step
        records.append({"context": context, "outputs": answer, "depth": None})
    return records, "synthetic (tasks/ruler.py; RULER's fwe, sized by its own prompt in this tokenizer's tokens)"

# ----------------------------------------------------------------------------------------------------------------
# qa (scripts/data/synthetic/qa.py) from local copies of RULER's json/squad.json and json/hotpotqa.json

QA_FILES = {"ruler_qa_1": "squad.json", "ruler_qa_2": "hotpotqa.json"}


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_squad(path):
    data = read_json(path)
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = []
    for d in data["data"]:
        more = [index[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            for q in p["qas"]:
                if not q["is_impossible"]:
                    qas.append({"query": q["question"], "outputs": [a["text"] for a in q["answers"]],
                                "context": [index[p["context"]]],
                                "more_context": [i for i in more if i != index[p["context"]]]})
    return qas, docs


def read_hotpotqa(path):
    data = read_json(path)
    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    index = {c: i for i, c in enumerate(docs)}
    return [{"query": d["question"], "outputs": [d["answer"]],
             "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]]} for d in data], docs


def qa_record(q, docs, num_docs, rng, file_seed):
    """RULER's generate_input_output: the question's own documents, then (SQuAD) its article's other paragraphs,
    then random others, shuffled with the file's seed and numbered."""
    own, more = q["context"], q.get("more_context", [])
    if num_docs < len(docs):
        if num_docs - len(own) > len(more):
            taken = set(own + more)
            pool = [i for i in range(len(docs)) if i not in taken]
            chosen = own + more + rng.sample(pool, max(0, num_docs - len(own) - len(more)))
        else:
            chosen = own + rng.sample(more, num_docs - len(own))
        chosen = [docs[i] for i in chosen]
    else:
        chosen = list(docs)
    random.Random(file_seed).shuffle(chosen)
    context = "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(chosen))
    return {"context": context, "query": q["query"], "outputs": q["outputs"], "depth": None}


def qa_records(name, length, run, task):
    """Question i of the file for sample i, as RULER numbers them; the document count found on question 0 (RULER's
    search in steps of 10, here exact) and stepped down by 10 for a question whose prompt is over."""
    if not getattr(run, "ruler_qa", None):
        return None, f"{name}: no --ruler-qa DIR (RULER's json/{QA_FILES[name]}, from its download_qa_dataset.sh)"
    path = os.path.join(run.ruler_qa, QA_FILES[name])
    if not os.path.exists(path):
        raise UserError(f"--ruler-qa {run.ruler_qa}: no {QA_FILES[name]} (RULER's scripts/data/synthetic/json/)")
    try:
        qas, docs = (read_squad if name == "ruler_qa_1" else read_hotpotqa)(path)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not RULER's {QA_FILES[name]} format ({type(e).__name__}: {e})") from None
    budget = length - task.gen_len
    fits = lambda rec: len(encode(task, rec, run.tok)) <= budget
    lo, hi = 1, len(docs)
    while hi > lo:  # the most documents whose prompt for question 0 fits
        mid = (lo + hi + 1) // 2
        probe = qa_record(qas[0], docs, mid, random.Random(f"{run.seed}-{name}-{length}-0"), run.seed)
        lo, hi = (mid, hi) if fits(probe) else (lo, mid - 1)
    records = []
    for i, q in enumerate(qas[:run.samples]):
        n = lo
        while True:
            rec = qa_record(q, docs, n, random.Random(f"{run.seed}-{name}-{length}-{i}"), run.seed)
            if fits(rec) or n <= max(10, len(q["context"])):
                break
            n -= 10
        records.append(rec)
    return records, f"RULER's qa generator on {path}"


def encode(task, rec, tok):
    return encode_prompt(task, task.prompt(rec), tok)

# ----------------------------------------------------------------------------------------------------------------
# scores and the tasks


def qa_fields(rec):
    return {"context": rec["context"], "question": rec.get("query", rec.get("question", ""))}


def qa_score(output, rec):
    """HELMET's default_post_process on RULER's QA: utils.py's metrics, the better of the output and its parsed
    answer."""
    golds = rec["answer"] if "answer" in rec else rec["outputs"]
    mets = calculate_metrics(output, golds, rouge=False)
    parsed = parse_output(output)
    return {k: max(v, calculate_metrics(parsed, golds, rouge=False)[k]) for k, v in mets.items()} \
        if parsed is not None else mets


def simple_fields(rec):
    return ruler_fields(dict(rec, query=rec.get("query", "")))


def ruler_task(name, folder, templates, gen_len, metric, prompt, score, offline, check=None):
    """A RULER task read from HELMET's data/ruler/<folder>/validation_<length>.jsonl or made by `offline(length,
    run, task)`. Not in the default task list (HELMET runs these in its own ruler.yaml): --tasks ruler runs all 13."""
    task = file_task(name, shuffled, lambda length, run: offline(length, run, task), category="RULER",
                     templates=templates, gen_len=gen_len, stop_newline=False, metric=metric,
                     files=ruler_files(folder), prompt=prompt, score=score, available=lambda data_dir: False,
                     check_length=lambda length, tok: check(task, length, tok) if check else None)
    return task


def sized(maker, what):
    """Records of `maker(length, file seed)` -> make(n, record seed, depth) sized by tasks.recall's search."""
    def offline(length, run, task):
        records = synthetic_records(task, maker(length, run.seed), length, run.samples, run.tok, run.seed)
        return records, f"synthetic (tasks/ruler.py; {what}; sized in this tokenizer's tokens)"
    return offline


def niah(name, folder, gen_len, haystack, kind_k, kind_v, num_k=1, num_v=1, num_q=1):
    templates = RULER_MV if num_q * num_v > 1 else RULER_NIAH  # HELMET: "niah_mq" / "niah_mv" get the plural
    maker = lambda length, seed: make_niah(haystack, kind_k, kind_v, num_k, num_v, num_q, seed)
    return ruler_task(name, folder, templates, gen_len, "ruler_recall", ruler_fields, ruler_score,
                      sized(maker, f"RULER's niah, {haystack} haystack"),
                      lambda task, length, tok: check_length(task, maker(length, 0), length, tok))


niah_s_1 = niah("ruler_niah_s_1", "niah_single_1", 50, "repeat", "words", "numbers")
niah_s_2 = niah("ruler_niah_s_2", "niah_single_2", 50, "essay", "words", "numbers")
niah_s_3 = niah("ruler_niah_s_3", "niah_single_3", 50, "essay", "words", "uuids")
niah_mk_1 = niah("ruler_niah_mk_1", "niah_multikey_1", 50, "essay", "words", "numbers", num_k=4)
niah_mq = niah("ruler_niah_mq", "niah_multiquery", 100, "essay", "words", "numbers", num_k=4, num_q=4)
cwe = ruler_task("ruler_cwe", "cwe", CWE, 100, "ruler_recall", simple_fields, ruler_score,
                 sized(cwe_maker, "RULER's cwe on wonderwords' lists"),
                 lambda task, length, tok: check_length(task, cwe_maker(length, 0), length, tok))
fwe = ruler_task("ruler_fwe", "fwe", FWE, 50, "ruler_recall", simple_fields, ruler_score,
                 lambda length, run, task: fwe_records(length, run))
qa_1 = ruler_task("ruler_qa_1", "qa_1", QA, 50, "substring_exact_match", qa_fields, qa_score,
                  lambda length, run, task: qa_records("ruler_qa_1", length, run, task))
qa_2 = ruler_task("ruler_qa_2", "qa_2", QA, 50, "substring_exact_match", qa_fields, qa_score,
                  lambda length, run, task: qa_records("ruler_qa_2", length, run, task))

# RULER's 13 tasks (HELMET's names) and RULER's metric of each: the RULER table averages these
RULER_METRICS = {name: string_match_all for name in [
    "ruler_niah_s_1", "ruler_niah_s_2", "ruler_niah_s_3", "ruler_niah_mk_1", "ruler_niah_mk_2", "ruler_niah_mk_3",
    "ruler_niah_mq", "ruler_niah_mv", "ruler_cwe", "ruler_fwe", "ruler_vt"]}
RULER_METRICS.update({"ruler_qa_1": string_match_part, "ruler_qa_2": string_match_part})


def ruler_match(task, text, rec):
    """RULER's score of one generated text (the continuation alone) against the record's gold strings."""
    golds = gold_list(rec["answer"] if "answer" in rec else rec["outputs"])
    return RULER_METRICS[task](postprocess(text), golds)


def ruler_scores(task, results):
    """RULER's score (x100) of a task's per-sample results, from the generated text and the gold strings."""
    return 100 * float(np.mean([ruler_match(task, r["output"], {"outputs": r["answer"]}) for r in results]))


RULER = list(RULER_METRICS)  # HELMET's configs/ruler.yaml order
ONLY_HERE = ["ruler_niah_s_1", "ruler_niah_s_2", "ruler_niah_s_3", "ruler_niah_mk_1", "ruler_niah_mq", "ruler_cwe",
             "ruler_fwe", "ruler_qa_1", "ruler_qa_2"]  # this file's tasks: run with --tasks ruler, not by default
