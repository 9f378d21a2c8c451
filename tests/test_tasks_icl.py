"""tasks/icl.py: HELMET's ICL selection (test samples, label-balanced demos, the label map) against its procedure
written out again in tests/test_tasks_local.py, its shot counts, label parsing and the prompt."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import numpy as np  # noqa: E402

from tasks import TASKS, icl  # noqa: E402
from tests.test_tasks_local import DATA, ICL, SEED, completion_prompt, helmet_icl, records  # noqa: E402



@pytest.mark.parametrize("task", ICL)
@pytest.mark.parametrize("samples", [12, None])
def test_icl_selection_matches_helmet(task, samples):
    recs = records(task, 4096, DATA, samples, SEED, None, shots=31)
    assert recs == helmet_icl(task, samples, SEED, 31)
    if samples:
        assert len(recs) == samples


def test_icl_other_seed_and_default_shots():
    recs = records("icl_banking77", 4096, DATA, 9, 7, None)
    assert recs == helmet_icl("icl_banking77", 9, 7, 180)  # HELMET's 180 shots at 4K, sampled with replacement
    assert recs != helmet_icl("icl_banking77", 9, SEED, 180)
    assert len(recs[0]["context"].split("\n\n")) == 180


def test_icl_test_split_not_above_samples_keeps_file_order():
    """HELMET shuffles and balances the test split only when it has more rows than max_test_samples (TREC: 500
    rows, 500 samples: the file order)."""
    recs = records("icl_trec_coarse", 4096, DATA, 30, SEED, None, shots=5)
    assert [r["id"] for r in recs] == list(range(30))



def test_shots():
    assert icl.icl_shots("icl_trec_coarse", 131072) == 6600 and icl.icl_shots("icl_nlu", 4096) == 250
    assert icl.icl_shots("icl_clinic150", 32768) == 1750
    assert icl.icl_shots("icl_trec_fine", 262144) == 12800 and icl.icl_shots("icl_trec_fine", 2048) == 100
    assert icl.icl_shots("icl_banking77", 100000) == round(2900 * 100000 / 65536)


def test_icl_label_parsing_and_accuracy():
    cases = [("label: 3", 1), ("label: 3\nWhat is it ?\nlabel: 4", 1), ("label:3", 1), ("label: 3.", 1),
             ("label: label: 3", 1), ("label: 13", 0), ("label: 4 (3)", 0), ("label:", 0), ("", 0),
             ("3", 1),  # no prefix: the first line
             ("label: 5\nlabel: 3", 0)]  # HELMET scores the parsed label only, not max(raw, parsed)
    scores = [TASKS["icl_nlu"].score( out, {"answer": "3"}) for out, _ in cases]
    assert [s["exact_match"] for s in scores] == [float(expected) for _, expected in cases]
    assert scores[-1]["substring_exact_match"] == 0.0
    assert 100 * np.mean([s["exact_match"] for s in scores]) == pytest.approx(100 * 6 / 11)



def test_prompt_matches_helmet_template():
    rec = records("icl_trec_coarse", 4096, DATA, 5, SEED, None, shots=4)[0]
    assert completion_prompt("icl_trec_coarse", rec) == (
        "Use the provided mapping from the text to label to assign a label to the text. Only output \"label: {label}\" "
        "and nothing else. \n\n" + rec["context"] + "\n\n" + rec["question"] + "\nlabel:")
