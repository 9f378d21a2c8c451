"""
Synthetic long-context tasks, made offline: lost-in-the-middle's JSON KV and RULER's needles (niah_mk_2, niah_mk_3,
niah_mv) and variable tracking, in the record layout of HELMET's published files, sized to a length in the
checkpoint's own tokens. helmet.py defines how they are prompted and scored; evaluate.py runs them.

- Uuids are str(uuid.uuid4()) drawn from a seeded RNG; RULER word keys come from a small embedded word list (RULER
  uses wonderwords); niah_mv's "essay" haystack is this Python's standard-library docstrings instead of RULER's Paul
  Graham essays (not available offline; the text, and so scores, can shift slightly between Python versions).
- Lengths count BOS + prompt + generation: the number of JSON pairs / haystack sentences is searched so that the
  prompt fits and fills at least ~90% of the length.
"""

import ast
import os
import random
import re
import string
import sysconfig
import uuid

import numpy as np

from helmet import TASKS, build_prompt, prompt_fields



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


def check_length(task, length, tok, seed="min"):
    """A length must hold the task's smallest prompt (one pair, needle or noise line) plus its generation budget."""
    gen = TASKS[task][2]
    need = prompt_length(task, MAKERS[task](1, seed, KV_DEPTHS[0]), tok) + gen
    if length < need:
        raise ValueError(f"length {length} is too short for {task}: it needs at least {need} tokens, its smallest "
                         f"prompt ({need - gen} tokens) plus the {gen} tokens it generates")


def synthetic_records(task, length, samples, tok, seed):
    """`samples` records whose prompts, with BOS and the task's generation budget, fit `length` tokens."""
    budget = length - TASKS[task][2]
    make = MAKERS[task]
    depths = KV_DEPTHS if task in ("json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3") else [None]

    def fits(n, s, d):
        return prompt_length(task, make(n, s, d), tok) <= budget

    # Calibrate the size (pairs / sentences / words) once on a probe: exponential then binary search.
    probe = f"{seed}-{task}-{length}-probe"
    check_length(task, length, tok, probe)
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

