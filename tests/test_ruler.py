"""ruler.py: synthetic JSON KV and RULER records in HELMET's layout, and their calibration in the checkpoint's tokens."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import helmet as hm  # noqa: E402
import ruler  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    from data import load_tokenizer
    return load_tokenizer(None)  # the real Llama-3 tokenizer (llama-models package), offline


def test_synthetic_records_have_helmet_structure():
    rec = ruler.make_json_kv(7, "s", 0.4)
    pairs = json.loads(rec["context"])  # one pair per line, valid JSON
    assert rec["context"].count(",\n ") == 6 and list(pairs)[round(0.4 * 6)] == rec["question"]
    assert pairs[rec["question"]] == rec["answer"] and len(set(pairs)) == 7
    assert all(k not in pairs for k, _ in rec["demos"]) and len(rec["demos"]) == 2
    assert all(len(x) == 36 and x[14] == "4" for x in list(pairs) + list(pairs.values()))  # uuid4 strings

    rec = ruler.make_niah_mk("ruler_niah_mk_2", 9, "s", 1.0)
    lines = rec["context"].split("\n")
    gold = f"One of the special magic numbers for {rec['query']} is: {rec['outputs'][0]}."
    assert len(lines) == 10 and lines[-1] == gold and sum(rec["query"] in x for x in lines) == 1
    assert len(rec["outputs"][0]) == 7 and rec["type_needle_v"] == "number" and "-" in rec["query"]
    rec = ruler.make_niah_mk("ruler_niah_mk_3", 9, "s", 0.0)
    assert rec["context"].split("\n")[0].startswith(f"One of the special magic uuids for {rec['query']} is: ")

    rec = ruler.make_niah_mv(400, "s")
    assert rec["type_needle_v"] == "numbers" and len(rec["outputs"]) == 4
    for v in rec["outputs"]:
        assert rec["context"].count(f"One of the special magic numbers for {rec['query']} is: {v}.") == 1

    rec = ruler.make_vt(20, "s")
    chain = [f"VAR {rec['outputs'][0]} = {rec['query']}"] + \
        [f"VAR {b} = VAR {a}" for a, b in zip(rec["outputs"], rec["outputs"][1:])]
    positions = [rec["context"].index(c) for c in chain]
    assert positions == sorted(positions) and rec["context"].count("The grass is green.") == 20
    assert rec["example"].endswith("they are: " + " ".join(rec["example"].split("they are: ")[1].split()))
    # deterministic for a seed, different across seeds
    assert ruler.make_vt(20, "s") == rec and ruler.make_vt(20, "t") != rec

# ------------------------------------------------------------------------------------------------------------
# 2. calibration in the checkpoint's tokens


@pytest.mark.parametrize("task", hm.SYNTHETIC)
@pytest.mark.parametrize("length", [1024, 4096])
def test_calibration_fits_and_fills_the_length(tok, task, length):
    records = ruler.synthetic_records(task, length, 6, tok, seed=3)
    gen = hm.TASKS[task][2]
    for rec in records:
        used = ruler.prompt_length(task, rec, tok) + gen
        assert 0.9 * length <= used <= length, (task, length, used)
    if task in ("json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3"):
        assert [r["depth"] for r in records] == ruler.KV_DEPTHS
    assert records == ruler.synthetic_records(task, length, 6, tok, seed=3)  # deterministic for a seed


def test_too_short_length_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="too short for json_kv"):
        ruler.synthetic_records("json_kv", 150, 1, tok, seed=0)
