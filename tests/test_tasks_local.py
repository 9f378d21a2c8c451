"""tasks/local.py and the tasks read from local copies of HF datasets (ICL, LongQA, Summ): the shared references
of their tests (a reversible word tokenizer, `datasets`' shuffle and split, HELMET's balance_labels written out
again), and what all of them share: HELMET's table of budgets and metrics, an oracle scoring 100 and silence 0 on
every task, the length cut, missing files and columns, parquet splits. Fixture copies are in
tests/fixtures/helmet/{icl,narrativeqa,infbench,multi_lexsum} (made by tests/fixtures/make_helmet_long_fixtures.py);
`datasets` itself is the shuffle / train_test_split reference when installed (else numpy's default_rng
permutation, which is what `datasets` does)."""
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
from common import UserError  # noqa: E402
from tasks import TASKS, Run, local  # noqa: E402
from tasks.common import encode_prompt  # noqa: E402

DATA = os.path.join(ROOT, "tests", "fixtures", "helmet")
SEED = 42
# Fixture documents are hundreds of words, so the Llama-2 length filters are scaled down, and every LongQA / Summ
# task runs at a length that leaves a 400-token context (length - HELMET's reserve).
SMALL = {"narrativeqa": 301, "infbench": 300, "multi_lexsum": 300}
LENGTH = {"narrativeqa": 700, "infbench_qa_eng": 610, "infbench_choice_eng": 610, "infbench_sum_eng": 1800,
          "multi_lexsum": 1100}
LONG = list(LENGTH)
ICL = [t for t in TASKS if TASKS[t].category == "ICL"]
HELMET_LONG = ICL + LONG


class WordTok:
    """A reversible toy tokenizer: one token per word with its leading whitespace; decode joins them back."""
    add_bos = False  # so that a prompt's ids decode to exactly its text

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
    for k, v in SMALL.items():  # the same dict object, which the task files imported
        monkeypatch.setitem(local.MIN_TOKENS, k, v)


def records(task, length, data_dir, samples, seed, tok, length_tok=None, shots=None):
    """The production path: a task's records at a length (shots None: HELMET's)."""
    recs, source = TASKS[task].records(length, Run(data_dir, samples, seed, tok, length_tok, shots))
    assert recs is not None, source
    return recs


def completion_prompt(task, rec, tok=None):
    """The production prompt of a record, as text (WordTok adds no BOS and decodes to exactly the text)."""
    tok = tok or WordTok()
    return tok.decode(encode_prompt(TASKS[task], TASKS[task].prompt(rec), tok))

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
    pieces, marker = WordTok.split(text), len(WordTok.split(local.OMITTED))
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



def test_llama3_truncation_cuts_the_text_where_the_kept_tokens_end():
    from tokenizer import load_tokenizer
    tok = load_tokenizer(None)
    text = "Ünïcödé wörds — ” and emoji 🦙🦙 " * 300
    out = local.Lengths(tok).truncate(text, 500)
    kept = out[:-len(local.OMITTED)]
    assert out.endswith(local.OMITTED) and text.startswith(kept)
    assert abs(1 + len(tok.encode(out)) - 500) <= 2
    assert local.Lengths(tok).truncate(text[:100], 500) == text[:100]


def test_task_table():
    assert {t: (s.category, s.gen_len, s.stop_newline, s.metric, s.sep, s.chat) for t, s in TASKS.items()
            if t in HELMET_LONG} == {
        **{t: ("ICL", 20, True, "exact_match", "\n", False) for t in ICL},
        "narrativeqa": ("LongQA", 100, False, "gpt-4-score", "\n", True),
        "infbench_qa_eng": ("LongQA", 10, False, "rougeL_f1", "\n\n", True),
        "infbench_choice_eng": ("LongQA", 10, False, "exact_match", "\n\n", True),
        "infbench_sum_eng": ("Summ", 1200, False, "gpt-4-f1", "\n\n", True),
        "multi_lexsum": ("Summ", 400, False, "gpt-4-f1", "\n\n", True)}

def oracle(task, rec):
    if task in ICL:
        return "label: " + rec["answer"]  # completion: the runner puts "label:" in front of the model's " 3"
    return rec["answer"] if isinstance(rec["answer"], str) else rec["answer"][0]


@pytest.mark.parametrize("task", HELMET_LONG)
def test_oracle_scores_100_and_silence_0(task, small):
    recs = records(task, LENGTH.get(task, 4096), DATA, 3, SEED, WordTok(), shots=6 if task in ICL else None)
    metric = TASKS[task].metric
    metric = "rougeL_f1" if metric.startswith("gpt-4") else metric  # judged later; ROUGE-L is checked here
    silent = ["", "label:"] if task in ICL else [""]
    assert 100 * np.mean([TASKS[task].score( oracle(task, r), r)[metric] for r in recs]) == 100
    # HELMET quirk, kept: normalize_answer("A") is "" (the article "a" is removed), so an empty output "matches"
    # the gold letter A in InfBench choice: silence scores the share of A answers there, 0 everywhere else
    zero = [float(task == "infbench_choice_eng" and r["answer"][0] == "A") for r in recs]
    assert 0 < sum(zero) < len(recs) if task == "infbench_choice_eng" else sum(zero) == 0
    for out in silent:
        assert [TASKS[task].score( out, r)[metric] for r in recs] == zero
    if task in LONG and task != "infbench_choice_eng":
        assert TASKS[task].score( oracle(task, recs[0]), recs[0])["rougeLsum_f1"] == 1.0



# ------------------------------------------------------------------------------------------------------------
# 4. files


def test_missing_files_are_one_clear_error(tmp_path):
    """Such a task is listed by default only when DIR holds its files, and skipped, saying which, when asked for."""
    for task in HELMET_LONG:
        assert TASKS[task].available(DATA) and not TASKS[task].available(str(tmp_path))
        recs, why = TASKS[task].records(8192, Run(str(tmp_path), 5, SEED, WordTok()))
        assert recs is None and why.startswith(f"{task} @ 8192: no data under {tmp_path} ({tmp_path}")
    assert TASKS["icl_nlu"].records(8192, Run("D", 5, SEED))[1].endswith(os.path.join("D", "icl", "nlu",
                                                                                         "train.jsonl") + ")")
    assert TASKS["infbench_sum_eng"].records(8192, Run("D", 5, SEED))[1].endswith(
        os.path.join("D", "infbench", "longbook_sum_eng.jsonl") + ")")


def test_missing_field_names_the_layout(tmp_path):
    os.makedirs(tmp_path / "icl" / "nlu")
    (tmp_path / "icl" / "nlu" / "train.jsonl").write_text('{"text": "a", "intent": 1}\n' * 20)
    with pytest.raises(UserError, match="icl_nlu: a row has no 'label' field; expected DIR/icl/nlu.*xingkunliuxtracta"):
        records("icl_nlu", 4096, str(tmp_path), 5, SEED, None)


def test_parquet_splits_read_like_jsonl(tmp_path, monkeypatch):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    os.makedirs(tmp_path / "icl" / "trec")
    for split in ("train", "test"):
        rows = read(f"icl/trec/{split}.jsonl")
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "icl" / "trec" / f"{split}.parquet")
    assert records("icl_trec_fine", 4096, str(tmp_path), 12, SEED, None, shots=20) == \
        records("icl_trec_fine", 4096, DATA, 12, SEED, None, shots=20)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
    with pytest.raises(UserError, match="train.parquet: reading .parquet needs pyarrow"):
        records("icl_trec_fine", 4096, str(tmp_path), 12, SEED, None, shots=20)
