"""tasks/recall.py: JSON KV and RULER prompts character for character against HELMET's templates, HELMET's files
sampled as `datasets`' shuffle, and the offline records checked against RULER's generators (NVIDIA/RULER, October
2024: scripts/data/synthetic/niah.py, variable_tracking.py, constants.py) and measured with the tokenizer."""
import json
import os
import re
import sys
from collections import Counter

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import UserError  # noqa: E402
from tasks import SYNTHETIC, TASKS, Run, recall  # noqa: E402
from tests.test_tasks_common import prompt_text, tok  # noqa: E402,F401  (the real Llama-3 tokenizer)
from tests.test_tasks_rag import datasets_order, helmet_records, write_jsonl  # noqa: E402


def synthetic_records(task, length, samples, tok, seed):
    """The production path: a task's records without --helmet-data."""
    records, source = TASKS[task].records(length, Run(None, samples, seed, tok))
    assert source.startswith("synthetic (tasks/recall.py; keys: ")
    return records


NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."  # RULER's


def needle(kind, key, value):  # RULER's needle, written out (the context keeps the plural: "numbers", "uuids")
    return f"One of the special magic {kind} for {key} is: {value}."


def test_synthetic_records_have_helmet_structure():
    rec = recall.make_json_kv(7, "s", 0.4)
    pairs = json.loads(rec["context"])  # one pair per line, valid JSON
    assert rec["context"].count(",\n ") == 6 and list(pairs)[round(0.4 * 6)] == rec["question"]
    assert pairs[rec["question"]] == rec["answer"] and len(set(pairs)) == 7
    assert all(k not in pairs for k, _ in rec["demos"]) and len(rec["demos"]) == 2
    assert all(len(x) == 36 and x[14] == "4" for x in list(pairs) + list(pairs.values()))  # uuid4 strings

    rec = recall.make_niah_mk("words", 9, "s")
    lines = rec["context"].split("\n")
    assert len(lines) == 10 and needle("numbers", rec["query"], rec["outputs"][0]) in lines
    assert len(rec["outputs"][0]) == 7 and rec["type_needle_v"] == "number" and "-" in rec["query"]
    rec = recall.make_niah_mk("uuids", 9, "s")
    assert needle("uuids", rec["query"], rec["outputs"][0]) in rec["context"].split("\n")
    assert rec["type_needle_v"] == "uuid" and len(rec["query"]) == 36

    rec = recall.make_niah_mv(400, "s")
    assert rec["type_needle_v"] == "numbers" and len(rec["outputs"]) == 4 and rec["depth"] is None
    for v in rec["outputs"]:
        assert rec["context"].count(needle("numbers", rec["query"], v)) == 1

    rec = recall.make_vt(20, "s", None, "EXAMPLE")
    chain = [f"VAR {rec['outputs'][0]} = {rec['query']}"] + \
        [f"VAR {b} = VAR {a}" for a, b in zip(rec["outputs"], rec["outputs"][1:])]
    positions = [rec["context"].index(c) for c in chain]
    assert positions == sorted(positions) and rec["context"].count("The grass is green.") == 20
    assert rec["example"] == "EXAMPLE" and rec["num_v"] == 5
    assert all(re.fullmatch("[A-Z]{5}", v) for v in rec["outputs"])
    assert 10000 <= int(rec["query"]) < 99999  # np.random.randint(10000, 99999)
    # deterministic for a seed, different across seeds
    assert recall.make_vt(20, "s", None, "EXAMPLE") == rec and recall.make_vt(20, "t", None, "EXAMPLE") != rec

# ------------------------------------------------------------------------------------------------------------
# 1. word keys: RULER's list (niah.py: every adjective-noun pair of wonderwords' lists, sorted and deduplicated)


def rulers_list(adjs, nouns):  # niah.py, written out: words = sorted(list(set(f"{adj}-{noun}" ...)))
    return sorted(set(f"{adj}-{noun}" for adj in adjs for noun in nouns))


def test_word_pairs_equal_rulers_sorted_list_where_words_share_hyphens():
    adjs = ["x", "x-y", "x-y-z", "x y", "xa", "", "-a", "b", "b", "Early", "old", "old-fashioned", "older"]
    nouns = ["y-b", "b", "z", "y", "a-z", "", "Z", "fashioned-b", "y-z"]  # "x-y-z" is both x + y-z and x-y + z
    pairs = recall.WordPairs(adjs, nouns)
    assert [pairs[i] for i in range(len(pairs))] == rulers_list(adjs, nouns)
    with pytest.raises(IndexError):
        pairs[len(pairs)]


def test_word_keys_are_rulers_wonderwords_list():
    wonderwords = pytest.importorskip("wonderwords")
    from importlib.metadata import version
    assets = os.path.join(os.path.dirname(wonderwords.__file__), "assets")
    adjs, nouns = [], []
    for name, words in (("adjectivelist.txt", adjs), ("nounlist.txt", nouns)):
        with open(os.path.join(assets, name)) as f:
            lines = f.read().split("\n")
        words += [w.rstrip() for w in lines[:-1 if lines[-1] == "" else None]]  # lines, right-stripped ("nasty ")
    read = getattr(wonderwords.random_word, "_get_words_from_text_file", None)  # what niah.py calls
    if read is not None:
        assert read("adjectivelist.txt") == adjs and read("nounlist.txt") == nouns
    assert len(set(adjs)) > 900 and len(set(nouns)) > 6700
    # no two pairs coincide in these lists, so RULER's list has |adjectives| x |nouns| pairs (6,171,620 with 3.0.1,
    # also counted on RULER's list built in full, which takes 17 s and 0.8 GB)
    words, source = recall.words()
    assert len(words) == len(set(adjs)) * len(set(nouns))
    assert source == f"wonderwords {version('wonderwords')} ({len(words)} pairs)"
    # the order too, on every adjective that is another's hyphen-prefix ("old", "old-fashioned") and a sample
    hyphened = {a for a in adjs for b in adjs if b.startswith(a + "-")}
    sub = sorted(hyphened | {b for a in hyphened for b in adjs if b.startswith(a + "-")} | set(adjs[::40]))
    pairs = recall.WordPairs(sub, nouns)
    assert [pairs[i] for i in range(len(pairs))] == rulers_list(sub, nouns)
    rec = recall.make_niah_mk("words", 3, "s")
    q, noun_set = rec["query"], set(nouns)
    assert any(q.startswith(a + "-") and q[len(a) + 1:] in noun_set for a in adjs)


def test_without_wonderwords_the_embedded_list_is_used_and_said_once(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wonderwords", None)  # import wonderwords now fails
    words, source = recall.load_words()
    assert len(words) == len(set(recall.ADJECTIVES)) * len(set(recall.NOUNS)) > 10000
    assert source == f"embedded list of {len(words)} pairs (pip install wonderwords for RULER's)"
    monkeypatch.setattr(recall, "_WORDS", (words, source))
    monkeypatch.setattr(recall, "_warned", False)
    capsys.readouterr()
    for s in range(3):
        rec = recall.make_niah_mk("words", 5, s)
        assert rec["query"].split("-")[0] in recall.ADJECTIVES
    recall.make_niah_mv(50, "s")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "embedded list" in err and "pip install wonderwords" in err

# ------------------------------------------------------------------------------------------------------------
# 2. the gold needle: niah.py draws `random.sample(range(num_haystack), 1)` and inserts before that distractor


@pytest.mark.parametrize("task", ["ruler_niah_mk_2", "ruler_niah_mk_3"])
def test_gold_needle_is_at_a_uniform_index_never_after_the_last_distractor(task):
    n, runs = 4, 500
    kind = "numbers" if task == "ruler_niah_mk_2" else "uuids"
    where = Counter()
    for s in range(runs):
        rec = recall.make_niah_mk("words" if task == "ruler_niah_mk_2" else "uuids", n, s)
        lines = rec["context"].split("\n")
        index = lines.index(needle(kind, rec["query"], rec["outputs"][0]))
        assert len(lines) == n + 1 and sum(rec["query"] in x for x in lines) == 1
        assert rec["depth"] == round(index / n, 2)
        where[index] += 1
    assert set(where) == set(range(n))  # first to last-but-one line: never after the last distractor
    assert all(abs(c - runs / n) < 0.25 * runs / n for c in where.values()), where  # uniform (3 sigma)

# ------------------------------------------------------------------------------------------------------------
# 3. variable tracking's one-shot example, against RULER's strings written out


RULER_EXAMPLE = re.compile(
    r"Memorize and track the chain\(s\) of variable assignment hidden in the following text\. "  # collapsed: no \n\n
    r"(?P<context>.*)\n "
    r"Question: Find all variables that are assigned the value (?P<value>\d{5}) in the text "  # "above." dropped
    r"Answer: According to the chain\(s\) of variable assignment in the text above, 5 variables are assgined the "
    r"value (?P=value), they are:  (?P<names>[A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3} [A-Z]{3})", re.DOTALL)


def test_vt_example_is_rulers_one_shot(tok):
    records = synthetic_records("ruler_vt", 1024, 2, tok, seed=3)
    example = records[0]["example"]
    m = RULER_EXAMPLE.fullmatch(example)
    assert m, example[-400:]
    names, noise = m["names"].split(), re.escape(NOISE)
    # RULER's context: " ".join of noise lines (NOISE + "\n") and chain lines ("VAR A = VAR B ", trailing space)
    items = rf"(?:{noise}\n |VAR [A-Z]{{3}} = VAR [A-Z]{{3}}  |VAR [A-Z]{{3}} = \d{{5}} )+"
    assert re.fullmatch(items, m["context"] + "\n "), m["context"]
    chain = [f"VAR {names[0]} = {m['value']}"] + [f"VAR {b} = VAR {a}" for a, b in zip(names, names[1:])]
    assert re.findall(r"VAR [A-Z]{3} = (?:VAR [A-Z]{3}|\d{5})", m["context"]) == chain and len(set(names)) == 5
    # sized as RULER: input (without the names) + 30 generated tokens within 500, grown 5 noise lines at a time
    size = len(tok.encode(example[:example.rindex("they are: ") + len("they are: ")]))
    assert 300 < size and size + 30 <= 500 and m["context"].count(NOISE) % 5 == 0
    # one example per seed, whatever the length (RULER draws it first, from the file's seed); another seed, another
    assert all(r["example"] == example for r in records + synthetic_records("ruler_vt", 2048, 1, tok, seed=3))
    assert synthetic_records("ruler_vt", 1024, 1, tok, seed=4)[0]["example"] != example
    # HELMET's load_ruler: example + "\n\n", then its template
    prompt = prompt_text("ruler_vt", records[0], tok)
    assert prompt.startswith(example + "\n\nMemorize and track the chain(s) of variable assignment hidden in the "
                             "following text.\n\n" + records[0]["context"] + "\nQuestion: Find all variables")

# ------------------------------------------------------------------------------------------------------------
# 4. calibration, measured with the tokenizer (not with recall.prompt_length), and the gold in the prompt


def gold_strings(task, rec):
    """What must be in the prompt for the task to be answerable: the gold needles / pair / chain, and the answers."""
    if task == "json_kv":
        return [f'"{rec["question"]}": "{rec["answer"]}"', rec["answer"]]
    if task == "ruler_vt":
        names = rec["outputs"]
        return [f"VAR {names[0]} = {rec['query']}"] + [f"VAR {b} = VAR {a}" for a, b in zip(names, names[1:])] + names
    kind = {"number": "numbers", "uuid": "uuids"}.get(rec["type_needle_v"], rec["type_needle_v"])
    return [needle(kind, rec["query"], v) for v in rec["outputs"]] + rec["outputs"]


@pytest.mark.parametrize("task", SYNTHETIC)
@pytest.mark.parametrize("length", [1024, 4096])
def test_calibration_fits_and_fills_the_length_with_the_gold_in_the_prompt(tok, task, length):
    records = synthetic_records(task, length, 6, tok, seed=3)
    gen = TASKS[task].gen_len
    assert tok.add_bos  # Llama-3 starts its encodings with BOS: HELMET's prompt is BOS + the prompt's tokens
    for rec in records:
        prompt = prompt_text(task, rec, tok)
        used = 1 + len(tok.encode(prompt)) + gen
        assert 0.9 * length <= used <= length, (task, length, rec["depth"], used)
        # within the length, HELMET does not cut the context, so this is the prompt the model sees
        for gold in gold_strings(task, rec):
            assert gold in prompt, (task, length, rec["depth"], gold)
    if task == "json_kv":
        assert [r["depth"] for r in records] == recall.KV_DEPTHS
    elif task in ("ruler_niah_mk_2", "ruler_niah_mk_3"):
        assert all(0 <= r["depth"] < 1 for r in records) and len({r["depth"] for r in records}) > 1
    assert records == synthetic_records(task, length, 6, tok, seed=3)  # deterministic for a seed


def test_user_errors_are_one_clear_line(tok):
    with pytest.raises(UserError, match="too short for json_kv"):
        synthetic_records("json_kv", 150, 1, tok, seed=0)
    with pytest.raises(UserError, match="too short for ruler_vt"):  # its ~350-token example must fit too
        TASKS["ruler_vt"].check_length(400, tok)
    TASKS["ruler_vt"].check_length(1024, tok)


# ------------------------------------------------------------------------------------------------------------
# prompts, character for character against HELMET's templates written out here


def test_json_kv_prompt_matches_helmet_template(tok):
    rec = {"context": '{"k1": "v1",\n "k2": "v2"}', "demos": [["d1", "e1"], ["d2", "e2"], ["d3", "e3"]],
           "question": "k2", "answer": "v2"}
    expected = ('{"k1": "v1",\n "k2": "v2"}\n\nExtract the value corresponding to the specified key in the JSON '
                'object below.\n\nKey: d1\nCorresponding value: e1\n\nKey: d2\nCorresponding value: e2\n\n'
                'Key: k2\nCorresponding value:')
    assert prompt_text("json_kv", rec, tok) == expected


def test_ruler_prompts_match_helmet_templates(tok):
    rec = {"context": "line one\nline two", "query": "calm-otter", "type_needle_v": "number", "outputs": ["1"]}
    single = ("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz "
              "you about the number afterwards.\nline one\nline two\nWhat is the special magic number for calm-otter "
              "mentioned in the provided text?\nThe special magic number for calm-otter mentioned in the provided "
              "text is")
    assert prompt_text("ruler_niah_mk_2", rec, tok) == single
    assert prompt_text("ruler_niah_mk_3", rec, tok) == single
    rec = dict(rec, type_needle_v="numbers")
    multi = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz "
             "you about the numbers afterwards.\nline one\nline two\nWhat are all the special magic numbers for "
             "calm-otter mentioned in the provided text?\nThe special magic numbers for calm-otter mentioned in the "
             "provided text are")
    assert prompt_text("ruler_niah_mv", rec, tok) == multi
    rec = {"context": "VAR ABCDE = 12345", "query": "12345", "num_v": 5, "example": "EXAMPLE", "outputs": ["ABCDE"]}
    vt = ("EXAMPLE\n\nMemorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
          "VAR ABCDE = 12345\nQuestion: Find all variables that are assigned the value 12345 in the text above.\n"
          "Answer: According to the chain(s) of variable assignment in the text above, 5 variables are assigned the "
          "value 12345, they are:")
    assert prompt_text("ruler_vt", rec, tok) == vt



@pytest.mark.parametrize("task", ["json_kv", "ruler_niah_mk_2"])
def test_json_kv_and_ruler_files_sample_like_datasets_shuffle(tmp_path, task):
    rows = [{"context": f"c{i}", "demos": [], "question": f"k{i}", "answer": f"v{i}", "query": f"k{i}",
             "type_needle_v": "number", "outputs": [f"v{i}"], "depth": i % 6, "num_kvs": 1} for i in range(250)]
    recs = helmet_records(task, write_jsonl(tmp_path / "f.jsonl", rows), None, samples=100, seed=42)
    expected = np.random.default_rng(42).permutation(250)[:100]  # data.shuffle(seed=42).select(range(100))
    assert [r["context"] for r in recs] == [f"c{i}" for i in expected]
    if datasets_order(250, 42) is not None:
        assert list(expected) == datasets_order(250, 42)[:100]



def test_record_without_a_template_field_names_the_file_and_the_field(tmp_path):
    rows = [{"context": "c", "query": "q", "outputs": ["1"]}]  # no type_needle_v, which the template reads
    with pytest.raises(UserError, match=r"r.jsonl: a record has no 'type_needle_v' field, which ruler_niah_mk_2 "):
        helmet_records("ruler_niah_mk_2", write_jsonl(tmp_path / "r.jsonl", rows), None, 5, 0)
