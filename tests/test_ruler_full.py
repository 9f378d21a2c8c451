"""tasks/ruler.py: RULER's other nine tasks checked against what RULER's generators (NVIDIA/RULER at e40fae1,
scripts/data/synthetic/{niah,common_words_extraction,freq_words_extraction,qa}.py and synthetic.yaml) put in a
sample, HELMET's templates for them (data.py load_ruler at 4526dfb), and RULER's metrics (scripts/eval/synthetic/
constants.py) written out here: an oracle scores 100 and a silent model 0 on each of the 13 tasks."""
import json
import math
import os
import re
import sys
from collections import Counter

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common import UserError  # noqa: E402
from tasks import TASKS, Run, ruler  # noqa: E402
from tasks.common import encode_prompt  # noqa: E402
from tests.test_tasks_common import prompt_text, tok  # noqa: E402,F401  (the real Llama-3 tokenizer)

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
RULER_13 = ["ruler_niah_s_1", "ruler_niah_s_2", "ruler_niah_s_3", "ruler_niah_mk_1", "ruler_niah_mk_2",
            "ruler_niah_mk_3", "ruler_niah_mq", "ruler_niah_mv", "ruler_cwe", "ruler_fwe", "ruler_vt", "ruler_qa_1",
            "ruler_qa_2"]


def needle(kind, key, value):  # RULER's needle (the context keeps the plural kind)
    return f"One of the special magic {kind} for {key} is: {value}."


def records(task, length, samples, tok, seed=42, **run):
    recs, _ = TASKS[task].records(length, Run(None, samples, seed, tok, **run))
    return recs


# RULER's metrics as its constants.py defines them, on lists, x100 rounded to 2 decimals
def string_match_all(preds, refs):
    return round(sum(sum(r.lower() in p.lower() for r in ref) / len(ref) for p, ref in zip(preds, refs))
                 / len(preds) * 100, 2)


def string_match_part(preds, refs):
    return round(sum(max(r.lower() in p.lower() for r in ref) for p, ref in zip(preds, refs)) / len(preds) * 100, 2)

# ------------------------------------------------------------------------------------------------------------
# generators


@pytest.mark.parametrize("task, kind_k, kind_v, keys, values, queries, haystack", [
    ("ruler_niah_s_1", "words", "numbers", 1, 1, 1, "repeat"),
    ("ruler_niah_s_2", "words", "numbers", 1, 1, 1, "essay"),
    ("ruler_niah_s_3", "words", "uuids", 1, 1, 1, "essay"),
    ("ruler_niah_mk_1", "words", "numbers", 4, 1, 1, "essay"),
    ("ruler_niah_mq", "words", "numbers", 4, 1, 4, "essay"),
])
def test_niah_samples_are_rulers(tok, task, kind_k, kind_v, keys, values, queries, haystack):
    """synthetic.yaml's configuration of each task: num_needle_k keys (at least num_needle_q), num_needle_v values
    each, num_needle_q of the keys asked ("a, b, and c"), "number" for a single answer; the haystack's text."""
    for rec in records(task, 2048, 4, tok):
        found = re.findall(r"One of the special magic (\w+) for (\S+) is: (\S+)\.", rec["context"])
        assert len(found) == keys * values and {k for k, _, _ in found} and all(k == kind_v for k, _, _ in found)
        asked = rec["query"].replace(", and ", ", ").split(", ")
        assert len(asked) == queries == len(set(asked)) and set(asked) <= {k for _, k, _ in found}
        assert rec["outputs"] == [v for a in asked for _, k, v in found if k == a]
        assert rec["type_needle_v"] == (kind_v[:-1] if queries * values == 1 else kind_v)
        key = asked[0]
        assert (len(key) == 36) if kind_k == "uuids" else ("-" in key)
        assert all((len(v) == 36 and v[14] == "4") if kind_v == "uuids" else re.fullmatch(r"[1-9]\d{6}", v)
                   for v in rec["outputs"])
        if haystack == "repeat":  # the noise paragraph, one per line, the needle on a line of its own
            lines = rec["context"].split("\n")
            assert Counter(lines)[NOISE] == len(lines) - 1 and needle(kind_v, key, rec["outputs"][0]) in lines
        else:
            assert NOISE not in rec["context"] and len(rec["context"].split()) > 100
        plural = "Some special magic" if queries * values > 1 else "A special magic"
        assert prompt_text(task, rec, tok).startswith(f"{plural} {rec['type_needle_v']} ")


def test_niah_single_needle_depth_is_its_place(tok):
    """repeat: the needle's line among the noise lines; essay: one of RULER's 40 depths (by sentence)."""
    for rec in records("ruler_niah_s_1", 2048, 6, tok):
        lines = rec["context"].split("\n")
        at = next(i for i, line in enumerate(lines) if line.startswith("One of the special magic"))
        assert rec["depth"] == at / (len(lines) - 1)
    grid = [round(100 * x / 39) for x in range(40)]  # np.round(np.linspace(0, 100, 40))
    for rec in records("ruler_niah_s_2", 2048, 6, tok):
        at = rec["context"].index("One of the special magic")
        assert round(rec["depth"] * 100) in grid and abs(at / len(rec["context"]) - rec["depth"]) < 0.2


def test_cwe_is_rulers_word_count(tok):
    """common_words_extraction.py at 4K and over: 10 common words 30 times and the rest 3 times, numbered "1. w";
    the one-shot example in RULER's own template and answer prefix: 40 words, 10 of them 10 times, the rest 3
    times, followed by its 10 words numbered (RULER appends them right after "are:")."""
    from importlib.resources import files
    lists = [files("wonderwords").joinpath("assets", n).read_text().splitlines()
             for n in ("nounlist.txt", "adjectivelist.txt", "verblist.txt")]
    vocabulary = {w.rstrip() for lst in lists for w in lst}
    for rec in records("ruler_cwe", 4096, 3, tok):
        items = re.findall(r"(\d+)\. (\S+)", rec["context"])
        assert [int(i) for i, _ in items] == list(range(1, len(items) + 1))
        counts = Counter(w for _, w in items)
        assert set(sorted(counts, key=lambda w: -counts[w])[:10]) == set(rec["outputs"])
        assert {counts[w] for w in rec["outputs"]} == {30} and set(counts.values()) == {30, 3}
        assert set(counts) <= vocabulary and len(rec["outputs"]) == 10
        head, tail = rec["example"].split("\nQuestion: What are the 10 most common words in the above list? Answer: "
                                          "The top 10 words that appear most often in the list are:")
        assert head.startswith("Below is a numbered list of words. In these words, some appear more often than "
                               "others. Memorize the ones that appear most often.\n")
        shown = Counter(w for _, w in re.findall(r"(\d+)\. (\S+)", head))
        assert len(shown) == 40 and sorted(shown.values()) == [3] * 30 + [10] * 10
        top = [w for w, c in shown.items() if c == 10]
        assert re.fullmatch(r"1\. \S+( \d+\. \S+){9}", tail) and sorted(tail.split()[1::2]) == sorted(top)
        text = prompt_text("ruler_cwe", rec, tok)
        assert text.startswith(rec["example"] + "\n\nBelow is a numbered list")


def test_fwe_is_rulers_zeta_sample(tok):
    """freq_words_extraction.py: a vocabulary of length // 50 six-letter coded words, word k repeated
    int(n * k**-2 / zeta(2)) times, the first replaced by "..."; the answer is words 2-4, the most frequent."""
    zeta2 = math.pi ** 2 / 6
    for rec in records("ruler_fwe", 4096, 3, tok):
        counts = Counter(rec["context"].split())
        ranked = sorted(counts, key=lambda w: -counts[w])
        assert ranked[0] == "..." and ranked[1:4] == rec["outputs"]
        n = round(counts["..."] * zeta2)  # count of rank 1 is int(n / zeta(2))
        for k, w in enumerate(ranked[:4], start=1):
            assert abs(counts[w] - n * k ** -2 / zeta2) < 1.5
        assert all(re.fullmatch(r"[a-z]{6}", w) for w in ranked[1:]) and len(counts) <= 4096 // 50


def test_fwe_is_sized_by_rulers_prompt_up_to_the_full_length(tok):
    """At e40fae1 RULER sizes fwe without its generation budget; HELMET's cut then fits the prompt."""
    for rec in records("ruler_fwe", 4096, 2, tok):
        n = len(tok.encode(ruler.RULER_FWE.format(context=rec["context"])))
        assert 4096 - 300 < n <= 4096


SQUAD = {"data": [
    {"title": "A", "paragraphs": [
        {"context": "Paris is the capital of France.", "qas": [
            {"question": "What is the capital of France?", "is_impossible": False, "answers": [{"text": "Paris"}]},
            {"question": "What is the capital of Mars?", "is_impossible": True, "answers": []}]},
        {"context": "France is in Europe.", "qas": [
            {"question": "Where is France?", "is_impossible": False,
             "answers": [{"text": "Europe"}, {"text": "in Europe"}]}]}]},
    {"title": "B", "paragraphs": [{"context": f"Filler paragraph number {i} about nothing at all.", "qas": []}
                                  for i in range(60)]},
]}
HOTPOT = [{"question": "Which band did X join?", "answer": "The Y",
           "context": [["X", ["X is a singer.", " X joined The Y."]], ["The Y", ["The Y is a band."]]]}] + \
    [{"question": f"q{i}", "answer": f"a{i}", "context": [[f"T{i}", [f"Sentence {i} of filler text."]]]}
     for i in range(60)]


@pytest.fixture
def qa_dir(tmp_path):
    (tmp_path / "squad.json").write_text(json.dumps(SQUAD))
    (tmp_path / "hotpotqa.json").write_text(json.dumps(HOTPOT))
    return str(tmp_path)


def test_qa_samples_are_rulers(tok, qa_dir):
    """qa.py: question i for sample i (unanswerable SQuAD questions skipped); its own documents, then its article's
    other paragraphs, then random others; each "Document i:\\n{text}", joined by blank lines; HotpotQA documents are
    "title\\n" + the sentences joined."""
    recs = records("ruler_qa_1", 1024, 2, tok, ruler_qa=qa_dir)
    assert [r["query"] for r in recs] == ["What is the capital of France?", "Where is France?"]
    assert recs[1]["outputs"] == ["Europe", "in Europe"]
    for rec, own, other in zip(recs, ["Paris is the capital of France.", "France is in Europe."],
                               ["France is in Europe.", "Paris is the capital of France."]):
        docs = re.split(r"\n\n(?=Document \d+:\n)", rec["context"])
        assert [d.split("\n", 1)[0] for d in docs] == [f"Document {i + 1}:" for i in range(len(docs))]
        texts = [d.split("\n", 1)[1] for d in docs]
        assert own in texts and other in texts and 10 < len(texts) < 62
        assert len(encode_prompt(TASKS["ruler_qa_1"], TASKS["ruler_qa_1"].prompt(rec), tok)) <= 1024 - 50
    rec = records("ruler_qa_2", 1024, 1, tok, ruler_qa=qa_dir)[0]
    assert rec["outputs"] == ["The Y"] and "X\nX is a singer. X joined The Y." in rec["context"]
    assert "The Y\nThe Y is a band." in rec["context"]
    assert prompt_text("ruler_qa_2", rec, tok).endswith("\n\nQuestion: Which band did X join?\nAnswer:")


def test_qa_needs_rulers_files(tok, tmp_path):
    recs, why = TASKS["ruler_qa_1"].records(1024, Run(None, 2, 42, tok))
    assert recs is None and "--ruler-qa" in why
    with pytest.raises(UserError, match="no squad.json"):
        records("ruler_qa_1", 1024, 2, tok, ruler_qa=str(tmp_path))
    (tmp_path / "hotpotqa.json").write_text('{"not": "a list"}')
    with pytest.raises(UserError, match="hotpotqa.json: not RULER's hotpotqa.json format"):
        records("ruler_qa_2", 1024, 2, tok, ruler_qa=str(tmp_path))

# ------------------------------------------------------------------------------------------------------------
# scores: an oracle 100, a silent model 0, on HELMET's metric and on RULER's


def oracle(rec):
    return " ".join(rec["outputs"])


@pytest.mark.parametrize("task", RULER_13)
def test_oracle_scores_100_and_silence_0(tok, qa_dir, task):
    spec = TASKS[task]
    recs = records(task, 2048, 3, tok, ruler_qa=qa_dir)
    prefix = [spec.templates[1].format(**spec.prompt(r)) for r in recs]
    for rec, p in zip(recs, prefix):  # the runner scores HELMET's way: the system template put back in front
        assert spec.score(p + " " + oracle(rec), rec)[spec.metric] == 1.0
        assert ruler.ruler_match(task, " " + oracle(rec), rec) == 1.0
        assert ruler.ruler_match(task, "", rec) == 0.0
    refs = [r["outputs"] for r in recs]
    metric = string_match_part if task.startswith("ruler_qa") else string_match_all
    for preds in ([oracle(r) for r in recs], [""] * len(recs), [oracle(recs[0])] + [""] * (len(recs) - 1)):
        ours = 100 * sum(ruler.ruler_match(task, p, r) for p, r in zip(preds, recs)) / len(recs)
        assert round(ours, 2) == metric(preds, refs)


def test_rulers_metrics_and_postprocess():
    golds = ["Alpha", "beta"]
    assert ruler.ruler_match("ruler_niah_mv", "  ALPHA and\tBETA\n", {"outputs": golds}) == 1.0
    assert ruler.ruler_match("ruler_niah_mv", "alpha only", {"outputs": golds}) == 0.5
    assert ruler.ruler_match("ruler_qa_1", "alpha only", {"outputs": golds}) == 1.0
    # control characters become newlines, so a gold spanning a tab is not found (RULER's postprocess_pred)
    assert ruler.ruler_match("ruler_qa_1", "new\tyork", {"outputs": ["new york"]}) == 0.0
    assert sorted(ruler.RULER_METRICS) == sorted(RULER_13)

# ------------------------------------------------------------------------------------------------------------
# the runner: --tasks ruler, RULER's table beside HELMET's and the paper's


def ruler_oracle(prompt):
    """Answers each RULER prompt from its own text (QA from the fixture's gold answers)."""
    if "special magic" in prompt:
        kind, query = re.findall(r"special magic (\w+) for (.*) mentioned in the provided text (?:is|are)$", prompt)[-1]
        keys = query.replace(", and ", ", ").split(", ")
        kind = kind.rstrip("s")
        return " " + ", ".join(v for k in keys for v in re.findall(
            f"One of the special magic {kind}s for {re.escape(k)} is: (\\S+)\\.", prompt))
    if "numbered list of words" in prompt:
        body = prompt.split("Below is a numbered list of words.")[-1]  # not the one-shot example's list
        counts = Counter(re.findall(r"\d+\. (\S+)", body))
        return " " + " ".join(w for w, _ in counts.most_common(10))
    if "coded text" in prompt:
        body = prompt.split("coded words.\n", 1)[1].split("\nQuestion:")[0]
        return " " + " ".join(w for w, _ in Counter(body.split()).most_common(4) if w != "...")
    if "variable assignment" in prompt:
        from tests.test_evaluate import read_answer
        return read_answer(prompt)
    question = re.findall(r"Question: (.*)\nAnswer:$", prompt)[-1]
    gold = {q["question"]: q["answers"][0]["text"] for d in SQUAD["data"] for p in d["paragraphs"] for q in p["qas"]
            if not q["is_impossible"]}
    gold.update({d["question"]: d["answer"] for d in HOTPOT})
    return " " + gold[question]


def test_cli_ruler_table(monkeypatch, tok, tmp_path, capsys, qa_dir):
    import evaluate as ev
    from tests.test_evaluate import StubModel
    for ask, want in ((ruler_oracle, 100.0), (None, 0.0)):
        monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: (StubModel(tok, ask, 2048), tok))
        report = ev.main(["--ckpt", "hub/id", "--tasks", "ruler", "--lengths", "2048", "--samples", "2",
                          "--ruler-qa", qa_dir, "--out", str(tmp_path / "r.json")])
        assert list(report["tasks"]) == RULER_13
        assert all(report["tasks"][t][2048]["ruler_score"] == want for t in RULER_13)
        assert all(report["tasks"][t][2048]["score"] == want for t in RULER_13 if want == 100.0)
        assert report["ruler_average"]["RULER"][2048] == {"score": want, "tasks": RULER_13, "complete": True}
        out = capsys.readouterr().out
        assert "RULER's own scores" in out and "RULER (avg)" in out
        assert "RULER = mean of " in out and "(only these ran" not in out.split("RULER's own scores")[1]


def test_ruler_tasks_are_not_run_by_default():
    from tasks import GENERATED, RULER, SYNTHETIC
    assert set(GENERATED) - set(SYNTHETIC) == set(ruler.ONLY_HERE) and RULER == RULER_13
    assert all(not TASKS[t].available("anything") for t in ruler.ONLY_HERE)
