"""
HELMET's ICL, LongQA and Summ tasks, as data: templates, shot counts, readers for local copies of the Hugging Face
datasets that HELMET loads by name, the selection of test samples and demonstrations, and the per-sample metrics of
HELMET's post-processing. helmet.py holds Recall / RAG / Re-rank; evaluate.py runs both on a checkpoint. Everything
follows HELMET's data.py / utils.py / scripts/*.py at commit 4526dfb (the code behind the published HELMET and
ProLong numbers): what differs, and why, is listed here.

Data (--helmet-data DIR): HELMET calls load_dataset("CogComp/trec") etc.; offline we read each split from one file,
DIR/<folder>/<split>.jsonl (always readable) or .parquet (needs pyarrow), with the Hugging Face column names, and
with the rows in the split's Hugging Face order (the seeded choices below index rows by position):
    DIR/icl/trec/{train,test}              text, coarse_label, fine_label        (CogComp/trec)
    DIR/icl/banking77/{train,test}         text, label                           (PolyAI/banking77)
    DIR/icl/clinc150/{train,validation}    text, intent                          (clinc_oos, config "plus")
    DIR/icl/nlu/train                      text, label                           (xingkunliuxtracta/nlu_evaluation_data)
    DIR/narrativeqa/{train,test}           document {id, text, ...}, question {text}, answers [{text}]   (narrativeqa;
                                           the train split is read for demos only and may omit `document`)
    DIR/infbench/longbook_{qa,choice,sum}_eng.jsonl   InfiniteBench's own files: id, context, input, answer, options
    DIR/multi_lexsum/{train,validation}    id, sources, summary/long, summary/short   (allenai/multi_lexsum v20230518;
                                           train is read for demos only and may omit `sources`)
  and, optional, the key-point files of HELMET's data/ folder that its GPT-4o judge reads (scripts/eval_gpt4_summ.py):
    DIR/infbench/longbook_sum_eng_keypoints.jsonl (id, keypoints), DIR/multi_lexsum/multi_lexsum_val.jsonl
    (id, summary/short_keypoints). So HELMET's own data/ folder with these copies added is a valid DIR.

Selection, as HELMET does it (`datasets`' Dataset.shuffle(seed=s) is np.random.default_rng(s).permutation(n), and
.select(range(k)) takes the first k):
- ICL: test rows shuffled with `seed` and label-balanced to `samples` (HELMET: 500) when the split has more rows
  than that; per test sample, local_seed = (int(sha256(text)) + seed) % 2**31 draws label-balanced demos from train
  and the map from labels to random integers. NLU has one split, cut by train_test_split(test_size=0.1, seed).
- NarrativeQA: test shuffled with `seed`; documents of more than 131072 Llama-2 tokens; the first `samples`.
- InfBench: rows of at least 65536 Llama-2 tokens, shuffled with `seed`, the first `samples`; demos are the first
  `shots` of the other rows shuffled with `seed`, their stories replaced by "[story text]".
- Multi-LexSum: validation cases with a short summary and at least 65536 Llama-2 tokens of sources, shuffled with
  `seed` and cut to `samples` only when there are more.
- LongQA / Summ contexts are cut to (length - 200 - generation) tokens (Multi-LexSum: length - 700), HELMET's name
  postfixes such as narrativeqa_130772, and end with " ... [the rest of the text is omitted]".

Deviations from HELMET:
- Lengths for the filters and the cut above are Llama-2 tokens in HELMET; offline we count with `length_tok`
  (default: the checkpoint's tokenizer; pass Llama-2's tokenizer.json to match HELMET): with Llama-3's tokenizer
  fewer documents pass the filters and the cut keeps more text. Counts include one BOS, as Llama-2's tokenizer adds.
- NarrativeQA and Multi-LexSum demos come from an unseeded `train.shuffle()` per sample in HELMET (numpy's global
  state and the datasets cache decide them: not reproducible). We shuffle train with the sample's own seed,
  (int(sha256(str(id))) + seed) % 2**31, and take the first `shots`: per-sample demos, as HELMET, but reproducible.
- Metrics: HELMET records ROUGE for every task; we compute it where a category or the judge uses it (not for ICL
  and InfBench choice, whose metric is exact_match). The GPT-4o judged metrics (gpt-4-score, gpt-4-f1) are not
  computed here: score() gives ROUGE-L for those tasks and the runner adds the judge's numbers.
- ICL shot counts exist for 4096..131072 tokens; other lengths scale the count of the largest HELMET length not
  above (or the smallest) by length / that length, and say so.
"""

import hashlib
import json
import math
import os
import random
from collections import Counter

from helmet import Task, gold_list, normalize_answer, parse_output, shuffle_order
from rouge import rouge as rouge_scores
from tokenizer import log

# ----------------------------------------------------------------------------------------------------------------
# tasks (HELMET's data.py templates, configs/*.yaml, scripts/generate_configs.py and collect_results.py)

# "{{label}}" is HELMET's: after .format the prompt says "label: {label}". Note the space before "\n\n".
ICL = ("Use the provided mapping from the text to label to assign a label to the text. Only output \"label: "
       "{{label}}\" and nothing else. \n\n{context}\n\n{question}", "label:")
NARRATIVEQA = ("You are given a story, which can be either a novel or a movie script, and a question. Answer the "
               "question as concisely as you can, using a single phrase if possible.\n\n{demo}{context}\n\n"
               "Question: {question}", "Answer:")
INFBENCH_QA = ("You are given a story and a question. Answer the question as concisely as you can, using a single "
               "phrase if possible.\n\n{demo}{context}\n\nQuestion: {question}", "Answer:")
INFBENCH_CHOICE = ("You are given a story and a question with multiple choices. Choose the best answer from the "
                   "options provided. Only one of the following options is correct, output the answer using one "
                   "single letter (A, B, C, or D). Don't say anything else.\n\n{demo}{context}\n\nQuestion: "
                   "{question}\nOptions:\n{options}", "Answer:")
INFBENCH_SUM = ("You are given a book and you are tasked to summarize it. Write a summary of about 1000 to 1200 words. "
                "Only write about the plot and characters of the story. Do not discuss the themes or background of "
                "the book. Do not provide any analysis or commentary.\n\n{demo}{context}\n\nNow summarize the book.",
                "Summary:")
MULTI_LEXSUM = ("You are given the legal documents in a civil rights lawsuit, and you are tasked to summarize the "
                "case. Write a concise summary of one paragraph (200 to 250 words). The summary should contain a short "
                "description of the background, the parties involved, and the outcomes of the case.\n\n{demo}Legal "
                "documents:\n{context}\n\nNow please summarize the case.", "Summary:")

# ICL runs in completion mode and its config asks for the newline stop; LongQA and Summ use the chat template with
# instruct models and join user and system templates with "\n\n" (InfBench, Multi-LexSum) or "\n" (NarrativeQA).
TASKS = {
    "icl_trec_coarse": Task("ICL", ICL, 20, True, "exact_match"),
    "icl_trec_fine": Task("ICL", ICL, 20, True, "exact_match"),
    "icl_banking77": Task("ICL", ICL, 20, True, "exact_match"),
    "icl_clinic150": Task("ICL", ICL, 20, True, "exact_match"),
    "icl_nlu": Task("ICL", ICL, 20, True, "exact_match"),
    "narrativeqa": Task("LongQA", NARRATIVEQA, 100, False, "gpt-4-score", "\n", True),
    "infbench_qa_eng": Task("LongQA", INFBENCH_QA, 10, False, "rougeL_f1", "\n\n", True),
    "infbench_choice_eng": Task("LongQA", INFBENCH_CHOICE, 10, False, "exact_match", "\n\n", True),
    "infbench_sum_eng": Task("Summ", INFBENCH_SUM, 1200, False, "gpt-4-f1", "\n\n", True),
    "multi_lexsum": Task("Summ", MULTI_LEXSUM, 400, False, "gpt-4-f1", "\n\n", True),
}
CATEGORIES = {c: [t for t, spec in TASKS.items() if spec.category == c] for c in ("ICL", "LongQA", "Summ")}
SHOTS = {t: 2 for t in TASKS if not t.startswith("icl_")}  # configs/longqa.yaml, summ.yaml: shots: 2

# generate_configs.py's "{N}shot_balance" postfixes at 4K, 8K, 16K, 32K, 64K, 128K.
_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)
ICL_SHOTS = {t: dict(zip(_LENGTHS, n)) for t, n in {
    "icl_trec_coarse": (200, 400, 800, 1600, 3300, 6600),
    "icl_trec_fine": (200, 400, 800, 1600, 3200, 6400),
    "icl_banking77": (180, 360, 720, 1450, 2900, 5900),
    "icl_clinic150": (220, 440, 880, 1750, 3525, 7050),
    "icl_nlu": (250, 510, 1020, 2040, 4080, 8296)}.items()}
ICL_SAMPLES = 500  # configs/icl.yaml: max_test_samples

# Tokens kept of the context: HELMET's name postfix is length - 200 - generation (Multi-LexSum: length - 300 - 400).
RESERVE = {"narrativeqa": 300, "infbench_qa_eng": 210, "infbench_choice_eng": 210, "infbench_sum_eng": 1400,
           "multi_lexsum": 700}
# Length filters in Llama-2 tokens: NarrativeQA keeps > 131072 (its two filters: > 131072, then >= 131072);
# InfBench and Multi-LexSum keep >= 65536. Module constants so that tests can use small documents.
MIN_TOKENS = {"narrativeqa": 131073, "infbench": 65536, "multi_lexsum": 65536}
OMITTED = " ... [the rest of the text is omitted]"


def icl_shots(task, length):
    """HELMET's shot count at `length`; between or beyond its lengths, the count of the largest HELMET length not
    above `length` (else the smallest) scaled by length / that length."""
    table = ICL_SHOTS[task]
    if length in table:
        return table[length]
    base = max((L for L in table if L <= length), default=min(table))
    shots = max(1, round(table[base] * length / base))
    log(f"{task}: HELMET has no shot count for {length} tokens; using {shots} ({table[base]} at {base}, scaled)")
    return shots


def build_prompt(task, rec, chat=False):
    """The user message (chat mode), or HELMET's completion prompt: user, separator, system template."""
    user, system = TASKS[task].templates
    return user.format(**rec) if chat else user.format(**rec) + TASKS[task].sep + system.format(**rec)

# ----------------------------------------------------------------------------------------------------------------
# local copies of the datasets (layout in the docstring)


# task: (folder, train split, test split or None (NLU: split train 90/10), label column, number of labels)
ICL_DATA = {"icl_trec_coarse": ("trec", "train", "test", "coarse_label", 6),
            "icl_trec_fine": ("trec", "train", "test", "fine_label", 50),
            "icl_banking77": ("banking77", "train", "test", "label", 77),
            "icl_clinic150": ("clinc150", "train", "validation", "intent", 151),
            "icl_nlu": ("nlu", "train", None, "label", 68)}
INFBENCH = {"infbench_qa_eng": "longbook_qa_eng", "infbench_choice_eng": "longbook_choice_eng",
            "infbench_sum_eng": "longbook_sum_eng"}
KEYPOINTS = {"infbench_sum_eng": ("infbench/longbook_sum_eng_keypoints.jsonl", "keypoints"),
             "multi_lexsum": ("multi_lexsum/multi_lexsum_val.jsonl", "summary/short_keypoints")}
LAYOUT = {
    "trec": "DIR/icl/trec/{train,test}.jsonl|.parquet with text, coarse_label, fine_label (HF CogComp/trec)",
    "banking77": "DIR/icl/banking77/{train,test}.jsonl|.parquet with text, label (HF PolyAI/banking77)",
    "clinc150": "DIR/icl/clinc150/{train,validation}.jsonl|.parquet with text, intent (HF clinc_oos, plus)",
    "nlu": "DIR/icl/nlu/train.jsonl|.parquet with text, label (HF xingkunliuxtracta/nlu_evaluation_data)",
    "narrativeqa": "DIR/narrativeqa/{train,test}.jsonl|.parquet with document.text, question.text, answers[].text "
                   "(HF narrativeqa)",
    "infbench": "DIR/infbench/longbook_{qa,choice,sum}_eng.jsonl (InfiniteBench's files: id, context, input, answer, "
                "options)",
    "multi_lexsum": "DIR/multi_lexsum/{train,validation}.jsonl|.parquet with id, sources, summary/long, summary/short "
                    "(HF allenai/multi_lexsum v20230518)",
}


def _group(task):
    return ICL_DATA[task][0] if task in ICL_DATA else "infbench" if task in INFBENCH else task


def _split(data_dir, folder, split):
    base = os.path.join(data_dir, folder, split)
    return base + ".parquet" if os.path.exists(base + ".parquet") and not os.path.exists(base + ".jsonl") \
        else base + ".jsonl"


def files(task, data_dir):
    """The files `task` reads under `data_dir` (.jsonl, else .parquet where only that exists); key-point files,
    which only the judge needs, are not among them (KEYPOINTS)."""
    if task in ICL_DATA:
        folder, train, test = ICL_DATA[task][:3]
        return [_split(data_dir, os.path.join("icl", folder), s) for s in (train, test) if s]
    if task in INFBENCH:
        return [os.path.join(data_dir, "infbench", INFBENCH[task] + ".jsonl")]
    if task == "narrativeqa":
        return [_split(data_dir, "narrativeqa", s) for s in ("train", "test")]
    if task == "multi_lexsum":
        return [_split(data_dir, "multi_lexsum", s) for s in ("train", "validation")]
    raise ValueError(f"{task}: not a HELMET ICL / LongQA / Summ task ({', '.join(TASKS)})")


def available(task, data_dir):
    return all(os.path.exists(f) for f in files(task, data_dir))


def _require(task, data_dir):
    for f in files(task, data_dir):
        if not os.path.exists(f):
            raise ValueError(f"{task}: no {f}; expected {LAYOUT[_group(task)]}")


class _Jsonl:
    """A JSON-lines file whose rows are parsed when read: NarrativeQA and Multi-LexSum hold whole books per row,
    and only a few rows are ever needed whole, so we keep byte offsets, not rows."""

    def __init__(self, path):
        self.path, self.offsets, pos = path, [], 0
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    self.offsets.append(pos)
                pos += len(line)

    def __len__(self):
        return len(self.offsets)

    def _parse(self, line, i):
        try:
            return json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}: row {i + 1}: not a JSON line ({e.msg})") from None

    def __getitem__(self, i):
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            return self._parse(f.readline(), i)

    def __iter__(self):
        with open(self.path, "rb") as f:
            yield from (self._parse(line, i) for i, line in enumerate(line for line in f if line.strip()))


def _rows(path, columns=None):
    """The rows of a split, in file order: lazily from .jsonl, or the given columns of a .parquet file."""
    if path.endswith(".jsonl"):
        return _Jsonl(path)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow), or give the split as .jsonl") \
            from None
    try:
        return pq.read_table(path, columns=columns).to_pylist()
    except Exception as e:  # pyarrow's errors for a missing column or a damaged file
        raise ValueError(f"{path}: {e}") from None


def _sha_seed(text, seed):
    return (int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) + seed) % 2**31


def _keypoints(task, data_dir):
    path = os.path.join(data_dir, KEYPOINTS[task][0])
    if not os.path.exists(path):
        log(f"{task}: no {path}: records carry no key points (the GPT-4o judge needs them)")
        return None
    return {str(d["id"]): d[KEYPOINTS[task][1]] for d in _Jsonl(path)}

# ----------------------------------------------------------------------------------------------------------------
# records


def records(task, length, data_dir, samples, seed, tok, length_tok=None, shots=None):
    """Test records of `task` at `length` tokens: every template field, "answer", "id" (the row's dataset id, or
    its index in the test split where the dataset has none) and, for Summ with the key-point file, "keypoints".
    `samples` None takes all (HELMET: max_test_samples None). `length_tok` counts lengths for HELMET's Llama-2 filters
    and cut (default `tok`); `shots` defaults to HELMET's. ICL reads no tokenizer."""
    if task not in TASKS:
        raise ValueError(f"{task}: not a HELMET ICL / LongQA / Summ task ({', '.join(TASKS)})")
    _require(task, data_dir)
    counter = _Lengths(length_tok or tok)
    try:
        if task in ICL_DATA:
            return _icl(task, data_dir, samples, seed, icl_shots(task, length) if shots is None else shots)
        shots = SHOTS[task] if shots is None else shots
        keep = length - RESERVE[task]
        if keep <= 0:
            raise ValueError(f"{task}: {length} tokens leave no context (HELMET reserves {RESERVE[task]} tokens for "
                             f"the instructions and the generation)")
        if task == "narrativeqa":
            out = _narrativeqa(data_dir, samples, seed, shots, keep, counter)
        elif task in INFBENCH:
            out = _infbench(task, data_dir, samples, seed, shots, keep, counter)
        else:
            out = _multi_lexsum(data_dir, samples, seed, shots, keep, counter)
        log(f"{task} at {length}: {len(out)} records; lengths (filters, cut to {keep}) in tokens of "
            f"{getattr(counter.tok, 'name', 'length_tok')}")
        return out
    except KeyError as e:
        raise ValueError(f"{task}: a row has no {e} field; expected {LAYOUT[_group(task)]}") from None


class _Lengths:
    """Token counts as Llama-2's tokenizer gives them (with its BOS), cached by text: InfBench and Multi-LexSum rows
    repeat books, and the filters count every row."""

    def __init__(self, tok):
        self.tok, self.cache = tok, {}

    def ids(self, text):
        return self.tok.encode(text)

    def __call__(self, text):
        key = hashlib.sha1(text.encode("utf-8")).digest()
        if key not in self.cache:
            self.cache[key] = 1 + len(self.ids(text))
        return self.cache[key]

    def truncate(self, text, max_length):
        """truncate_llama2: over max_length tokens, keep the text of the first max_length - len(BOS + marker) tokens
        (HELMET cuts at that token's end offset; we decode the kept tokens and cut the text where they end)."""
        ids = self.ids(text)
        if 1 + len(ids) <= max_length:
            return text
        cut = self.tok.decode(ids[:max(0, max_length - 1 - len(self.ids(OMITTED)))])
        if not text.startswith(cut):  # a token ends inside a character, or the decoder drops a leading space
            cut = os.path.commonprefix([cut, text])
        return text[:len(cut)] + OMITTED


def _icl(task, data_dir, samples, seed, shots):
    test_split, label, num_labels = ICL_DATA[task][2:]
    train_path, *test_path = files(task, data_dir)
    rows = [(i, r["text"], int(r[label])) for i, r in enumerate(_rows(train_path, ["text", label]))]
    if test_split is None:
        # datasets' train_test_split(test_size=0.1, seed): n_test = ceil(0.1 * n) (that float product), and
        # permutation = default_rng(seed).permutation(n); test = permutation[:n_test], train = the rest, both in
        # permutation order (arrow_dataset.py, unstratified branch; the same since datasets 1.x).
        perm = shuffle_order(len(rows), seed)
        n_test = math.ceil(0.1 * len(rows))
        train, test = [rows[i] for i in perm[n_test:]], [rows[i] for i in perm[:n_test]]
    else:
        train = rows
        test = [(i, r["text"], int(r[label])) for i, r in enumerate(_rows(test_path[0], ["text", label]))]
    if samples is not None and len(test) > samples:  # HELMET: shuffle(seed), then balance_labels(test, samples, seed)
        test = _balance(_by_label([test[i] for i in shuffle_order(len(test), seed)]), samples, seed)
    pools = _by_label(train)
    out = []
    for i, text, lab in test:
        local = _sha_seed(text, seed)
        demos = _balance(pools, shots, local)
        mapping = list(range(num_labels))
        random.Random(local).shuffle(mapping)  # HELMET: random.seed(local); random.shuffle (the same draws)
        context = "\n\n".join(f"{t}\nlabel: {mapping[d]}" for _, t, d in demos)
        out.append({"context": context, "question": text, "answer": str(mapping[lab]), "id": i})
    return out


def _by_label(items):
    """HELMET's balance_labels groups: one list per label, labels in order of first appearance."""
    groups = {}
    for item in items:
        groups.setdefault(item[2], []).append(item)
    return list(groups.values())


def _balance(groups, shots, seed):
    """HELMET's balance_labels(data, shots, seed), the same random.Random(seed) calls in the same order: per label,
    sample rounds % size indices, topped up by samples without replacement; round k takes one item per label; each
    round shuffled; the first `shots`."""
    rand = random.Random(seed)
    rounds = math.ceil(shots / len(groups))
    sets = [[] for _ in range(rounds)]
    for items in groups:
        picks = rand.sample(range(len(items)), rounds % len(items))
        while len(picks) < rounds:
            picks += rand.sample(range(len(items)), min(rounds - len(picks), len(items)))
        for k, j in enumerate(picks):
            sets[k].append(items[j])
    for s in sets:
        rand.shuffle(s)
    return [item for s in sets for item in s][:shots]


def _train_demos(pool, rec_id, seed, shots):
    """NarrativeQA / Multi-LexSum demos: `pool` shuffled with the sample's own seed (HELMET's shuffle is unseeded)."""
    return [pool[j] for j in shuffle_order(len(pool), _sha_seed(str(rec_id), seed))[:shots]]


def _narrativeqa(data_dir, samples, seed, shots, keep, count):
    train_path, test_path = files("narrativeqa", data_dir)
    test = _rows(test_path)
    pool = None
    out = []
    for i in shuffle_order(len(test), seed):
        if samples is not None and len(out) >= samples:
            break
        row = test[i]
        text = row["document"]["text"]
        if count(text) < MIN_TOKENS["narrativeqa"]:
            continue
        demo = ""
        if shots:
            if pool is None:
                pool = _rows(train_path, ["question", "answers"])
            demos = _train_demos(pool, i, seed, shots)
            demo = "For example:\n\n" + "\n\n".join(f"Question: {d['question']['text']}\nAnswer: "
                                                      f"{d['answers'][0]['text']}" for d in demos) + \
                "\n\nNow, use the following story to answer the question:\n\n"
        out.append({"context": count.truncate(text, keep), "question": row["question"]["text"], "demo": demo,
                    "answer": [a["text"] for a in row["answers"]], "id": i})
    return out


def _infbench(task, data_dir, samples, seed, shots, keep, count):
    path = files(task, data_dir)[0]
    rows = []  # everything but the contexts, which are counted now and re-read for the chosen rows
    for i, r in enumerate(_Jsonl(path)):
        answer = r["answer"] if isinstance(r["answer"], list) else [r["answer"]]
        rec = {"id": r["id"], "question": r["input"], "answer": answer, "row": i,
               "long": count(r["context"]) >= MIN_TOKENS["infbench"]}
        if task == "infbench_choice_eng":
            if answer[0] not in r["options"]:
                raise ValueError(f"{path}: id {r['id']}: the answer {answer[0]!r} is not among the options")
            letter = chr(ord("A") + r["options"].index(answer[0]))
            rec.update(options="A. {}\nB. {}\nC. {}\nD. {}".format(*r["options"]),
                       answer=[letter, f"{letter}. {answer[0]}"])
        rows.append(rec)
    # filter_length runs after the demos were added, so demos may come from rows the filter drops
    chosen = [r for r in rows if r["long"]]
    if samples is not None:
        chosen = [chosen[j] for j in shuffle_order(len(chosen), seed)[:samples]]
    if task == "infbench_qa_eng":
        demo_text = lambda x: f"[story text]\nQuestion: {x['question']}\nAnswer: {x['answer'][0]}"
    elif task == "infbench_choice_eng":
        demo_text = lambda x: (f"[story text]\nQuestion: {x['question']}\nOptions:\n{x['options']}\n"
                               f"Answer: {x['answer'][0]}")
    else:
        demo_text = lambda x: f"[story text]\nSummary: {x['answer'][0].strip()}"
    keypoints = _keypoints(task, data_dir) if task == "infbench_sum_eng" else None
    source, out = _Jsonl(path), []
    for r in chosen:
        rec = {k: v for k, v in r.items() if k not in ("row", "long")}
        rec["demo"] = ""
        if shots:  # data.filter(id != this id).shuffle(seed).select(range(shots))
            others = [x for x in rows if x["id"] != r["id"]]
            demos = "\n\n".join(demo_text(others[j]) for j in shuffle_order(len(others), seed)[:shots])
            rec["demo"] = f"For example:\n\n{demos}\n\nNow, read the following story:\n\n"
        rec["context"] = count.truncate(source[r["row"]]["context"], keep)
        if keypoints is not None and str(r["id"]) in keypoints:
            rec["keypoints"] = keypoints[str(r["id"])]
        out.append(rec)
    return out


def _multi_lexsum(data_dir, samples, seed, shots, keep, count):
    train_path, val_path = files("multi_lexsum", data_dir)
    val, test = _rows(val_path), []
    for i, r in enumerate(val):  # all_data.filter(summary/short is not None), then filter_length on the sources
        if r["summary/short"] is not None and count("\n\n".join(r["sources"])) >= MIN_TOKENS["multi_lexsum"]:
            test.append(i)  # the sources are read again for the chosen cases only
    if samples is not None and len(test) > samples:
        test = [test[j] for j in shuffle_order(len(test), seed)[:samples]]
    pool = [r["summary/short"] for r in _rows(train_path, ["summary/short"]) if r["summary/short"] is not None] \
        if shots else []
    keypoints, out = _keypoints("multi_lexsum", data_dir), []
    for i in test:
        r = val[i]
        rec = {"id": r["id"], "context": count.truncate("\n\n".join(r["sources"]), keep), "question": "", "demo": "",
               "answer": r["summary/short"], "summary/long": r["summary/long"]}  # the judge's expert summary
        if shots:
            rec["demo"] = "Example summaries:\n\n" + "\n\n".join(
                "Summary: {}".format(d) for d in _train_demos(pool, rec["id"], seed, shots)) + \
                "\n\nNow, write a summary of the following legal documents.\n"
        if keypoints is not None and str(rec["id"]) in keypoints:
            rec["keypoints"] = keypoints[str(rec["id"])]
        out.append(rec)
    return out

# ----------------------------------------------------------------------------------------------------------------
# scoring: HELMET's post_process per task on top of utils.py's calculate_metrics (values 0..1, averaged x100)


def _f1(prediction, gold):
    """utils.py's f1_score (token F1 of normalised answers; yes / no / noanswer must match exactly)."""
    pred, gold = normalize_answer(prediction), normalize_answer(gold)
    if (pred in ("yes", "no", "noanswer") or gold in ("yes", "no", "noanswer")) and pred != gold:
        return 0.0
    common = sum((Counter(pred.split()) & Counter(gold.split())).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred.split()), common / len(gold.split())
    return 2 * precision * recall / (precision + recall)


def _metrics(prediction, answers, rouge=True):
    """calculate_metrics: exact_match, f1, substring_exact_match (+ ROUGE-L / Lsum f1 and recall), max over golds."""
    golds, pred = gold_list(answers), normalize_answer(prediction)
    mets = {"exact_match": float(any(pred == normalize_answer(a) for a in golds)),
            "f1": max(_f1(prediction, a) for a in golds),
            "substring_exact_match": float(any(normalize_answer(a) in pred for a in golds))}
    if rouge:
        mets.update(rouge_scores(prediction, golds))  # rouge_score's numbers (use_stemmer=True), max over golds
    return mets


def _best(a, b):
    return {k: max(v, b[k]) for k, v in a.items()}


def score(task, output, rec):
    """Metrics of one output (with the system template in front in completion mode, as HELMET's eval.py puts it)."""
    answers = rec["answer"]
    if task in ICL_DATA:  # HELMET scores the parsed label only, not the max with the raw output
        return _metrics(parse_output(output, "label:"), answers, rouge=False)
    if task == "infbench_choice_eng":  # choice_post_process. Kept quirk: normalize_answer("A") is "" (the article
        # "a" goes), so an output that normalises to "" (empty, "The", ".") exactly matches the gold letter A
        mets = _best(_metrics(output, answers, rouge=False), _metrics(parse_output(output), answers, rouge=False))
        mets["substring_exact_match"] = float(answers[1].lower() in output.lower())  # "B. text" appears verbatim
        if mets["substring_exact_match"]:
            mets["exact_match"] = 1.0
        return mets
    if task not in TASKS:
        raise ValueError(f"{task}: not a HELMET ICL / LongQA / Summ task")
    # default_post_process (Multi-LexSum parses after "Summary:"): the better of the raw and the parsed output
    return _best(_metrics(output, answers), _metrics(parse_output(output, "Summary:" if task == "multi_lexsum"
                                                                  else "Answer:"), answers))
