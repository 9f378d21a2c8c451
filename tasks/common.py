"""What every HELMET task shares: the `Task` record the runner loops over, HELMET's answer metrics (utils.py), its
selection primitives (datasets' seeded shuffle, sha256 seeds), the reading of HELMET's published .jsonl files, and
prompt assembly with HELMET's one cut of the context.

The one idea: a task is data. A `Task` says how to get its records at a length (`records`), how a record fills the
templates (`prompt`), how an output is scored (`score`, {metric: value in [0, 1]}), and its budget, stops, chat
flag and category; evaluate.py knows nothing else about it. Errors a user can cause (a missing file or field, a
value the task cannot use) are `UserError`s that name the file and the field.
"""
import dataclasses
import hashlib
import json
import os
import re
import string
from collections import Counter
from typing import Callable, Optional

import numpy as np

from common import Malformed, UserError, read_jsonl as read_lines


@dataclasses.dataclass(frozen=True)
class Task:
    """One HELMET task. `templates` are (user, system): completion mode prompts user + sep + system, chat mode the
    user template alone; `stop_newline` is what HELMET's config asks (applied only with --stop-newline); `metric`
    is the one scripts/collect_results.py reads."""
    name: str
    category: str
    templates: tuple
    gen_len: int
    stop_newline: bool
    metric: str
    records: Callable  # (length, Run) -> (records, where they came from) or (None, why there are none)
    score: Callable  # (output, record) -> {metric: value in [0, 1]}
    prompt: Callable = dict  # record -> template fields
    sep: str = "\n"
    chat: bool = False  # an instruct model gets the chat template (LongQA and Summ)
    samples: int = 100  # HELMET's max_test_samples
    synthetic: bool = False  # generated offline when there is no --helmet-data
    available: Callable = lambda data_dir: True  # listed by default with --helmet-data DIR
    files: Optional[Callable] = None  # (length, data_dir) -> (test, demo file) in HELMET's data/ folder, or None
    read: Optional[Callable] = None  # (test file, demo file, samples, seed) -> records, for tasks with `files`
    check_length: Callable = lambda length, tok: None  # a length too short for a generated prompt: UserError
    count: Callable = len  # records -> how many samples they hold (KILT and MS MARCO: a row per depth)
    judge: Optional[Callable] = None  # (judge, output, record) -> the judged metrics (NarrativeQA, Summ)


@dataclasses.dataclass
class Run:
    """What a task's `records` reads from the command line: HELMET's data folder (None: generate offline), samples
    (None: all), seed, the checkpoint's tokenizer, the one that sizes LongQA/Summ documents, and shots (None:
    HELMET's)."""
    data_dir: Optional[str]
    samples: Optional[int]
    seed: int
    tok: object = None
    length_tok: object = None
    shots: Optional[int] = None
    judged: bool = False  # a judge will score the outputs: Summ needs its key points
    ruler_qa: Optional[str] = None  # RULER's json/ folder (squad.json, hotpotqa.json): its QA tasks offline
    helmet_version: str = "4526dfb"  # HELMET's commit whose protocol to follow (tasks/__init__.py VERSIONS)

# ----------------------------------------------------------------------------------------------------------------
# HELMET's metrics (utils.py), values in [0, 1]


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
    """RULER's string_match_all: the share of gold strings found in the prediction, lower-cased only."""
    answers = gold_list(answers)
    return sum(a.lower() in prediction.lower() for a in answers) / len(answers)


def f1_score(prediction, gold):
    """utils.py's f1_score (token F1 of normalised answers; yes / no / noanswer must match exactly)."""
    pred, gold = normalize_answer(prediction), normalize_answer(gold)
    if (pred in ("yes", "no", "noanswer") or gold in ("yes", "no", "noanswer")) and pred != gold:
        return 0.0
    common = sum((Counter(pred.split()) & Counter(gold.split())).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred.split()), common / len(gold.split())
    return 2 * precision * recall / (precision + recall)


def calculate_metrics(prediction, answers, rouge=True):
    """utils.py's calculate_metrics: exact_match, f1, substring_exact_match (+ ROUGE-L / Lsum f1 and recall), each
    the max over the gold answers."""
    golds, pred = gold_list(answers), normalize_answer(prediction)
    mets = {"exact_match": float(any(pred == normalize_answer(a) for a in golds)),
            "f1": max(f1_score(prediction, a) for a in golds),
            "substring_exact_match": float(any(normalize_answer(a) in pred for a in golds))}
    if rouge:
        from tasks.rouge import rouge as rouge_scores
        mets.update(rouge_scores(prediction, golds))  # rouge_score's numbers (use_stemmer=True), max over golds
    return mets


def best(a, b):
    """Metric by metric, the better of two scorings (HELMET's max over the raw and the parsed output)."""
    return {k: max(v, b[k]) for k, v in a.items()}

# ----------------------------------------------------------------------------------------------------------------
# selection: `datasets`' Dataset.shuffle(seed=s) is np.random.default_rng(s).permutation(n)


def shuffle_order(n, seed):
    return np.random.default_rng(seed).permutation(n)


def sha_seed(text, seed):
    """HELMET's per-sample seed: (int(sha256(text)) + seed) % 2**31."""
    return (int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) + seed) % 2**31

# ----------------------------------------------------------------------------------------------------------------
# HELMET's published .jsonl files (--helmet-data DIR)


def expect(row, field, kind, what, where="", empty=False):
    """row[field], when it is a `kind` and (unless `empty`) not empty; else a ValueError naming the field (a missing
    field is a KeyError, which the readers turn into "has no field")."""
    value = row[field]
    if not isinstance(value, kind) or isinstance(value, bool) or (not empty and isinstance(value, (str, list, dict))
                                                                   and not value):
        found = json.dumps(value)[:60] if isinstance(value, (str, int, float, list, dict, type(None))) else value
        raise ValueError(f"{where}{': ' if where else ''}field {field!r} is {found}: expected {what}")
    return value


def expect_strings(row, field, what, where=""):
    """A non-empty string or list of non-empty strings (gold answers)."""
    value = expect(row, field, (str, list), what, where)
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}{': ' if where else ''}field {field!r} is {json.dumps(value)[:60]}: expected "
                         f"{what}")
    return value


def read_jsonl(path):
    """Every record of a HELMET .jsonl file, each a JSON object; anything else is an error naming the line."""
    records = []
    for where, value in read_lines(path):
        if isinstance(value, Malformed):
            raise UserError(f"{where}: not a JSON line: {value}")
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a JSON object per line, found {str(value)[:60]}")
        records.append(value)
    return records


PASSAGE_FIELDS = ("id", "title", "text", "label")  # the fields of a passage in a record's `ctxs`


def file_task(name, select, offline=None, validate=None, **spec):
    """A task read from HELMET's data/ folder: `spec["files"](length, data_dir)` names its (test, demo) files,
    `select(data, demos, samples, seed, shots)` picks the records and fills their fields; without a data folder,
    `offline(length, run)` makes them (JSON KV and RULER). Every picked record is read as the prompt and the score
    will read it, so a missing field fails before any generation, naming the file that lacks it."""
    def checked(rec):
        if validate:
            validate(rec)
        fields = spec.get("prompt", dict)(rec)
        for template in spec["templates"]:
            template.format(**fields)
        spec["score"]("", rec)
        return rec

    def read(test_file, demo_file, samples, seed, shots=2):
        data = read_jsonl(test_file)
        if not data:
            raise UserError(f"{test_file}: no records (an empty file), so {name} has nothing to score")
        demos = read_jsonl(demo_file) if demo_file and os.path.exists(demo_file) else []
        try:
            return [checked(r) for r in select(data, demos, samples, seed, shots)]
        except KeyError as e:
            field = e.args[0]
            passage = field in PASSAGE_FIELDS

            def lacks(records):
                if passage:
                    return any(field not in c for r in records for c in r.get("ctxs") or [])
                return any(field not in r for r in records)
            path = test_file if lacks(data) or not demos or not lacks(demos) else demo_file
            where = "a record's passage (in ctxs)" if passage else "a record"
            raise UserError(f"{path}: {where} has no {field!r} field, which {name} reads") from None
        except ValueError as e:  # a field with a value the task cannot use
            raise UserError(f"{test_file}" + (f" or {demo_file}" if demos else "") + f": {e}") from None

    def records(length, run):
        if run.data_dir is None:
            return offline(length, run)
        paths = spec["files"](length, run.data_dir)
        if paths is None or not os.path.exists(paths[0]):
            return None, f"{name} @ {length}: no HELMET file" + (f" {paths[0]}" if paths else " for this length")
        return read(*paths, run.samples, run.seed), os.path.relpath(paths[0], run.data_dir)
    return Task(name, records=records, read=read, synthetic=offline is not None, **spec)

# ----------------------------------------------------------------------------------------------------------------
# prompts (HELMET's model_utils.tokenize)


def encode_prompt(task, fields, tok, chat=False):
    """A task's prompt as ids. Completion mode: user + sep + system templates, tokenised with the tokenizer's
    defaults (a BOS only where the tokenizer adds one: Llama-3 does). Chat mode (an instruct model on LongQA/Summ):
    the user template alone as the one user message, no system message (HELMET's HFModel passes none), then the
    assistant header; the chat format brings its own BOS."""
    user, system = task.templates
    if chat:
        from tokenizer import chat_ids
        # Llama-3's chat template trims each message (`message['content'] | trim`), so HELMET's prompt is trimmed
        return chat_ids(tok, [{"role": "user", "content": user.format(**fields).strip()}],
                        add_generation_prompt=True)[0]
    bos = [tok.bos_id] if getattr(tok, "add_bos", True) else []
    return bos + tok.encode(user.format(**fields) + task.sep + system.format(**fields))


def fit_context(task, fields, tok, budget, chat=False):
    """(ids, fields) of a prompt within `budget` tokens where HELMET's would be: when too long, the context alone is
    cut once, at the start of the context token that leaves `budget` (HELMET cuts at that token's character offset
    and does not re-check, so a re-tokenised boundary can leave a token or two over; so does this)."""
    ids = encode_prompt(task, fields, tok, chat)
    excess = len(ids) - budget
    if excess > 0:
        context = fields["context"]
        ctx = tok.encode(context)
        if excess > len(ctx):
            raise UserError(f"{task.name}: the prompt without its context is {len(ids) - len(ctx)} tokens, over the "
                            f"{budget} tokens left after generation")
        kept = tok.decode(ctx[:len(ctx) - excess])
        # the kept tokens' text is the context's prefix, except where the first dropped token starts inside a
        # multi-byte character: its start offset is that character's start, so HELMET's cut drops the character
        fields = dict(fields, context=context[:len(os.path.commonprefix([kept, context]))])
        ids = encode_prompt(task, fields, tok, chat)
    return ids, fields
