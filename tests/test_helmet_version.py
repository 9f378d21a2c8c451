"""--helmet-version 985b73b: HELMET's first public commit (2024-10-04), the closest to the ProLong paper's evaluation,
against 4526dfb, the default. Each protocol difference that can be replayed (princeton-nlp/HELMET, `git diff 985b73b
4526dfb`: data.py, scripts/generate_configs.py, configs/) is rebuilt here from 985b73b's procedure and compared with
what the runner does; the results record the version."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import tasks  # noqa: E402
from tasks import TASKS, Run, local, recall  # noqa: E402
from tests.test_tasks_common import FIXTURES, prompt_text, tok  # noqa: E402,F401
from tests.test_tasks_local import DATA, SEED, WordTok, read, ref_shuffle, small, truncated  # noqa: E402,F401


@pytest.fixture
def old():
    tasks.use_version("985b73b")
    yield
    tasks.use_version("4526dfb")


def records(task, length, samples, tok, data=DATA, version="985b73b"):
    recs, source = TASKS[task].records(length, Run(data, samples, SEED, tok, helmet_version=version))
    assert recs is not None, source
    return recs


def test_default_is_4526dfb_and_the_switch_restores_it(old):
    assert TASKS["icl_nlu"].samples == 100 and TASKS["ruler_niah_mv"].templates == recall.RULER_NIAH
    tasks.use_version("4526dfb")
    assert TASKS["icl_nlu"].samples == 500 and TASKS["ruler_niah_mv"].templates == recall.RULER_MV
    assert Run(None, 1, 0).helmet_version == "4526dfb"
    assert TASKS["kilt_hotpotqa"].files(8192, "D")[0].endswith("hotpotqa-dev-multikilt_1000_k50_dep3.jsonl")


def test_niah_mv_and_mq_use_the_single_needle_template(old, tok):
    """985b73b tests `"mv_niah" in dataset`, which ruler_niah_mv never matches: the singular text, with the file's
    plural type_needle_v ("A special magic numbers is hidden ...")."""
    rec = json.loads(open(os.path.join(FIXTURES, "ruler", "niah_multivalue", "validation_8192.jsonl")).readline())
    user = ("A special magic {type_needle_v} is hidden within the following text. Make sure to memorize it. I will "
            "quiz you about the {type_needle_v} afterwards.\n{context}\nWhat is the special magic {type_needle_v} for "
            "{query} mentioned in the provided text?")
    system = "The special magic {type_needle_v} for {query} mentioned in the provided text is"
    fields = {"context": rec["context"], "query": rec["query"], "type_needle_v": rec["type_needle_v"]}
    assert prompt_text("ruler_niah_mv", rec, tok) == user.format(**fields) + "\n" + system.format(**fields)
    assert TASKS["ruler_niah_mq"].templates[1].endswith("is")


@pytest.mark.parametrize("task", ["icl_trec_coarse", "icl_banking77", "icl_nlu"])
def test_icl_takes_the_first_shuffled_test_rows_without_balancing(old, task):
    """985b73b: test_data.shuffle(seed).select(range(max_test_samples)); 4526dfb balances the labels."""
    new = records(task, 4096, 12, None, version="4526dfb")
    ours = records(task, 4096, 12, None)
    folder, split = {"icl_trec_coarse": ("trec", "test"), "icl_banking77": ("banking77", "test"),
                     "icl_nlu": ("nlu", None)}[task]
    if split is None:  # NLU: HELMET's 90/10 split of its one split, as tasks/icl.py makes it
        full = read(f"icl/{folder}/train.jsonl")
        perm = ref_shuffle(len(full), SEED)
        test = [full[i]["text"] for i in perm[:-(-len(full) // 10)]]
    else:
        test = [r["text"] for r in read(f"icl/{folder}/{split}.jsonl")]
    assert [r["question"] for r in ours] == [test[i] for i in ref_shuffle(len(test), SEED)[:12]]
    assert [r["question"] for r in ours] != [r["question"] for r in new]
    assert {r["id"]: r["context"] for r in ours if r["id"] in {x["id"] for x in new}} == \
        {r["id"]: r["context"] for r in new if r["id"] in {x["id"] for x in ours}}  # the same demos per sample


def test_narrativeqa_has_no_length_filter(old, small):
    """985b73b: test.shuffle(seed).select(range(samples)) of every row, the demo map over those rows only."""
    test, train = read("narrativeqa/test.jsonl"), read("narrativeqa/train.jsonl")
    ours = records("narrativeqa", 700, 6, WordTok())
    order = list(ref_shuffle(len(test), SEED)[:6])
    assert [r["id"] for r in ours] == order
    assert any(1 + len(WordTok.split(test[i]["document"]["text"])) < local.MIN_TOKENS["narrativeqa"] for i in order)
    draws = local.unseeded_shuffle_seeds(SEED, 6)
    for k, r in enumerate(ours):
        demos = [train[j] for j in ref_shuffle(len(train), draws[k])[:2]]
        assert r["demo"].startswith("For example:\n\nQuestion: " + demos[0]["question"]["text"])
        assert r["context"] == truncated(test[r["id"]]["document"]["text"], 400)


def test_multi_lexsum_and_infbench_have_no_length_filter(old, small):
    val = read("multi_lexsum/validation.jsonl")
    summarized = [r["id"] for r in val if r["summary/short"] is not None]
    ours = records("multi_lexsum", 1100, None, WordTok())
    assert sorted(r["id"] for r in ours) == sorted(summarized)
    assert len(ours) > len(records("multi_lexsum", 1100, None, WordTok(), version="4526dfb"))
    rows = read("infbench/longbook_qa_eng.jsonl")
    ours = records("infbench_qa_eng", 610, 100, WordTok())
    assert [r["id"] for r in ours] == [rows[i]["id"] for i in ref_shuffle(len(rows), SEED)]


def test_kilt_files_of_985b73b(old):
    assert [os.path.basename(f) for f in TASKS["kilt_hotpotqa"].files(8192, "D")] == [
        "hotpotqa-dev-multikilt_1000_k50_dep6.jsonl", "hotpotqa-train-multikilt_1000_k3_dep6.jsonl"]
    assert [os.path.basename(f) for f in TASKS["kilt_popqa_3"].files(4096, "D")] == [
        "popqa_test_1000_k20_dep6.jsonl", "popqa_train_1000_k3_dep6.jsonl"]


def test_results_record_the_version(monkeypatch, tok, tmp_path):
    import evaluate as ev
    from tests.test_evaluate import StubModel
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: (StubModel(), tok))
    for version in ("985b73b", "4526dfb"):
        report = ev.main(["--ckpt", "hub/id", "--tasks", "ruler_niah_mv", "--lengths", "2048", "--samples", "1",
                          "--helmet-version", version, "--out", str(tmp_path / "r.json")])
        assert report["protocol"]["helmet_version"] == version and version in report["protocol"]["helmet"]
        assert (TASKS["ruler_niah_mv"].templates == recall.RULER_NIAH) == (version == "985b73b")
    proc = __import__("subprocess").run([sys.executable, "evaluate.py", "--ckpt", "x", "--helmet-version", "2024"],
                                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice: '2024'" in proc.stderr and "Traceback" not in proc.stderr
