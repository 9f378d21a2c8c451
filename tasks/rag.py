"""HELMET's RAG (KILT's NQ, TriviaQA, HotpotQA, PopQA) and Re-rank (MS MARCO) tasks, read from HELMET's published
data/ folder: file names by length, the selection of test questions and of their demonstrations, passages, and the
nDCG@10 of a parsed ranking.

The one idea: HELMET picks by key, not by row. `random.seed(seed); random.sample(sorted(unique keys), samples)`
keeps every row (every depth) of the chosen questions, and each question seeds the shuffle of its own demo pool
with sha256(key) % 2**31, drops duplicate keys keeping the first and takes two (HELMET's data.py at 4526dfb).
"""

import hashlib
import json
import math
import os
import random
import re

from tasks.common import expect, expect_strings, file_task, shuffle_order, sub_em

RAG = ("Use the given documents to write a concise and short answer to the question. Write your answer in the "
       "following format:\nAnswer: [answer]\n\n{demos}{context}\n\nQuestion: {question}", "Answer:")
RERANK = ("You are provided with a list of documents, each indicated by their ID. Rank each document based on their "
          "relevance to the question in descending order from most relelvant to least relevant texts. Include all "
          "documents in the rankings. Write your answer using the unique IDs, with the following format:\nRanking: "
          "ID3 > ID1 > ID2\n\n{demos}{context}\n\nQuery: {question}", "Ranking:")

# HELMET's file for each input length (configs/*_short.yaml and *.yaml), by number of passages
KILT_FILES = {4096: 20, 8192: 50, 16384: 105, 32768: 220, 65536: 440, 131072: 1000}
MSMARCO_FILES = {4096: 14, 8192: 50, 16384: 130, 32768: 285, 65536: 600, 131072: 1000}


def kilt_files(test, demo):
    def files(length, data_dir):
        if length not in KILT_FILES:
            return None
        return (os.path.join(data_dir, "kilt", test.format(k=KILT_FILES[length]) + ".jsonl"),
                os.path.join(data_dir, "kilt", demo + ".jsonl"))
    return files


def msmarco_files(length, data_dir):
    if length not in MSMARCO_FILES:
        return None
    return (os.path.join(data_dir, "msmarco", f"test_reranking_data_k{MSMARCO_FILES[length]}_dep3.jsonl"),
            os.path.join(data_dir, "msmarco", "test_reranking_data_k10_dep3.jsonl"))

# ----------------------------------------------------------------------------------------------------------------
# selection (HELMET's data.py)


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


def long_tail(d):
    """PopQA: HELMET keeps the long-tail questions only, log10(subject popularity) < 3."""
    if not isinstance(d["s_pop"], (int, float)) or d["s_pop"] <= 0:
        raise ValueError(f"a PopQA record has s_pop {d['s_pop']!r}: HELMET's log10 filter needs a positive "
                         f"popularity")
    return math.log10(d["s_pop"]) < 3


def passages(row, fields):
    """A record's `ctxs`: a non-empty list of passage objects, each with string `fields`."""
    for c in expect(row, "ctxs", list, "a non-empty list of passages ({\"title\": ..., \"text\": ...})"):
        if not isinstance(c, dict):
            raise ValueError(f"field 'ctxs' holds {json.dumps(c)[:60]}: expected passage objects")
        for f in fields:
            if f in c and not isinstance(c[f], str):
                raise ValueError(f"a passage's {f!r} is {json.dumps(c[f])[:60]}: expected text")
    return row["ctxs"]


def kilt_check(row):
    expect(row, "question", str, "the question")
    expect_strings(row, "answers", "the gold answers (a list of strings)")
    passages(row, ("title", "text"))


def kilt_select(popqa):
    def select(data, demos, samples, seed, shots):
        for row in data + demos:
            kilt_check(row)
        if popqa:
            data, demos = [d for d in data if long_tail(d)], [d for d in demos if long_tail(d)]
        key = "id" if data and "id" in data[0] else "question"  # HELMET: NQ has no id, questions are unique
        passage = "Document (Title: {title}): {text}"
        out = []
        for rec in sample_keys(data, key, samples, seed):
            pool = [d for d in demos if d[key] != rec[key]] if popqa else demos  # PopQA: one split
            picked = ["\n\n".join(passage.format(**c) for c in d["ctxs"])
                      + f"\n\nQuestion: {d['question']}\nAnswer: {d['answers'][0]}"
                      for d in pick_demos(rec[key], pool, key, shots)]
            out.append(dict(rec, demos="\n\n".join(picked) + "\n\n" if picked else "",
                            context="\n\n".join(passage.format(**c) for c in rec["ctxs"])))
        return out
    return select


def msmarco_select(data, demos, samples, seed, shots):
    for row in data + demos:
        expect(row, "query", str, "the query")
        for c in passages(row, ("title", "text")):
            if not isinstance(c["label"], int) or isinstance(c["label"], bool):
                raise ValueError(f"a passage's 'label' is {json.dumps(c['label'])[:60]}: expected a relevance 0-3")
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
        out.append(dict(rec, demos=text, question=rec["query"],
                        context="\n\n".join(passage.format(**c) for c in rec["ctxs"]),
                        qrels={str(c["id"]): int(c["label"]) for c in rec["ctxs"]}))
    return out

# ----------------------------------------------------------------------------------------------------------------
# scores


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


def rerank_score(output, qrels):
    """HELMET's NDCG@10 of a sample: calculate_retrieval_metrics runs on one query at a time and rounds its mean,
    that one value, to 5 decimals (utils.py)."""
    return round(ndcg_at_k(parse_rankings(output), qrels, k=10), 5)


def fields(rec):
    return {"context": rec["context"], "question": rec["question"], "demos": rec.get("demos", "")}

# ----------------------------------------------------------------------------------------------------------------
# the tasks


def kilt(name, test, demo):
    return file_task(name, kilt_select(name == "kilt_popqa_3"), category="RAG", templates=RAG, gen_len=20,
                     stop_newline=True, metric="substring_exact_match", files=kilt_files(test, demo), prompt=fields,
                     count=lambda recs: len({(r.get("id"), r["question"]) for r in recs}),  # a row per depth
                     score=lambda output, rec: {"substring_exact_match": sub_em(output, rec["answers"])})


kilt_nq = kilt("kilt_nq", "nq-dev-multikilt_1000_k{k}_dep6", "nq-train-multikilt_1000_k3_dep6")
kilt_triviaqa = kilt("kilt_triviaqa", "triviaqa-dev-multikilt_1000_k{k}_dep6",
                     "triviaqa-train-multikilt_1000_k3_dep6")
kilt_hotpotqa = kilt("kilt_hotpotqa", "hotpotqa-dev-multikilt_1000_k{k}_dep3", "hotpotqa-train-multikilt_1000_k3_dep3")
kilt_popqa = kilt("kilt_popqa_3", "popqa_test_1000_k{k}_dep6", "popqa_test_1000_k3_dep6")
msmarco = file_task("msmarco_rerank_psg", msmarco_select, category="Re-rank", templates=RERANK, gen_len=200,
                    stop_newline=True, metric="NDCG@10", files=msmarco_files, prompt=fields,
                    count=lambda recs: len({(r.get("qid"), r["query"]) for r in recs}),
                    score=lambda output, rec: {"NDCG@10": rerank_score(output, rec["qrels"])})
