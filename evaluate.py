"""
Long-context evaluation of a checkpoint: HELMET-format recall tasks, HELMET data files, perplexity by position.

    python evaluate.py --ckpt DIR_OR_HUB_ID [--tasks json_kv,ruler_niah_mv,...] [--lengths 8192,16384]
                       [--samples 100] [--helmet-data HELMET/data] [--ppl DOMAIN_DIR_OR_TEXT] [--out results.json]

How HELMET evaluates, and so how this file does (facts in shared/HELMET.md, from princeton-nlp/HELMET):
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
- Perplexity by position: per-token losses of each document's first `length` tokens, summed per position bucket
  and over the second half of each document (the ProLong paper's "last 32K of 64K" measure).
"""

import argparse
import ast
import hashlib
import json
import math
import os
import random
import re
import string
import sys
import sysconfig
import time
import uuid

import numpy as np
import torch


def log(*args):
    print(*args, file=sys.stderr, flush=True)  # progress goes to stderr; the table goes to stdout

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
# tasks: templates, generation lengths, metrics (HELMET's data.py and configs/*.yaml)


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

# name: (category, templates, generation tokens, stop at newline, metric). Names and categories are HELMET's.
TASKS = {
    "json_kv": ("Recall", JSON_KV, 100, False, "substring_exact_match"),
    "ruler_niah_mk_2": ("Recall", RULER_NIAH, 50, False, "ruler_recall"),
    "ruler_niah_mk_3": ("Recall", RULER_NIAH, 100, False, "ruler_recall"),
    "ruler_niah_mv": ("Recall", RULER_MV, 50, False, "ruler_recall"),
    "ruler_vt": ("RULER", RULER_VT, 50, False, "ruler_recall"),
    "kilt_nq": ("RAG", RAG, 20, True, "substring_exact_match"),
    "kilt_triviaqa": ("RAG", RAG, 20, True, "substring_exact_match"),
    "kilt_hotpotqa": ("RAG", RAG, 20, True, "substring_exact_match"),
    "kilt_popqa_3": ("RAG", RAG, 20, True, "substring_exact_match"),
    "msmarco_rerank_psg": ("Re-rank", RERANK, 200, True, "NDCG@10"),
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

# ----------------------------------------------------------------------------------------------------------------
# synthetic task generation (lost-in-the-middle JSON KV; RULER niah and variable tracking)


NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KV_DEPTHS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # "dep6": six positions of the gold key, first to last
RULER_DEPTHS = [int(x) for x in np.round(np.linspace(0, 100, num=40, endpoint=True))]
ADJECTIVES = ("able acid angry brave bright broad calm cheap clean clever cold cool curly damp dark dear deep dry "
              "eager early easy empty fair fancy fast fierce flat fresh gentle giant glad gold grand great green "
              "happy hard heavy high hollow huge humble icy jolly keen kind large late lazy light little lively "
              "long loud lucky mad merry mighty modern narrow neat new nice noisy odd old pale plain polite proud "
              "quick quiet rapid rare raw rich ripe rough round royal rude sad safe salty sharp shiny short shy "
              "silent silly slow small smart smooth soft solid sour spicy steep sticky stiff strange strong sunny "
              "sweet swift tall tame tender thick thin tidy tiny tough vast warm weak wet wide wild wise young").split()
NOUNS = ("actor anchor apple arrow badge baker bamboo banana basket beach bell berry bird blanket boat bottle "
         "bridge brush bucket butter cabin camera candle canyon carpet castle cattle cellar chair cherry circle "
         "cloud clover coast comet copper cotton crayon cricket crown curtain desert diamond dolphin dragon drum "
         "eagle engine falcon feather fence forest fossil fountain garden garlic glacier guitar hammer harbor "
         "helmet honey island jacket jungle kettle kitten ladder lantern lemon lizard magnet maple marble meadow "
         "mirror monkey needle orchard otter oyster paddle palace parrot pebble pepper piano pillow planet "
         "pocket pond puzzle quilt rabbit radio river rocket saddle salmon shadow shell silver spider spoon "
         "squirrel statue stone sugar temple thunder tiger tomato tower tractor trumpet tulip turtle valley "
         "violin wagon walnut whale window wizard").split()


def _random(rng, kind):
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))  # uuids, as str(uuid.uuid4()) but seeded


def make_json_kv(n, seed, depth):
    rng = random.Random(seed)
    pairs, keys = [], set()
    while len(pairs) < n + 2:
        key = _random(rng, "uuids")
        if key not in keys:
            keys.add(key)
            pairs.append((key, _random(rng, "uuids")))
    demos, pairs = pairs[:2], pairs[2:]  # the demonstrations use keys that are not in the JSON
    gold = round(depth * (n - 1))
    context = "{" + ",\n ".join(f'"{k}": "{v}"' for k, v in pairs) + "}"
    return {"context": context, "demos": [list(d) for d in demos], "question": pairs[gold][0],
            "answer": pairs[gold][1], "depth": depth, "num_kvs": n}


def make_niah_mk(task, n, seed, depth):
    """RULER niah_multikey_2 (word keys, 7-digit values) / _3 (uuids): one gold needle among n distractor needles."""
    rng = random.Random(seed)
    kind_k, kind_v = ("words", "numbers") if task == "ruler_niah_mk_2" else ("uuids", "uuids")
    key, value = _random(rng, kind_k), _random(rng, kind_v)
    haystack = []
    while len(haystack) < n:
        k = _random(rng, kind_k)
        if k != key:  # a distractor with the gold key would make the question ambiguous
            haystack.append(NEEDLE.format(type_needle_v=kind_v, key=k, value=_random(rng, kind_v)))
    haystack.insert(round(depth * n), NEEDLE.format(type_needle_v=kind_v, key=key, value=value))
    return {"context": "\n".join(haystack), "query": key, "type_needle_v": kind_v[:-1], "outputs": [value],
            "depth": depth}


_DOCSTRINGS = []  # stdlib docstrings read so far, in a fixed order (files sorted by name)


def essay_words(n):
    """The first n words of this Python's standard-library docstrings (cycled): niah_mv's offline haystack."""
    files = sorted(f for f in os.listdir(sysconfig.get_paths()["stdlib"]) if f.endswith(".py"))
    words = [w for d in _DOCSTRINGS for w in d]
    for name in files[len(_DOCSTRINGS):]:
        if len(words) >= n:
            break
        try:
            with open(os.path.join(sysconfig.get_paths()["stdlib"], name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, UnicodeDecodeError, ValueError):
            tree = ast.Module(body=[], type_ignores=[])
        docs = [ast.get_docstring(node) or "" for node in ast.walk(tree)
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        _DOCSTRINGS.append(" ".join(d for d in docs if len(d.split()) >= 20).split())
        words += _DOCSTRINGS[-1]
    if not words:
        raise RuntimeError("no standard-library docstrings found for the niah_mv haystack")
    return (words * (n // len(words) + 1))[:n]


def make_niah_mv(n, seed, depth=None):
    """RULER niah_multivalue: 4 values for one word key, needles at random RULER depths of an essay haystack."""
    rng = random.Random(seed)
    key = _random(rng, "words")
    values = [_random(rng, "numbers") for _ in range(4)]
    needles = [NEEDLE.format(type_needle_v="numbers", key=key, value=v) for v in values]
    rng.shuffle(needles)
    # RULER splits sentences with nltk; a punctuation rule does the same job on this text without the dependency
    sents = re.split(r"(?<=[.!?])\s+", " ".join(essay_words(n)).strip())
    cuts = [0] + sorted(int(len(sents) * d / 100) for d in rng.sample(RULER_DEPTHS, 4)) + [len(sents)]
    parts = []
    for i in range(1, len(cuts)):
        parts.append(" ".join(sents[cuts[i - 1]:cuts[i]]))
        if i - 1 < len(needles):
            parts.append(needles[i - 1])
    return {"context": " ".join(parts), "query": key, "type_needle_v": "numbers", "outputs": values, "depth": depth}


def _vt_context(rng, n, hops, name_len):
    names = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=name_len))
        if name not in names:
            names.append(name)
    value = rng.randint(10000, 99999)
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]
    sents = [NOISE + "\n"] * n
    if len(sents) <= len(chain):  # RULER: too few noise lines, so insert between sentences instead
        sents = [s + "." if s.strip() else s for noise in sents for s in noise.split(".")]
    for j, pos in enumerate(sorted(rng.sample(range(len(sents)), len(chain)))):
        sents.insert(pos + j, chain[j])
    return " ".join(sents).replace(". \n", ".\n"), str(value), names


def make_vt(n, seed, depth=None):
    """RULER variable tracking: one chain of 4 hops in n noise lines, after one solved example (RULER's few-shot)."""
    rng = random.Random(seed)
    ex_context, ex_value, ex_names = _vt_context(rng, 5, 4, 3)
    example = build_prompt("ruler_vt", {"example": "", "context": ex_context, "query": ex_value, "num_v": 5})
    context, value, names = _vt_context(rng, n, 4, 5)
    return {"context": context, "query": value, "num_v": 5, "outputs": names, "depth": depth,
            "example": example + " " + " ".join(ex_names)}


MAKERS = {"json_kv": make_json_kv, "ruler_niah_mk_2": lambda n, s, d: make_niah_mk("ruler_niah_mk_2", n, s, d),
          "ruler_niah_mk_3": lambda n, s, d: make_niah_mk("ruler_niah_mk_3", n, s, d),
          "ruler_niah_mv": make_niah_mv, "ruler_vt": make_vt}


def prompt_length(task, rec, tok):
    return 1 + len(tok.encode(build_prompt(task, prompt_fields(task, rec))))  # +1: BOS


def synthetic_records(task, length, samples, tok, seed):
    """`samples` records whose prompts, with BOS and the task's generation budget, fit `length` tokens."""
    budget = length - TASKS[task][2]
    make = MAKERS[task]
    depths = KV_DEPTHS if task in ("json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3") else [None]

    def fits(n, s, d):
        return prompt_length(task, make(n, s, d), tok) <= budget

    # Calibrate the size (pairs / sentences / words) once on a probe: exponential then binary search.
    probe = f"{seed}-{task}-{length}-probe"
    if not fits(1, probe, depths[0]):
        raise ValueError(f"length {length} is too short for {task}: its smallest prompt plus "
                         f"{TASKS[task][2]} generated tokens does not fit")
    lo, hi = 1, 2
    while fits(hi, probe, depths[0]) and hi < 64 * length:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid, probe, depths[0]) else (lo, mid)
    records = []
    for i in range(samples):
        s, d, n = f"{seed}-{task}-{length}-{i}", depths[i % len(depths)], lo
        while n > 1 and not fits(n, s, d):  # random strings tokenise to slightly different lengths
            n -= max(1, n // 200)
        records.append(make(n, s, d))
    return records

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


def helmet_records(task, test_file, demo_file, samples, seed, shots=2):
    data = read_jsonl(test_file)
    demos = read_jsonl(demo_file) if demo_file and os.path.exists(demo_file) else []
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
        out.append(rec)
    return out

# ----------------------------------------------------------------------------------------------------------------
# running a model on a task


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


def stop_tokens(tok, model, newline):
    eos = model.config.eos_token_id
    stops = {tok.eos_id, tok.eot_id} | set(eos if isinstance(eos, (list, tuple)) else [eos])
    if newline:  # HELMET's stop_newline: the tokens that are exactly "\n" and "\n\n"
        stops |= {ids[0] for ids in (tok.encode("\n"), tok.encode("\n\n")) if len(ids) == 1}
    return tuple(sorted(s for s in stops if s is not None))


def run_task(model, tok, task, records, length, prefill_chunk=4096):
    """Generate for each record and score it; returns per-sample results (the prompt itself is not kept)."""
    _, (_, system), gen_len, newline, metric = TASKS[task]
    stops = stop_tokens(tok, model, newline)
    special = set(tok.special_tokens.values())
    results, start = [], time.time()
    for i, rec in enumerate(records):
        fields = prompt_fields(task, rec)
        ids = fit_context(task, fields, tok, length - gen_len)
        new = model.generate(ids, max_new_tokens=gen_len, temperature=0.0, stop_tokens=stops,
                             prefill_chunk=prefill_chunk)
        text = tok.decode([t for t in new if t not in special])
        output = system.format(**fields) + text  # completion mode: score the output with the prefix it completed
        results.append({"depth": rec.get("depth"), "input_len": len(ids), "output_len": len(new), "output": text,
                        "answer": rec.get("answer", rec.get("outputs", rec.get("answers"))),
                        metric: score(task, output, rec)})
        log(f"  {task} @ {length}: {i + 1}/{len(records)} ({time.time() - start:.1f}s)")
    return results


def summarize(results, metric):
    """Mean x100 (as HELMET's averaged_metrics) overall and by depth."""
    by_depth = {}
    for r in results:
        if r["depth"] is not None:
            by_depth.setdefault(str(r["depth"]), []).append(r[metric])
    return {"metric": metric, "score": 100 * float(np.mean([r[metric] for r in results])), "n": len(results),
            "by_depth": {d: 100 * float(np.mean(v)) for d, v in sorted(by_depth.items())}}


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
# perplexity by position


def read_documents(path, tok, max_docs, length):
    """Token documents from a data.py domain directory (NAME.bin/.idx/.json shards), or a text file cut into
    documents of `length` tokens, each BOS first."""
    if os.path.isdir(path):
        from data import open_domain
        domain = open_domain(path)
        made_with = domain.meta.get("tokenizer_sha256")
        if made_with and made_with != getattr(tok, "sha256", made_with):
            log(f"warning: {path} was tokenized with another tokenizer ({domain.meta.get('tokenizer')}) than the "
                f"checkpoint's: its perplexity means little")
        return [domain.tokens(i) for i in range(min(len(domain), max_docs))]
    with open(path, encoding="utf-8") as f:
        ids = tok.encode(f.read())
    return [np.array([tok.bos_id] + ids[i:i + length - 1], dtype=np.int64)
            for i in range(0, len(ids), length - 1)][:max_docs]


@torch.no_grad()
def perplexity_by_position(model, docs, length, buckets=8):
    """Mean loss per bucket of target positions (token p predicted from tokens < p) over each document's first
    `length` tokens, and over the second half of each (so truncated) document."""
    device = model.head_weight.device
    loss_sum, count = np.zeros(length), np.zeros(length)
    half_sum, half_n, n_docs = 0.0, 0, 0
    for doc in docs:
        ids = torch.as_tensor(np.asarray(doc[:length], dtype=np.int64), device=device)
        T = ids.numel()
        if T < 2:
            continue
        labels = torch.full_like(ids, -100)
        labels[:-1] = ids[1:]  # labels[i] is the target at position i + 1
        losses, _ = model(ids, labels=labels, reduction="none")
        losses = losses[:-1].double().cpu().numpy()
        loss_sum[1:T] += losses
        count[1:T] += 1
        half_sum += losses[T // 2 - 1:].sum()
        half_n += T - T // 2
        n_docs += 1
    edges = np.linspace(0, length, buckets + 1).astype(int)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        n = count[lo:hi].sum()
        if n:
            rows.append({"positions": [int(lo), int(hi)], "tokens": int(n), "loss": float(loss_sum[lo:hi].sum() / n)})
    if not n_docs:
        raise ValueError("no document with at least 2 tokens to measure perplexity on")
    total = float(loss_sum.sum() / count.sum())
    return {"length": length, "documents": n_docs, "tokens": int(count.sum()), "loss": total,
            "second_half_loss": float(half_sum / half_n), "second_half_ppl": math.exp(half_sum / half_n),
            "buckets": rows}

# ----------------------------------------------------------------------------------------------------------------
# short-context tasks through lm-eval-harness (only when it is installed)


def lm_eval_adapter(model, tok, LM):
    """An lm_eval `LM` over our model and tokenizer: loglikelihood, rolling loglikelihood and generate_until."""
    device, window = model.head_weight.device, model.config.max_position_embeddings

    @torch.no_grad()
    def logprobs(ctx_ids, cont_ids):
        ids = (ctx_ids + cont_ids)[-(window + 1):]
        logits = model(torch.tensor(ids[:-1], device=device)).float().log_softmax(-1)[-len(cont_ids):]
        target = torch.tensor(cont_ids, device=device)
        return float(logits.gather(-1, target[:, None]).sum()), bool((logits.argmax(-1) == target).all())

    class ProLongLM(LM):
        def loglikelihood(self, requests):
            out = []
            for r in requests:
                ctx, cont = r.args
                spaces = len(ctx) - len(ctx.rstrip())  # lm-eval's convention: context whitespace goes with the
                ctx, cont = ctx[:len(ctx) - spaces], ctx[len(ctx) - spaces:] + cont  # continuation
                ctx_ids = [tok.bos_id] + tok.encode(ctx)
                whole = [tok.bos_id] + tok.encode(ctx + cont)
                out.append(logprobs(ctx_ids, whole[len(ctx_ids):]))
            return out

        def loglikelihood_rolling(self, requests):
            out = []
            for r in requests:
                ids = [tok.bos_id] + tok.encode(r.args[0])
                total = 0.0
                for s in range(1, len(ids), window - 1):  # lm-eval's disjoint windows with one token of context
                    total += logprobs(ids[s - 1:s], ids[s:s + window - 1])[0]
                out.append(total)
            return out

        def generate_until(self, requests):
            out = []
            for r in requests:
                ctx, kwargs = r.args
                ids = ([tok.bos_id] + tok.encode(ctx))[-window:]
                new = model.generate(ids, max_new_tokens=kwargs.get("max_gen_toks", 256),
                                     stop_tokens=stop_tokens(tok, model, False))
                text = tok.decode(new)
                for s in kwargs.get("until", []) or []:
                    text = text.split(s)[0]
                out.append(text)
            return out

    return ProLongLM()


def run_lm_eval(model, tok, tasks, limit=None):
    try:
        import lm_eval
        from lm_eval.api.model import LM
    except ImportError:
        log(f"lm-eval-harness is not installed, so the short-context tasks {tasks} are skipped "
            f"(pip install lm-eval to run them)")
        return None
    res = lm_eval.simple_evaluate(model=lm_eval_adapter(model, tok, LM), tasks=tasks, limit=limit)
    return res["results"]

# ----------------------------------------------------------------------------------------------------------------
# output: table, heatmap, main


def format_table(scores, averages, lengths, first="task"):
    lines = [f"{first:<22}" + "".join(f"{L:>10}" for L in lengths)]
    for name, row in list(scores.items()) + [(f"{c} (avg)", {L: v["score"] for L, v in r.items()})
                                             for c, r in averages.items()]:
        lines.append(f"{name:<22}" + "".join(f"{row[L]:>10.1f}" if L in row else f"{'-':>10}" for L in lengths))
    partial = [f"{c} at {L}: {', '.join(v['tasks'])}" for c, r in averages.items() for L, v in r.items()
               if not v["complete"]]
    if partial:
        lines.append("averages over the tasks that ran only: " + "; ".join(partial))
    return "\n".join(lines)


def heatmap(results, path):
    """JSON KV accuracy by depth (rows) and length (columns) as a PNG, when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no JSON KV heatmap (pip install matplotlib)")
        return None
    lengths = sorted(results, key=int)
    depths = sorted({d for L in lengths for d in results[L]["by_depth"]}, key=float)
    grid = np.array([[results[L]["by_depth"].get(d, np.nan) for L in lengths] for d in depths])
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2, 0.5 * len(depths) + 1.5))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
    ax.set_yticks(range(len(depths)), depths)
    ax.set_xlabel("length (tokens)")
    ax.set_ylabel("depth of the gold key")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "" if np.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="SubEM")
    ax.set_title("JSON KV")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def load_checkpoint(ckpt, tokenizer=None, device="cpu", dtype=torch.float32):
    # imported here so that the scoring and task code above can be used without the model and data code
    from data import DataError, load_tokenizer
    from model import Llama
    try:  # "llama3" names the Llama-3 tokenizer that the llama-models package ships
        tok = load_tokenizer(ckpt if tokenizer is None else None if tokenizer == "llama3" else tokenizer)
    except DataError as e:
        raise SystemExit(f"no tokenizer for {ckpt}: {e}\npass --tokenizer SPEC: a tokenizer.model file, a directory "
                         f"holding one, a hub id, or 'llama3' for the Llama-3 tokenizer of the llama-models package")
    model = Llama.from_pretrained(ckpt, dtype=dtype, device=device).eval()  # after the tokenizer: fail fast
    gen_config = os.path.join(ckpt, "generation_config.json")
    if os.path.exists(gen_config):  # HELMET stops at the generation config's eos ids (e.g. Instruct's eot, eom)
        with open(gen_config) as f:
            extra = json.load(f).get("eos_token_id") or []
        ours = model.config.eos_token_id
        model.config.eos_token_id = sorted({*(ours if isinstance(ours, list) else [ours]),
                                            *(extra if isinstance(extra, list) else [extra])} - {None})
    if tok.n_vocab > model.config.vocab_size:
        raise SystemExit(f"tokenizer has {tok.n_vocab} tokens but the model's vocabulary is "
                         f"{model.config.vocab_size}: pass the checkpoint's own tokenizer with --tokenizer")
    return model, tok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint directory or hub id (HF-format Llama)")
    p.add_argument("--tokenizer", default=None, help="tokenizer spec when the checkpoint has none (data.py)")
    p.add_argument("--tasks", default=None, help=f"comma list from {', '.join(TASKS)}, or none; default: the "
                   "synthetic recall tasks, plus RAG and re-rank with --helmet-data")
    p.add_argument("--lengths", default=None, help="comma list of token lengths, 8k = 8192 (default: HELMET's "
                   "8K-128K that fit the model's max_position_embeddings, else that window)")
    p.add_argument("--samples", type=int, default=100, help="samples per task and length (HELMET: 100)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--helmet-data", default=None, help="HELMET's data/ folder: read the published files")
    p.add_argument("--ppl", default=None, help="token domain directory (data.py) or text file for perplexity")
    p.add_argument("--ppl-length", type=int, default=None, help="tokens per document (default: longest length)")
    p.add_argument("--ppl-docs", type=int, default=16)
    p.add_argument("--lm-eval", default=None, help="comma list of lm-eval-harness tasks (needs lm_eval)")
    p.add_argument("--lm-eval-limit", type=int, default=None)
    p.add_argument("--prefill-chunk", type=int, default=4096)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--out", default=None, help="results JSON (default: CKPT/eval_results.json for a local "
                   "checkpoint, else runs/eval/NAME.json)")
    args = p.parse_args(argv)

    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    model, tok = load_checkpoint(args.ckpt, args.tokenizer, args.device, dtype)
    window = model.config.max_position_embeddings
    lengths = [int(x[:-1]) * 1024 if x[-1] in "kK" else int(x) for x in args.lengths.split(",")] \
        if args.lengths else ([L for L in (8192, 16384, 32768, 65536, 131072) if L <= window] or [window])
    if args.tasks:
        tasks = [] if args.tasks == "none" else args.tasks.split(",")
    else:
        tasks = SYNTHETIC + ([t for t in TASKS if t not in SYNTHETIC] if args.helmet_data else [])
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    if max(lengths) > window and tasks:
        log(f"note: lengths above the model's max_position_embeddings ({window}) test extrapolation")
    out = args.out or (os.path.join(args.ckpt, "eval_results.json") if os.path.isdir(args.ckpt)
                       else os.path.join("runs", "eval", args.ckpt.replace("/", "__") + ".json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    def save():  # after every task and length, so a long run that dies keeps what it measured
        with open(out + ".tmp", "w") as f:
            json.dump(report, f, indent=1)
        os.replace(out + ".tmp", out)  # never a half-written results file

    report = {"ckpt": args.ckpt, "tokenizer": getattr(tok, "name", None), "args": vars(args), "lengths": lengths,
              "tasks": {}, "skipped": []}
    scores = {}
    for task in tasks:
        for length in lengths:
            if args.helmet_data:
                files = helmet_files(task, length, args.helmet_data)
                if files is None or not os.path.exists(files[0]):
                    why = f"{task} @ {length}: no HELMET file" + (f" {files[0]}" if files else " for this length")
                    log(f"skip {why}")
                    report["skipped"].append(why)
                    continue
                records = helmet_records(task, *files, args.samples, args.seed)
            elif task in SYNTHETIC:
                records = synthetic_records(task, length, args.samples, tok, args.seed)
            else:
                raise SystemExit(f"{task} reads HELMET's files: pass --helmet-data DIR")
            start = time.time()
            results = run_task(model, tok, task, records, length, args.prefill_chunk)
            summary = summarize(results, TASKS[task][4])
            report["tasks"].setdefault(task, {})[length] = {**summary, "seconds": time.time() - start,
                                                            "samples": results}
            scores.setdefault(task, {})[length] = summary["score"]
            save()
    report["averages"] = category_averages(scores)
    if scores:
        print(format_table(scores, report["averages"], lengths))
    kv_depths = {L: r for L, r in report["tasks"].get("json_kv", {}).items() if r["by_depth"]}
    if kv_depths:
        print("\njson_kv SubEM by depth of the gold key")
        print(format_table({f"depth {d}": {L: r["by_depth"][d] for L, r in kv_depths.items() if d in r["by_depth"]}
                            for d in next(iter(kv_depths.values()))["by_depth"]}, {}, lengths, first="depth"))

    if args.ppl:
        length = args.ppl_length or max(lengths)
        ppl = perplexity_by_position(model, read_documents(args.ppl, tok, args.ppl_docs, length), length)
        report["perplexity"] = {"path": args.ppl, **ppl}
        print(f"\nloss by position on {args.ppl} ({ppl['documents']} documents, first {length} tokens)")
        for row in ppl["buckets"]:
            print(f"{row['positions'][0]:>8}-{row['positions'][1]:<8} loss {row['loss']:.4f}  "
                  f"ppl {math.exp(row['loss']):.2f}")
        print(f"second half of each document: loss {ppl['second_half_loss']:.4f}  ppl {ppl['second_half_ppl']:.2f}")
    if args.lm_eval:
        report["lm_eval"] = run_lm_eval(model, tok, args.lm_eval.split(","), args.lm_eval_limit)

    if kv_depths:
        report["heatmap"] = heatmap(kv_depths, os.path.splitext(out)[0] + "_json_kv.png")
    save()
    log(f"results written to {out}")
    return report


if __name__ == "__main__":
    main()
