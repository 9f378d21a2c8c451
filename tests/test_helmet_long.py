"""helmet_long.py: HELMET's ICL, LongQA and Summ tasks on the fixture copies in tests/fixtures/helmet/{icl,narrativeqa,
infbench,multi_lexsum} (made by tests/fixtures/make_helmet_long_fixtures.py). The expected selections are computed
here independently: HELMET's procedure written out again (its balance_labels, the global random.seed/shuffle label
map, sha256 seeds), with `datasets` itself as the shuffle / train_test_split reference when it is installed (else
numpy's default_rng permutation, which is what `datasets` does)."""
import hashlib
import json
import math
import os
import random
import re
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import helmet_long as hl  # noqa: E402

DATA = os.path.join(ROOT, "tests", "fixtures", "helmet")
SEED = 42
# Fixture documents are hundreds of words, so the Llama-2 length filters are scaled down, and every LongQA / Summ
# task runs at a length that leaves a 400-token context (length - HELMET's reserve).
SMALL = {"narrativeqa": 301, "infbench": 300, "multi_lexsum": 300}
LENGTH = {"narrativeqa": 700, "infbench_qa_eng": 610, "infbench_choice_eng": 610, "infbench_sum_eng": 1800,
          "multi_lexsum": 1100}
LONG = list(LENGTH)
ICL = [t for t in hl.TASKS if t.startswith("icl_")]


class WordTok:
    """A reversible toy tokenizer: one token per word with its leading whitespace; decode joins them back."""

    def __init__(self):
        self.vocab, self.pieces = {}, []

    @staticmethod
    def split(text):
        return re.findall(r"\s*\S+|\s+", text)

    def encode(self, text):
        ids = []
        for piece in self.split(text):
            if piece not in self.vocab:
                self.vocab[piece] = len(self.pieces)
                self.pieces.append(piece)
            ids.append(self.vocab[piece])
        return ids

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(hl, "MIN_TOKENS", dict(SMALL))


def read(rel):
    with open(os.path.join(DATA, rel), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

# ------------------------------------------------------------------------------------------------------------
# references: `datasets` (when installed) or numpy, and HELMET's procedures written out again


try:
    import datasets
except ImportError:
    datasets = None


def ref_shuffle(n, seed):
    """Dataset.shuffle(seed) as row order."""
    if datasets is not None:
        return datasets.Dataset.from_dict({"i": list(range(n))}).shuffle(seed=seed)["i"]
    return list(np.random.default_rng(seed).permutation(n))


def ref_split(n, seed):
    """Dataset.train_test_split(test_size=0.1, seed) as (train rows, test rows)."""
    if datasets is not None:
        split = datasets.Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=0.1, seed=seed)
        return split["train"]["i"], split["test"]["i"]
    perm, n_test = list(np.random.default_rng(seed).permutation(n)), math.ceil(0.1 * n)
    return perm[n_test:], perm[:n_test]


def sha_seed(text, seed):
    return (int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) + seed) % 2**31


def helmet_balance_labels(data, shots, seed, label_field):
    """HELMET data.py's balance_labels, as written there."""
    rand = random.Random(seed)
    label_mapping = {x[label_field]: [] for x in data}
    for x in data:
        label_mapping[x[label_field]].append(x)
    num_rounds = math.ceil(shots / len(label_mapping))
    new_data = [[] for _ in range(num_rounds)]
    for _, samples in label_mapping.items():
        indices = rand.sample(range(len(samples)), num_rounds % len(samples))
        while len(indices) < num_rounds:
            indices += rand.sample(range(len(samples)), min(num_rounds - len(indices), len(samples)))
        for i, idx in enumerate(indices):
            new_data[i].append(samples[idx])
    for i in range(len(new_data)):
        rand.shuffle(new_data[i])
    return [item for sublist in new_data for item in sublist][:shots]


ICL_SOURCES = {"icl_trec_coarse": ("trec", "test", "coarse_label", 6),
               "icl_trec_fine": ("trec", "test", "fine_label", 50), "icl_banking77": ("banking77", "test", "label", 77),
               "icl_clinic150": ("clinc150", "validation", "intent", 151), "icl_nlu": ("nlu", None, "label", 68)}


def helmet_icl(task, samples, seed, shots):
    folder, test_split, label, num_labels = ICL_SOURCES[task]
    train = [dict(r, _i=i) for i, r in enumerate(read(f"icl/{folder}/train.jsonl"))]
    if test_split is None:
        tr, te = ref_split(len(train), seed)
        train, test = [train[i] for i in tr], [train[i] for i in te]
    else:
        test = [dict(r, _i=i) for i, r in enumerate(read(f"icl/{folder}/{test_split}.jsonl"))]
    if samples is not None and len(test) > samples:
        test = helmet_balance_labels([test[i] for i in ref_shuffle(len(test), seed)], samples, seed, label)
    state, out = random.getstate(), []
    for s in test:
        local_seed = sha_seed(s["text"], seed)
        demos = helmet_balance_labels(train, shots, local_seed, label)
        label_mapping = list(range(num_labels))
        random.seed(local_seed)  # HELMET uses the global generator
        random.shuffle(label_mapping)
        context = "\n\n".join("{text}\nlabel: {label}".format(text=d["text"], label=str(label_mapping[int(d[label])]))
                              for d in demos)
        out.append({"context": context, "question": s["text"], "answer": str(label_mapping[int(s[label])]),
                    "id": s["_i"]})
    random.setstate(state)
    return out


def truncated(text, max_length):
    """truncate_llama2 with WordTok: BOS + tokens over max_length keep max_length - len(BOS + marker) tokens."""
    pieces, marker = WordTok.split(text), len(WordTok.split(hl.OMITTED))
    if 1 + len(pieces) <= max_length:
        return text
    return "".join(pieces[:max_length - 1 - marker]) + " ... [the rest of the text is omitted]"


def long_enough(text, minimum):
    return 1 + len(WordTok.split(text)) >= minimum

# ------------------------------------------------------------------------------------------------------------
# 1. selection equals HELMET's procedure


def test_references_agree():
    """`datasets` shuffle / train_test_split are numpy's permutation; random.seed + shuffle == Random(seed)."""
    if datasets is not None:
        assert ref_shuffle(37, 42) == list(np.random.default_rng(42).permutation(37))
        perm = list(np.random.default_rng(7).permutation(50))
        assert ref_split(50, 7) == (perm[5:], perm[:5])
    for seed in (0, 42, 2**31 - 1):
        a, b = list(range(151)), list(range(151))
        random.seed(seed)
        random.shuffle(a)
        random.Random(seed).shuffle(b)
        assert a == b


@pytest.mark.parametrize("task", ICL)
@pytest.mark.parametrize("samples", [12, None])
def test_icl_selection_matches_helmet(task, samples):
    recs = hl.records(task, 4096, DATA, samples, SEED, None, shots=31)
    assert recs == helmet_icl(task, samples, SEED, 31)
    if samples:
        assert len(recs) == samples


def test_icl_other_seed_and_default_shots():
    recs = hl.records("icl_banking77", 4096, DATA, 9, 7, None)
    assert recs == helmet_icl("icl_banking77", 9, 7, 180)  # HELMET's 180 shots at 4K, sampled with replacement
    assert recs != helmet_icl("icl_banking77", 9, SEED, 180)
    assert len(recs[0]["context"].split("\n\n")) == 180


def test_icl_test_split_not_above_samples_keeps_file_order():
    """HELMET shuffles and balances the test split only when it has more rows than max_test_samples (TREC: 500
    rows, 500 samples: the file order)."""
    recs = hl.records("icl_trec_coarse", 4096, DATA, 30, SEED, None, shots=5)
    assert [r["id"] for r in recs] == list(range(30))


def test_narrativeqa_selection(small):
    tok = WordTok()
    recs = hl.records("narrativeqa", LENGTH["narrativeqa"], DATA, 5, SEED, tok)
    test, train = read("narrativeqa/test.jsonl"), read("narrativeqa/train.jsonl")
    chosen = [i for i in ref_shuffle(len(test), SEED) if 1 + len(WordTok.split(test[i]["document"]["text"])) > 300]
    assert [r["id"] for r in recs] == chosen[:5]
    for r in recs:
        row = test[r["id"]]
        demos = [train[j] for j in ref_shuffle(len(train), sha_seed(str(r["id"]), SEED))[:2]]
        assert r["demo"] == ("For example:\n\n" + "\n\n".join(f"Question: {d['question']['text']}\nAnswer: "
                                                              f"{d['answers'][0]['text']}" for d in demos)
                             + "\n\nNow, use the following story to answer the question:\n\n")
        assert r["context"] == truncated(row["document"]["text"], 400)
        assert r["question"] == row["question"]["text"] and r["answer"] == [a["text"] for a in row["answers"]]
    assert any(r["context"].endswith(hl.OMITTED) for r in recs) and not all(r["context"].endswith(hl.OMITTED)
                                                                             for r in recs)


@pytest.mark.parametrize("task", ["infbench_qa_eng", "infbench_choice_eng", "infbench_sum_eng"])
def test_infbench_selection(task, small):
    rows = read(f"infbench/{hl.INFBENCH[task]}.jsonl")
    recs = hl.records(task, LENGTH[task], DATA, 3, SEED, WordTok())
    long = [r for r in rows if long_enough(r["context"], 300)]
    assert 3 < len(long) < len(rows)
    chosen = [long[j] for j in ref_shuffle(len(long), SEED)[:3]]
    assert [r["id"] for r in recs] == [r["id"] for r in chosen]
    for rec, row in zip(recs, chosen):
        assert rec["context"] == truncated(row["context"], 400) and rec["question"] == row["input"]
        others = [x for x in rows if x["id"] != row["id"]]
        demos = [others[j] for j in ref_shuffle(len(others), SEED)[:2]]
        if task == "infbench_qa_eng":
            demo = "\n\n".join(f"[story text]\nQuestion: {d['input']}\nAnswer: {d['answer'][0]}" for d in demos)
            assert rec["answer"] == row["answer"]
        elif task == "infbench_choice_eng":
            letter = lambda d: "ABCD"[d["options"].index(d["answer"][0])]
            opts = lambda d: "A. {}\nB. {}\nC. {}\nD. {}".format(*d["options"])
            demo = "\n\n".join(f"[story text]\nQuestion: {d['input']}\nOptions:\n{opts(d)}\nAnswer: {letter(d)}"
                               for d in demos)
            assert rec["answer"] == [letter(row), f"{letter(row)}. {row['answer'][0]}"]
            assert rec["options"] == opts(row)
        else:
            demo = "\n\n".join(f"[story text]\nSummary: {d['answer'][0].strip()}" for d in demos)
            keypoints = {k["id"]: k["keypoints"] for k in read("infbench/longbook_sum_eng_keypoints.jsonl")}
            assert rec["keypoints"] == keypoints[row["id"]]
        assert rec["demo"] == f"For example:\n\n{demo}\n\nNow, read the following story:\n\n"


def test_multi_lexsum_selection(small):
    val, train = read("multi_lexsum/validation.jsonl"), read("multi_lexsum/train.jsonl")
    test = [r for r in val if r["summary/short"] is not None and long_enough("\n\n".join(r["sources"]), 300)]
    pool = [r for r in train if r["summary/short"] is not None]
    keypoints = {k["id"]: k["summary/short_keypoints"] for k in read("multi_lexsum/multi_lexsum_val.jsonl")}
    everything = hl.records("multi_lexsum", 1100, DATA, len(test), SEED, WordTok())
    assert [r["id"] for r in everything] == [r["id"] for r in test]  # not more than `samples`: no shuffle
    recs = hl.records("multi_lexsum", 1100, DATA, 3, SEED, WordTok())
    chosen = [test[j] for j in ref_shuffle(len(test), SEED)[:3]]
    assert [r["id"] for r in recs] == [r["id"] for r in chosen]
    for rec, row in zip(recs, chosen):
        demos = [pool[j] for j in ref_shuffle(len(pool), sha_seed(row["id"], SEED))[:2]]
        assert rec["demo"] == ("Example summaries:\n\n" + "\n\n".join(f"Summary: {d['summary/short']}" for d in demos)
                               + "\n\nNow, write a summary of the following legal documents.\n")
        assert rec["context"] == truncated("\n\n".join(row["sources"]), 400)
        assert (rec["answer"], rec["question"], rec["summary/long"]) == (row["summary/short"], "", row["summary/long"])
        assert rec["keypoints"] == keypoints[row["id"]]


def test_length_filter_boundaries(tmp_path, small):
    """NarrativeQA keeps documents of more than 300 (131072) tokens with BOS, InfBench / Multi-LexSum at least 300."""
    def doc(tokens):  # WordTok tokens, plus one for BOS
        return " ".join(f"w{i}" for i in range(tokens - 1))
    os.makedirs(tmp_path / "narrativeqa")
    os.makedirs(tmp_path / "infbench")
    rows = [{"document": {"id": str(n), "text": doc(n)}, "question": {"text": f"q{n}"}, "answers": [{"text": "a"}]}
            for n in (299, 300, 301, 302)]
    for split in ("train", "test"):
        (tmp_path / "narrativeqa" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = [{"id": n, "context": doc(n), "input": f"q{n}", "answer": ["a"], "options": []} for n in (299, 300, 301)]
    (tmp_path / "infbench" / "longbook_qa_eng.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    nqa = hl.records("narrativeqa", 10000, str(tmp_path), None, SEED, WordTok())
    assert sorted(r["question"] for r in nqa) == ["q301", "q302"]
    inf = hl.records("infbench_qa_eng", 10000, str(tmp_path), None, SEED, WordTok())
    assert [r["id"] for r in inf] == [300, 301]  # samples None: HELMET does not shuffle


def test_llama3_truncation_cuts_the_text_where_the_kept_tokens_end():
    from tokenizer import load_tokenizer
    tok = load_tokenizer(None)
    text = "Ünïcödé wörds — ” and emoji 🦙🦙 " * 300
    out = hl._Lengths(tok).truncate(text, 500)
    kept = out[:-len(hl.OMITTED)]
    assert out.endswith(hl.OMITTED) and text.startswith(kept)
    assert abs(1 + len(tok.encode(out)) - 500) <= 2
    assert hl._Lengths(tok).truncate(text[:100], 500) == text[:100]

# ------------------------------------------------------------------------------------------------------------
# 2. prompts, character for character against HELMET's templates written out here


def test_prompts_match_helmet_templates(small):
    tok = WordTok()
    rec = hl.records("icl_trec_coarse", 4096, DATA, 5, SEED, None, shots=4)[0]
    assert hl.build_prompt("icl_trec_coarse", rec) == (
        "Use the provided mapping from the text to label to assign a label to the text. Only output \"label: {label}\" "
        "and nothing else. \n\n" + rec["context"] + "\n\n" + rec["question"] + "\nlabel:")
    rec = hl.records("narrativeqa", 700, DATA, 1, SEED, tok)[0]
    user = ("You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
            "as concisely as you can, using a single phrase if possible.\n\n" + rec["demo"] + rec["context"]
            + "\n\nQuestion: " + rec["question"])
    assert hl.build_prompt("narrativeqa", rec, chat=True) == user
    assert hl.build_prompt("narrativeqa", rec) == user + "\nAnswer:"
    rec = hl.records("infbench_qa_eng", 610, DATA, 1, SEED, tok)[0]
    assert hl.build_prompt("infbench_qa_eng", rec) == (
        "You are given a story and a question. Answer the question as concisely as you can, using a single phrase if "
        "possible.\n\n" + rec["demo"] + rec["context"] + "\n\nQuestion: " + rec["question"] + "\n\nAnswer:")
    rec = hl.records("infbench_choice_eng", 610, DATA, 1, SEED, tok)[0]
    assert hl.build_prompt("infbench_choice_eng", rec) == (
        "You are given a story and a question with multiple choices. Choose the best answer from the options provided. "
        "Only one of the following options is correct, output the answer using one single letter (A, B, C, or D). "
        "Don't say anything else.\n\n" + rec["demo"] + rec["context"] + "\n\nQuestion: " + rec["question"]
        + "\nOptions:\n" + rec["options"] + "\n\nAnswer:")
    rec = hl.records("infbench_sum_eng", 1800, DATA, 1, SEED, tok)[0]
    assert hl.build_prompt("infbench_sum_eng", rec) == (
        "You are given a book and you are tasked to summarize it. Write a summary of about 1000 to 1200 words. Only "
        "write about the plot and characters of the story. Do not discuss the themes or background of the book. Do not "
        "provide any analysis or commentary.\n\n" + rec["demo"] + rec["context"] + "\n\nNow summarize the book."
        + "\n\nSummary:")
    rec = hl.records("multi_lexsum", 1100, DATA, 1, SEED, tok)[0]
    assert hl.build_prompt("multi_lexsum", rec) == (
        "You are given the legal documents in a civil rights lawsuit, and you are tasked to summarize the case. Write "
        "a concise summary of one paragraph (200 to 250 words). The summary should contain a short description of the "
        "background, the parties involved, and the outcomes of the case.\n\n" + rec["demo"] + "Legal documents:\n"
        + rec["context"] + "\n\nNow please summarize the case." + "\n\nSummary:")


def test_task_table_and_shots():
    assert {t: (s.category, s.gen_len, s.stop_newline, s.metric, s.sep, s.chat) for t, s in hl.TASKS.items()} == {
        **{t: ("ICL", 20, True, "exact_match", "\n", False) for t in ICL},
        "narrativeqa": ("LongQA", 100, False, "gpt-4-score", "\n", True),
        "infbench_qa_eng": ("LongQA", 10, False, "rougeL_f1", "\n\n", True),
        "infbench_choice_eng": ("LongQA", 10, False, "exact_match", "\n\n", True),
        "infbench_sum_eng": ("Summ", 1200, False, "gpt-4-f1", "\n\n", True),
        "multi_lexsum": ("Summ", 400, False, "gpt-4-f1", "\n\n", True)}
    assert hl.icl_shots("icl_trec_coarse", 131072) == 6600 and hl.icl_shots("icl_nlu", 4096) == 250
    assert hl.icl_shots("icl_clinic150", 32768) == 1750
    assert hl.icl_shots("icl_trec_fine", 262144) == 12800 and hl.icl_shots("icl_trec_fine", 2048) == 100
    assert hl.icl_shots("icl_banking77", 100000) == round(2900 * 100000 / 65536)

# ------------------------------------------------------------------------------------------------------------
# 3. scoring


def test_icl_label_parsing_and_accuracy():
    cases = [("label: 3", 1), ("label: 3\nWhat is it ?\nlabel: 4", 1), ("label:3", 1), ("label: 3.", 1),
             ("label: label: 3", 1), ("label: 13", 0), ("label: 4 (3)", 0), ("label:", 0), ("", 0),
             ("3", 1),  # no prefix: the first line
             ("label: 5\nlabel: 3", 0)]  # HELMET scores the parsed label only, not max(raw, parsed)
    scores = [hl.score("icl_nlu", out, {"answer": "3"}) for out, _ in cases]
    assert [s["exact_match"] for s in scores] == [float(expected) for _, expected in cases]
    assert scores[-1]["substring_exact_match"] == 0.0
    assert 100 * np.mean([s["exact_match"] for s in scores]) == pytest.approx(100 * 6 / 11)


def test_choice_post_process():
    rec = {"answer": ["B", "B. Ka lo mi."]}
    em = lambda out: (hl.score("infbench_choice_eng", out, rec)["exact_match"],
                      hl.score("infbench_choice_eng", out, rec)["substring_exact_match"])
    assert em("B") == (1, 0) and em("Answer: B") == (1, 0) and em("(B)") == (1, 0)
    assert em("b. ka lo mi. because") == (1, 1)  # the "B. text" option anywhere in the output
    assert em("The answer is B") == (0, 0) and em("C") == (0, 0) and em("") == (0, 0)


def oracle(task, rec):
    if task in ICL:
        return "label: " + rec["answer"]  # completion: the runner puts "label:" in front of the model's " 3"
    return rec["answer"] if isinstance(rec["answer"], str) else rec["answer"][0]


@pytest.mark.parametrize("task", list(hl.TASKS))
def test_oracle_scores_100_and_silence_0(task, small):
    recs = hl.records(task, LENGTH.get(task, 4096), DATA, 3, SEED, WordTok(), shots=6 if task in ICL else None)
    metric = hl.TASKS[task].metric
    metric = "rougeL_f1" if metric.startswith("gpt-4") else metric  # judged later; ROUGE-L is checked here
    silent = ["", "label:"] if task in ICL else [""]
    assert 100 * np.mean([hl.score(task, oracle(task, r), r)[metric] for r in recs]) == 100
    # HELMET quirk, kept: normalize_answer("A") is "" (the article "a" is removed), so an empty output "matches"
    # the gold letter A in InfBench choice: silence scores the share of A answers there, 0 everywhere else
    zero = [float(task == "infbench_choice_eng" and r["answer"][0] == "A") for r in recs]
    assert 0 < sum(zero) < len(recs) if task == "infbench_choice_eng" else sum(zero) == 0
    for out in silent:
        assert [hl.score(task, out, r)[metric] for r in recs] == zero
    if task in LONG and task != "infbench_choice_eng":
        assert hl.score(task, oracle(task, recs[0]), recs[0])["rougeLsum_f1"] == 1.0


def test_summary_parsing_takes_the_better_of_raw_and_parsed():
    rec = {"answer": "Ka lo mi ne ru."}
    out = hl.score("multi_lexsum", "Summary: Ka lo mi ne ru.\nSomething else entirely here.", rec)
    assert out["exact_match"] == 1.0 and out["rougeL_f1"] == 1.0
    assert hl.score("narrativeqa", "Answer: the Ka lo\nmore", {"answer": ["ka lo", "x"]})["exact_match"] == 1.0
    assert hl.score("infbench_qa_eng", "yes", {"answer": ["no"]})["f1"] == 0.0

# ------------------------------------------------------------------------------------------------------------
# 4. files


def test_missing_files_are_one_clear_error(tmp_path):
    for task in hl.TASKS:
        assert hl.available(task, DATA) and not hl.available(task, str(tmp_path))
        with pytest.raises(ValueError, match=re.escape(hl.files(task, str(tmp_path))[0]) + ".*expected DIR/"):
            hl.records(task, 8192, str(tmp_path), 5, SEED, WordTok())
    assert hl.files("icl_nlu", "D") == [os.path.join("D", "icl", "nlu", "train.jsonl")]
    assert hl.files("infbench_sum_eng", "D") == [os.path.join("D", "infbench", "longbook_sum_eng.jsonl")]


def test_missing_field_names_the_layout(tmp_path):
    os.makedirs(tmp_path / "icl" / "nlu")
    (tmp_path / "icl" / "nlu" / "train.jsonl").write_text('{"text": "a", "intent": 1}\n' * 20)
    with pytest.raises(ValueError, match="'label'.*xingkunliuxtracta"):
        hl.records("icl_nlu", 4096, str(tmp_path), 5, SEED, None)


def test_parquet_splits_read_like_jsonl(tmp_path, monkeypatch):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    os.makedirs(tmp_path / "icl" / "trec")
    for split in ("train", "test"):
        rows = read(f"icl/trec/{split}.jsonl")
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "icl" / "trec" / f"{split}.parquet")
    assert hl.files("icl_trec_fine", str(tmp_path))[0].endswith("train.parquet")
    assert hl.records("icl_trec_fine", 4096, str(tmp_path), 12, SEED, None, shots=20) == \
        hl.records("icl_trec_fine", 4096, DATA, 12, SEED, None, shots=20)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(ValueError, match="needs pyarrow"):
        hl.records("icl_trec_fine", 4096, str(tmp_path), 12, SEED, None, shots=20)


def test_without_keypoint_file_records_have_none(tmp_path, small):
    os.makedirs(tmp_path / "infbench")
    src = os.path.join(DATA, "infbench", "longbook_sum_eng.jsonl")
    (tmp_path / "infbench" / "longbook_sum_eng.jsonl").write_bytes(open(src, "rb").read())
    recs = hl.records("infbench_sum_eng", 1800, str(tmp_path), 2, SEED, WordTok())
    assert recs and all("keypoints" not in r for r in recs)
