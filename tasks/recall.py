"""HELMET's Recall tasks: lost-in-the-middle's JSON KV and RULER's needles (niah_mk_2, niah_mk_3, niah_mv) and
variable tracking, read from HELMET's files or, without them, generated offline in the layout of those files and
sized to a length in the checkpoint's own tokens.

The one idea: a generator follows RULER's code of October 2024 (when HELMET made its files), word for word where
it decides what the model sees: RULER's adjective-noun keys (wonderwords' lists, read on first use; a small
embedded list without it), the gold needle among the distractors, the vt one-shot example with RULER's typo.
niah_mv's essay haystack is this Python's standard-library docstrings (RULER's Paul Graham essays are not
available offline). A generated task searches its size (pairs, needles, noise lines) so that BOS + prompt +
generation fit the length and fill at least ~90% of it. Provenance, line by line, is beside each function and in
tests/test_tasks_recall.py.
"""

import ast
import bisect
import importlib.metadata
import itertools
import os
import random
import re
import string
import sysconfig
import uuid

import numpy as np

from common import UserError, log
from tasks.common import encode_prompt, expect, expect_strings, file_task, ruler_recall, shuffle_order, sub_em

# ----------------------------------------------------------------------------------------------------------------
# templates (HELMET's data.py), files and scores

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

# HELMET's file for each input length (configs/*_short.yaml and *.yaml), by number of pairs
KV_FILES = {4096: 50, 8192: 105, 16384: 220, 32768: 440, 65536: 900, 131072: 1800}


def kv_files(length, data_dir):
    if length in KV_FILES:
        return os.path.join(data_dir, "json_kv", f"test_k{KV_FILES[length]}_dep6.jsonl"), None
    return None


def ruler_files(folder):
    return lambda length, data_dir: (os.path.join(data_dir, "ruler", folder, f"validation_{length}.jsonl"), None)


def kv_fields(rec):
    demos = "\n\n".join(f"Key: {k}\nCorresponding value: {v}" for k, v in rec["demos"][:2])
    return {"context": rec["context"], "question": rec["question"], "demos": demos + "\n\n" if demos else ""}


def ruler_fields(rec):
    example = rec.get("example") or ""
    return {"context": rec["context"], "query": rec.get("query", rec.get("question", "")),
            "example": example + "\n\n" if example else "", **{k: rec[k] for k in ("type_needle_v", "num_v")
                                                                if k in rec}}


def kv_score(output, rec):
    return {"substring_exact_match": sub_em(output, rec["answer"], prefix="corresponding value:")}


def ruler_score(output, rec):
    return {"ruler_recall": ruler_recall(output, rec["answer"] if "answer" in rec else rec["outputs"])}


def kv_check(rec):
    expect(rec, "context", str, "the JSON text")
    expect(rec, "answer", str, "the gold value")
    if not isinstance(rec["demos"], list) or not all(isinstance(d, list) and len(d) == 2 for d in rec["demos"]):
        raise ValueError(f"field 'demos' is {str(rec['demos'])[:60]}: expected a list of [key, value] pairs")


def ruler_check(rec):
    expect(rec, "context", str, "the haystack text")
    expect_strings(rec, "answer" if "answer" in rec else "outputs", "the gold strings (a list of strings)")


def shuffled(data, demos, samples, seed, shots):
    """HELMET's JSON KV and RULER files: data.shuffle(seed).select(range(samples))."""
    return [dict(data[i]) for i in shuffle_order(len(data), seed)[:samples]]

# ----------------------------------------------------------------------------------------------------------------
# the offline generators (RULER's scripts/data/synthetic/niah.py, variable_tracking.py, constants.py)

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KV_DEPTHS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # json_kv ("dep6"): six positions of the gold key, first to last pair
RULER_DEPTHS = [int(x) for x in np.round(np.linspace(0, 100, num=40, endpoint=True))]
# RULER's vt template and answer prefix (synthetic/constants.py), typo included: the one-shot example is built from
# these; the record's own question uses HELMET's template (RULER_VT above, which spells "assigned").
RULER_VT_EXAMPLE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
                    "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.",
                    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
                    "are assgined the value {query}, they are: ")
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


class WordPairs:
    """RULER's key list, `sorted(set(f"{adj}-{noun}" for adj in adjs for noun in nouns))`, as a lazy sequence with
    the same length, order and items: the built list is 6.2M strings, 17 s and 0.8 GB. Each adjective's pairs are
    one run of the sorted nouns, except where an adjective is another's hyphen-prefix ("old", "old-fashioned"):
    those pairs interleave (and could coincide), so those few blocks are built and sorted as RULER's list is."""

    def __init__(self, adjs, nouns):
        self.nouns = sorted(set(nouns))
        blocks = {}
        for a in sorted(set(adjs)):  # a prefix sorts first, so its block exists when an extension comes
            root = next((a[:i] for i, c in enumerate(a) if c == "-" and a[:i] in blocks), a)
            blocks.setdefault(root, []).append(a)
        # blocks are contiguous in RULER's order, sorted by "root-" (no root is another's hyphen-prefix)
        self.blocks = [(root + "-", None if len(group) == 1 else sorted({f"{a}-{n}" for a in group
                                                                         for n in self.nouns}))
                       for root, group in sorted(blocks.items(), key=lambda b: b[0] + "-")]
        sizes = (len(self.nouns) if items is None else len(items) for _, items in self.blocks)
        self.starts = list(itertools.accumulate(sizes, initial=0))

    def __len__(self):
        return self.starts[-1]

    def __getitem__(self, i):
        if not 0 <= i < len(self):
            raise IndexError(i)
        b = bisect.bisect_right(self.starts, i) - 1
        prefix, items = self.blocks[b]
        return prefix + self.nouns[i - self.starts[b]] if items is None else items[i - self.starts[b]]


def load_words():
    """(RULER's word-key list, where it came from): wonderwords' shipped lists, read as RULER reads them
    (random_word._get_words_from_text_file: each line of assets/<name>, right-stripped), else the embedded list."""
    from importlib.resources import files
    lists = []
    try:
        for name in ("adjectivelist.txt", "nounlist.txt"):
            with files("wonderwords").joinpath("assets", name).open("r") as f:
                lists.append([w.rstrip() for w in f.readlines()])
    except (ImportError, OSError):
        pairs = WordPairs(ADJECTIVES, NOUNS)
        return pairs, f"embedded list of {len(pairs)} pairs (pip install wonderwords for RULER's)"
    pairs = WordPairs(*lists)
    return pairs, f"wonderwords {importlib.metadata.version('wonderwords')} ({len(pairs)} pairs)"


_WORDS = None  # (pairs, where they came from), read on first use: --help and the other tasks never pay for it
_warned = False


def words():
    global _WORDS
    if _WORDS is None:
        _WORDS = load_words()
    return _WORDS


def word_source():
    return words()[1]


def _random(rng, kind):
    """RULER's generate_random: a 7-digit number, an adjective-noun key, or a uuid4 string."""
    global _warned
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":
        pairs, source = words()
        if not source.startswith("wonderwords") and not _warned:
            _warned = True
            log(f"tasks/recall.py: RULER word keys come from an {source}")
        return rng.choice(pairs)
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


def make_niah_mk(keys, n, seed, depth=None):
    """RULER niah_multikey_2 (keys "words": word keys, 7-digit values) / _3 ("uuids": uuid keys and values): one
    gold needle among n distractor needles.
    `depth` is not an input: RULER draws the gold index itself (niah.py, type_haystack 'needle':
    `sentences.insert(index, needle)` for `index in random.sample(range(num_haystack), 1)`), so the needle can be
    first but never after the last distractor. The record's depth is that index / n, rounded to 0.01."""
    rng = random.Random(seed)
    kind_k, kind_v = (keys, "numbers" if keys == "words" else "uuids")
    key, value = _random(rng, kind_k), _random(rng, kind_v)
    haystack = []
    while len(haystack) < n:
        k = _random(rng, kind_k)
        # RULER does not check this; a distractor with the gold key would make the question ambiguous (with
        # RULER's 6.2M pairs it is rare and skipping it changes nothing measurable; the embedded list needs it)
        if k != key:
            haystack.append(NEEDLE.format(type_needle_v=kind_v, key=k, value=_random(rng, kind_v)))
    index = rng.sample(range(n), 1)[0]
    haystack.insert(index, NEEDLE.format(type_needle_v=kind_v, key=key, value=value))
    return {"context": "\n".join(haystack), "query": key, "type_needle_v": kind_v[:-1], "outputs": [value],
            "depth": round(index / n, 2)}


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
    random.Random(seed).shuffle(needles)  # RULER shuffles with a fresh random.Random(args.random_seed)
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
    """RULER's generate_input_output (noise haystack): a chain of `hops` assignments in n noise lines, (context,
    value, names). RULER stops on a repeated name; redrawing it gives the same distribution of distinct names."""
    names = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=name_len))
        if name not in names:
            names.append(name)
    value = rng.randrange(10000, 99999)  # np.random.randint(10000, 99999): the upper bound is excluded
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]
    sents = [NOISE + "\n"] * n
    if len(sents) <= len(chain):  # RULER: too few noise lines, so insert between sentences instead
        sents = [s + "." if s.strip() else s for noise in sents for s in noise.split(".")]
    for j, pos in enumerate(sorted(rng.sample(range(len(sents)), len(chain)))):
        sents.insert(pos + j, chain[j])
    return " ".join(sents).replace(". \n", ".\n"), str(value), names


def vt_example(tok, seed, max_len=500, gen_len=30):
    """RULER's one-shot vt example (variable_tracking.py, main: a first call with max_seq_length=500, incremental=5,
    tokens_to_generate 30, is_icl=True): 3-letter names, 4 hops; the template's whitespace collapsed and its last
    word before the answer prefix ("above.") dropped, `' '.join(template[cutoff:cutoff_ans].split()[:-1])`; the
    noise grown by 5 lines while `tokens(input + f' {names}') + 30` stays within 500, then one example drawn that
    fits; RULER appends " " + the names (and "\\n\\n", which HELMET's loader adds back after `example`)."""
    rng = random.Random(seed)
    template = " ".join(RULER_VT_EXAMPLE[0].split()[:-1]) + RULER_VT_EXAMPLE[1]

    def draw(n):
        context, value, names = _vt_context(rng, n, 4, 3)
        return template.format(context=context, query=value, num_v=5), names

    n, total = 5, 0
    while total + gen_len < max_len:  # RULER's linear search, as written (it stops one step up when equal)
        text, names = draw(n)
        total = len(tok.encode(text + f" {names}"))
        if total + gen_len > max_len:
            n = max(1, n - 5)
            break
        n += 5
    while True:
        text, names = draw(n)
        if len(tok.encode(text)) + gen_len <= max_len or n <= 5:
            return text + " " + " ".join(names)
        n -= 5


def make_vt(n, seed, depth=None, example=""):
    """RULER variable tracking: one chain of 4 hops in n noise lines, after `example` (vt_example)."""
    context, value, names = _vt_context(random.Random(seed), n, 4, 5)
    return {"context": context, "query": value, "num_v": 5, "outputs": names, "depth": depth, "example": example}



def vt_maker(tok, seed):
    """vt's records share one example per seed (RULER seeds its example first, with the file's seed, so it is the
    same in every file of a seed, whatever the length)."""
    example = vt_example(tok, f"{seed}-ruler_vt-example")
    return lambda n, s, d: make_vt(n, s, d, example)


def prompt_length(task, rec, tok):
    """Tokens of the prompt as the model will get it (BOS where the tokenizer adds one)."""
    return len(encode_prompt(task, task.prompt(rec), tok))


def check_length(task, make, length, tok, seed=0):
    """A length must hold the task's smallest prompt (one pair, needle or noise line) plus its generation budget."""
    need = prompt_length(task, make(1, f"{seed}-{task.name}-min", KV_DEPTHS[0]), tok) + task.gen_len
    if length < need:
        raise UserError(f"length {length} is too short for {task.name}: it needs at least {need} tokens, its "
                        f"smallest prompt ({need - task.gen_len} tokens) plus the {task.gen_len} tokens it generates")


def synthetic_records(task, make, length, samples, tok, seed):
    """`samples` records whose prompts, with BOS and the task's generation budget, fit `length` tokens."""
    check_length(task, make, length, tok, seed)
    budget = length - task.gen_len
    depths = KV_DEPTHS if task.name == "json_kv" else [None]  # RULER's tasks place their needles themselves

    def fits(n, s, d):
        return prompt_length(task, make(n, s, d), tok) <= budget

    # Calibrate the size (pairs / lines / words) once on a probe: exponential then binary search.
    probe = f"{seed}-{task.name}-{length}-probe"
    lo, hi = 1, 2
    while fits(hi, probe, depths[0]) and hi < 64 * length:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid, probe, depths[0]) else (lo, mid)
    records = []
    for i in range(samples):
        s, d, n = f"{seed}-{task.name}-{length}-{i}", depths[i % len(depths)], lo
        while n > 1 and not fits(n, s, d):  # random strings tokenise to slightly different lengths
            n -= max(1, n // 200)
        records.append(make(n, s, d))
    return records

# ----------------------------------------------------------------------------------------------------------------
# the tasks


def recall_task(name, category, templates, gen_len, metric, files, prompt, score, maker, validate):
    """A task read from HELMET's file, or generated by `maker(tok, seed)` -> make(n, record seed, depth)."""
    def offline(length, run):
        records = synthetic_records(task, maker(run.tok, run.seed), length, run.samples, run.tok, run.seed)
        return records, f"synthetic (tasks/recall.py; keys: {word_source()}; sized in this tokenizer's tokens)"

    task = file_task(name, shuffled, offline, validate, category=category, templates=templates, gen_len=gen_len,
                     stop_newline=False, metric=metric, files=files, prompt=prompt, score=score,
                     check_length=lambda length, tok: check_length(task, maker(tok, 0), length, tok))
    return task


json_kv = recall_task("json_kv", "Recall", JSON_KV, 100, "substring_exact_match", kv_files, kv_fields, kv_score,
                      lambda tok, seed: make_json_kv, kv_check)
niah_mk_2 = recall_task("ruler_niah_mk_2", "Recall", RULER_NIAH, 50, "ruler_recall", ruler_files("niah_multikey_2"),
                        ruler_fields, ruler_score, lambda tok, seed: lambda n, s, d: make_niah_mk("words", n, s, d),
                        ruler_check)
niah_mk_3 = recall_task("ruler_niah_mk_3", "Recall", RULER_NIAH, 100, "ruler_recall", ruler_files("niah_multikey_3"),
                        ruler_fields, ruler_score, lambda tok, seed: lambda n, s, d: make_niah_mk("uuids", n, s, d),
                        ruler_check)
niah_mv = recall_task("ruler_niah_mv", "Recall", RULER_MV, 50, "ruler_recall", ruler_files("niah_multivalue"),
                      ruler_fields, ruler_score, lambda tok, seed: make_niah_mv, ruler_check)
vt = recall_task("ruler_vt", "RULER", RULER_VT, 50, "ruler_recall", ruler_files("vt"), ruler_fields, ruler_score,
                 vt_maker, ruler_check)
