"""evaluate.py: HELMET prompts and metrics, calibration, oracle / empty models, perplexity, and the CLI."""
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import evaluate as ev  # noqa: E402

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "helmet")


@pytest.fixture(scope="module")
def tok():
    from data import load_tokenizer
    return load_tokenizer(None)  # the real Llama-3 tokenizer (llama-models package), offline


# ------------------------------------------------------------------------------------------------------------
# 1. prompts, character for character against HELMET's templates written out here


def test_json_kv_prompt_matches_helmet_template():
    rec = {"context": '{"k1": "v1",\n "k2": "v2"}', "demos": [["d1", "e1"], ["d2", "e2"], ["d3", "e3"]],
           "question": "k2", "answer": "v2"}
    expected = ('{"k1": "v1",\n "k2": "v2"}\n\nExtract the value corresponding to the specified key in the JSON '
                'object below.\n\nKey: d1\nCorresponding value: e1\n\nKey: d2\nCorresponding value: e2\n\n'
                'Key: k2\nCorresponding value:')
    assert ev.build_prompt("json_kv", ev.prompt_fields("json_kv", rec)) == expected


def test_ruler_prompts_match_helmet_templates():
    rec = {"context": "line one\nline two", "query": "calm-otter", "type_needle_v": "number", "outputs": ["1"]}
    single = ("A special magic number is hidden within the following text. Make sure to memorize it. I will quiz "
              "you about the number afterwards.\nline one\nline two\nWhat is the special magic number for calm-otter "
              "mentioned in the provided text?\nThe special magic number for calm-otter mentioned in the provided "
              "text is")
    assert ev.build_prompt("ruler_niah_mk_2", ev.prompt_fields("ruler_niah_mk_2", rec)) == single
    assert ev.build_prompt("ruler_niah_mk_3", ev.prompt_fields("ruler_niah_mk_3", rec)) == single
    rec = dict(rec, type_needle_v="numbers")
    multi = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz "
             "you about the numbers afterwards.\nline one\nline two\nWhat are all the special magic numbers for "
             "calm-otter mentioned in the provided text?\nThe special magic numbers for calm-otter mentioned in the "
             "provided text are")
    assert ev.build_prompt("ruler_niah_mv", ev.prompt_fields("ruler_niah_mv", rec)) == multi
    rec = {"context": "VAR ABCDE = 12345", "query": "12345", "num_v": 5, "example": "EXAMPLE", "outputs": ["ABCDE"]}
    vt = ("EXAMPLE\n\nMemorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
          "VAR ABCDE = 12345\nQuestion: Find all variables that are assigned the value 12345 in the text above.\n"
          "Answer: According to the chain(s) of variable assignment in the text above, 5 variables are assigned the "
          "value 12345, they are:")
    assert ev.build_prompt("ruler_vt", ev.prompt_fields("ruler_vt", rec)) == vt


def rag_demo(question, answer, docs):
    return "\n\n".join(f"Document (Title: {t}): {x}" for t, x in docs) + f"\n\nQuestion: {question}\nAnswer: {answer}"


def test_rag_prompt_from_helmet_kilt_files():
    files = ev.helmet_files("kilt_nq", 8192, FIXTURES)
    recs = ev.helmet_records("kilt_nq", *files, samples=10, seed=0)
    rec = next(r for r in recs if r["question"] == "what is the capital of norway")
    demos = [rag_demo("who painted the mona lisa", "Leonardo da Vinci",
                      [("Mona Lisa", "The Mona Lisa is a portrait painting by Leonardo da Vinci.")]),
             rag_demo("how many legs does a spider have", "eight",
                      [("Spider", "Spiders are arachnids with eight legs.")]),
             rag_demo("what is the largest planet", "Jupiter",
                      [("Jupiter", "Jupiter is the largest planet in the Solar System.")])]
    body = ("Document (Title: Bergen): Bergen is a city on the west coast of Norway.\n\nDocument (Title: Oslo): Oslo "
            "is the capital and most populous city of Norway.\n\nQuestion: what is the capital of norway\nAnswer:")
    head = ("Use the given documents to write a concise and short answer to the question. Write your answer in the "
            "following format:\nAnswer: [answer]\n\n")
    prompt = ev.build_prompt("kilt_nq", ev.prompt_fields("kilt_nq", rec))
    # two demonstrations, in a per-question seeded order: any ordered pair of the three
    assert prompt in {head + a + "\n\n" + b + "\n\n" + body for a, b in itertools.permutations(demos, 2)}


def test_rerank_prompt_from_helmet_msmarco_files():
    files = ev.helmet_files("msmarco_rerank_psg", 8192, FIXTURES)
    recs = ev.helmet_records("msmarco_rerank_psg", *files, samples=10, seed=0)
    rec = next(r for r in recs if r["qid"] == "q1")
    demos = {"d1": "[ID: 1] Document (Title: Sky): The sky is blue.\n\n[ID: 2] Document (Title: Grass): Grass is "
                   "green.\n\nQuery: color of the sky\nRanking: 1 > 2\n\n",
             "d2": "[ID: 4] Document (Title: Alps): Mont Blanc is in the Alps.\n\n[ID: 6] Document (Title: Everest): "
                   "Everest is the tallest mountain.\n\nQuery: tallest mountain\nRanking: 6 > 4\n\n"}
    body = ("[ID: 7] Document (Title: Pet care): Feed tortoises leafy greens.\n\n[ID: 3] Document (Title: Tortoise): "
            "Tortoises can live more than 100 years.\n\n[ID: 12] Document (Title: Turtles): Sea turtles live 50 to 100 "
            "years.\n\n[ID: 5] Document (Title: Cars): Cars last about 12 years.\n\nQuery: how long do tortoises "
            "live\nRanking:")
    head = ("You are provided with a list of documents, each indicated by their ID. Rank each document based on their "
            "relevance to the question in descending order from most relelvant to least relevant texts. Include all "
            "documents in the rankings. Write your answer using the unique IDs, with the following format:\nRanking: "
            "ID3 > ID1 > ID2\n\n")
    prompt = ev.build_prompt("msmarco_rerank_psg", ev.prompt_fields("msmarco_rerank_psg", rec))
    # the demo with the test's own qid ("q1") is never used
    assert prompt in {head + demos[a] + demos[b] + body for a, b in (("d1", "d2"), ("d2", "d1"))}
    assert rec["qrels"] == {"7": 1, "3": 3, "12": 2, "5": 0}


def test_synthetic_records_have_helmet_structure():
    rec = ev.make_json_kv(7, "s", 0.4)
    pairs = json.loads(rec["context"])  # one pair per line, valid JSON
    assert rec["context"].count(",\n ") == 6 and list(pairs)[round(0.4 * 6)] == rec["question"]
    assert pairs[rec["question"]] == rec["answer"] and len(set(pairs)) == 7
    assert all(k not in pairs for k, _ in rec["demos"]) and len(rec["demos"]) == 2
    assert all(len(x) == 36 and x[14] == "4" for x in list(pairs) + list(pairs.values()))  # uuid4 strings

    rec = ev.make_niah_mk("ruler_niah_mk_2", 9, "s", 1.0)
    lines = rec["context"].split("\n")
    gold = f"One of the special magic numbers for {rec['query']} is: {rec['outputs'][0]}."
    assert len(lines) == 10 and lines[-1] == gold and sum(rec["query"] in x for x in lines) == 1
    assert len(rec["outputs"][0]) == 7 and rec["type_needle_v"] == "number" and "-" in rec["query"]
    rec = ev.make_niah_mk("ruler_niah_mk_3", 9, "s", 0.0)
    assert rec["context"].split("\n")[0].startswith(f"One of the special magic uuids for {rec['query']} is: ")

    rec = ev.make_niah_mv(400, "s")
    assert rec["type_needle_v"] == "numbers" and len(rec["outputs"]) == 4
    for v in rec["outputs"]:
        assert rec["context"].count(f"One of the special magic numbers for {rec['query']} is: {v}.") == 1

    rec = ev.make_vt(20, "s")
    chain = [f"VAR {rec['outputs'][0]} = {rec['query']}"] + \
        [f"VAR {b} = VAR {a}" for a, b in zip(rec["outputs"], rec["outputs"][1:])]
    positions = [rec["context"].index(c) for c in chain]
    assert positions == sorted(positions) and rec["context"].count("The grass is green.") == 20
    assert rec["example"].endswith("they are: " + " ".join(rec["example"].split("they are: ")[1].split()))
    # deterministic for a seed, different across seeds
    assert ev.make_vt(20, "s") == rec and ev.make_vt(20, "t") != rec

# ------------------------------------------------------------------------------------------------------------
# 1b. metrics on edge cases (HELMET's definitions)


@pytest.mark.parametrize("text, normalized", [
    ("The Cat!", "cat"), ("  an  apple,  a day ", "apple day"), ("theater another", "theater another"),
    ("A", ""), ("U.S.A.", "usa"), ("Rock-'n'-roll", "rocknroll"), ("THE\tEnd\n", "end"), ("the-end", "theend"),
])
def test_normalize_answer(text, normalized):
    assert ev.normalize_answer(text) == normalized


@pytest.mark.parametrize("output, gold, prefix, expected", [
    ("Answer: Paris.", "paris", "Answer:", 1.0),
    ("the answer is the Eiffel tower", ["The Eiffel Tower"], "Answer:", 1.0),
    ("London", ["Paris", "London"], "Answer:", 1.0),           # max over gold answers
    ("London", [["Paris"], ["Rome", "London"]], "Answer:", 1.0),  # nested gold lists are flattened
    ("Berlin", ["Paris", "London"], "Answer:", 0.0),
    ("1,234 people", "1234", "Answer:", 1.0),                  # punctuation removed on both sides
    ("Par is", "Paris", "Answer:", 0.0),
    ("", "Paris", "Answer:", 0.0),
    ("Corresponding value: 9f8e-77\nmore", "9f8e-77", "corresponding value:", 1.0),
])
def test_sub_em(output, gold, prefix, expected):
    assert ev.sub_em(output, gold, prefix) == expected


def test_parse_output():
    assert ev.parse_output("Answer: Paris\nBerlin") == "Paris"
    assert ev.parse_output("answer:   Answer: Paris") == "Paris"          # a repeated prefix is stripped
    assert ev.parse_output("I think\nAnswer: Rome") == "Rome"
    assert ev.parse_output("no prefix here\nsecond line") == "no prefix here"
    assert ev.parse_output("Corresponding value: abc\nxyz", "corresponding value:") == "abc"


@pytest.mark.parametrize("prediction, gold, expected", [
    ("The numbers are 1234567 and 7654321.", ["1234567", "7654321", "1111111"], 2 / 3),
    ("ABC-def", ["abc-DEF"], 1.0),           # lower-cased
    ("1,234", ["1234"], 0.0),                # but no punctuation stripping (unlike SubEM)
    ("the the", ["the"], 1.0),               # no article removal either
    ("", ["x", "y"], 0.0),
    ("x", "x", 1.0),
])
def test_ruler_recall(prediction, gold, expected):
    assert ev.ruler_recall(prediction, gold) == pytest.approx(expected)

# ------------------------------------------------------------------------------------------------------------
# 4. nDCG@10 by hand


def test_ndcg_hand_computed():
    qrels = {"1": 3, "2": 2, "3": 0, "4": 1}
    ranking = ev.parse_rankings("Ranking: [2] > [1] > [4] > [3] (and maybe 3 > 1)")
    assert ranking == {"2": 4, "1": 3, "4": 2, "3": 1}
    dcg = 2 / 1 + 3 / math.log2(3) + 1 / 2
    idcg = 3 / 1 + 2 / math.log2(3) + 1 / 2
    assert ev.ndcg_at_k(ranking, qrels) == pytest.approx(dcg / idcg)  # 0.92249...
    assert ev.ndcg_at_k(ranking, qrels) == pytest.approx(4.392789 / 4.761860, abs=1e-6)  # 0.922494
    # unjudged ids count as irrelevant; a relevant doc left out of the ranking still counts in the ideal
    assert ev.ndcg_at_k(ev.parse_rankings("ID9 > ID1"), qrels) == pytest.approx((3 / math.log2(3)) / idcg)
    assert ev.ndcg_at_k(ev.parse_rankings("no ranking at all"), qrels) == 0.0
    assert ev.parse_rankings("1 > 2 > 1 > 3") == {"1": 4, "2": 3, "3": 1}  # first mention of a repeated id wins
    # cut at 10: a relevant doc at rank 11 adds nothing
    many = {str(i): 0 for i in range(10, 20)}
    many["99"] = 3
    ranking = ev.parse_rankings(" > ".join([str(i) for i in range(10, 20)] + ["99"]))
    assert ev.ndcg_at_k(ranking, many) == 0.0

# ------------------------------------------------------------------------------------------------------------
# 2. calibration in the checkpoint's tokens


@pytest.mark.parametrize("task", ev.SYNTHETIC)
@pytest.mark.parametrize("length", [1024, 4096])
def test_calibration_fits_and_fills_the_length(tok, task, length):
    records = ev.synthetic_records(task, length, 6, tok, seed=3)
    gen = ev.TASKS[task][2]
    for rec in records:
        used = ev.prompt_length(task, rec, tok) + gen
        assert 0.9 * length <= used <= length, (task, length, used)
    if task in ("json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3"):
        assert [r["depth"] for r in records] == ev.KV_DEPTHS
    assert records == ev.synthetic_records(task, length, 6, tok, seed=3)  # deterministic for a seed


def test_too_short_length_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="too short for json_kv"):
        ev.synthetic_records("json_kv", 150, 1, tok, seed=0)


def test_helmet_context_truncated_from_its_end_only(tok):
    rec = ev.helmet_records("kilt_nq", *ev.helmet_files("kilt_nq", 8192, FIXTURES), samples=10, seed=0)[0]
    fields = ev.prompt_fields("kilt_nq", rec)
    full = [tok.bos_id] + tok.encode(ev.build_prompt("kilt_nq", fields))
    budget = len(full) - 15
    ids = ev.fit_context("kilt_nq", fields, tok, budget)
    assert len(ids) <= budget and len(ids) >= budget - 3
    text = tok.decode(ids[1:])
    head = ev.build_prompt("kilt_nq", dict(fields, context="\x00")).split("\x00")[0]  # instructions and demos
    tail = "\n\nQuestion: " + rec["question"] + "\nAnswer:"
    assert text.startswith(head) and text.endswith(tail)
    kept = text[len(head):-len(tail)]
    assert 0 < len(kept) < len(rec["context"]) and rec["context"].startswith(kept)


# ------------------------------------------------------------------------------------------------------------
# 3. an oracle model scores 100, a model that says nothing scores 0


class StubModel:
    """Answers from a table keyed by the exact prompt ids (an oracle), or says nothing."""
    def __init__(self, answers=None):
        self.answers, self.calls = answers or {}, []
        self.config = types.SimpleNamespace(eos_token_id=[128001, 128009], max_position_embeddings=8192)

    def generate(self, prompt_ids, max_new_tokens, **kw):
        self.calls.append((max_new_tokens, kw["stop_tokens"]))
        return self.answers.get(tuple(prompt_ids), [])


def oracle_text(task, rec):
    if task == "json_kv":
        return " " + rec["answer"]
    if task.startswith("ruler_"):
        return " " + ", ".join(rec["outputs"])
    if task.startswith("kilt_"):
        return " " + rec["answers"][0]
    return " " + " > ".join(sorted(rec["qrels"], key=lambda d: -rec["qrels"][d]))


def records_for(task, tok):
    if task in ev.SYNTHETIC:
        return ev.synthetic_records(task, 1024, 6, tok, seed=1), 1024
    files = ev.helmet_files(task, 8192, FIXTURES)
    return ev.helmet_records(task, *files, samples=10, seed=1), 8192


@pytest.mark.parametrize("task", ev.SYNTHETIC + ["ruler_niah_mv@helmet", "json_kv@helmet", "kilt_nq",
                                                 "msmarco_rerank_psg"])
def test_oracle_scores_100_and_silence_scores_0(tok, task):
    task, _, helmet = task.partition("@")
    if helmet:
        records, length = ev.helmet_records(task, *ev.helmet_files(task, 8192, FIXTURES), 10, 1), 8192
    else:
        records, length = records_for(task, tok)
    gen = ev.TASKS[task][2]
    answers = {tuple(ev.fit_context(task, ev.prompt_fields(task, r), tok, length - gen)):
               tok.encode(oracle_text(task, r)) for r in records}
    assert len(answers) == len(records)
    oracle, silent = StubModel(answers), StubModel()
    metric = ev.TASKS[task][4]
    assert ev.summarize(ev.run_task(oracle, tok, task, records, length), metric)["score"] == 100.0
    assert ev.summarize(ev.run_task(silent, tok, task, records, length), metric)["score"] == 0.0
    newline = {tok.encode("\n")[0], tok.encode("\n\n")[0]}
    for max_new, stops in oracle.calls:
        assert max_new == gen and {tok.eos_id, tok.eot_id} <= set(stops)
        assert newline <= set(stops) if ev.TASKS[task][3] else not newline & set(stops)


def test_main_on_helmet_data_with_an_oracle(monkeypatch, tok, tmp_path, capsys):
    present = ["json_kv", "ruler_niah_mk_2", "ruler_niah_mv", "kilt_nq", "msmarco_rerank_psg"]
    answers = {}
    for task in present:
        gen = ev.TASKS[task][2]
        for r in ev.helmet_records(task, *ev.helmet_files(task, 8192, FIXTURES), 100, 42):
            prompt = ev.fit_context(task, ev.prompt_fields(task, r), tok, 8192 - gen)
            answers[tuple(prompt)] = tok.encode(oracle_text(task, r))
    monkeypatch.setattr(ev, "load_checkpoint", lambda *a, **k: (StubModel(answers), tok))
    report = ev.main(["--ckpt", "hub/id", "--helmet-data", FIXTURES, "--lengths", "8k",
                      "--out", str(tmp_path / "r.json")])
    assert sorted(report["tasks"]) == sorted(present)
    assert all(report["tasks"][t][8192]["score"] == 100.0 for t in present)
    assert {s.split(" @")[0] for s in report["skipped"]} == set(ev.TASKS) - set(present)
    assert report["averages"]["Re-rank"][8192] == {"score": 100.0, "tasks": ["msmarco_rerank_psg"], "complete": True}
    assert report["averages"]["RAG"][8192]["complete"] is False
    out = capsys.readouterr().out
    assert "Re-rank (avg)" in out and "RAG (avg)" in out
    assert json.loads((tmp_path / "r.json").read_text())["tasks"]["kilt_nq"]["8192"]["score"] == 100.0


def test_summary_by_depth_and_category_averages():
    results = [{"depth": d, "m": v} for d, v in [(0.0, 1), (0.0, 0), (1.0, 1), (1.0, 1)]]
    s = ev.summarize(results, "m")
    assert s["score"] == 75.0 and s["by_depth"] == {"0.0": 50.0, "1.0": 100.0}
    scores = {"json_kv": {1024: 10.0}, "ruler_niah_mk_2": {1024: 20.0}, "ruler_niah_mk_3": {1024: 30.0},
              "ruler_niah_mv": {1024: 40.0, 2048: 50.0}, "ruler_vt": {1024: 99.0}, "kilt_nq": {1024: 60.0}}
    avg = ev.category_averages(scores)
    assert avg["Recall"][1024] == {"score": 25.0, "tasks": ev.CATEGORIES["Recall"], "complete": True}
    assert avg["Recall"][2048]["complete"] is False and avg["RAG"][1024]["score"] == 60.0
    assert ev.CATEGORIES["Recall"] == ["json_kv", "ruler_niah_mk_2", "ruler_niah_mk_3", "ruler_niah_mv"]

def test_heatmap_png(tmp_path):
    pytest.importorskip("matplotlib")
    by_length = {1024: {"by_depth": {"0.0": 100.0, "1.0": 50.0}}, 2048: {"by_depth": {"0.0": 0.0}}}
    path = ev.heatmap(by_length, str(tmp_path / "kv.png"))
    assert path and open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

# ------------------------------------------------------------------------------------------------------------
# 5. perplexity by position equals the model's own loss on the same tokens


def write_domain(path, docs):
    from data import ShardWriter
    writer = ShardWriter(path, {"tokenizer": "test"})
    for d in docs:
        writer.add(d)
        writer.end_document()
    writer.commit()


def test_perplexity_by_position_equals_direct_loss(tmp_path):
    from model import Llama, LlamaConfig
    torch.manual_seed(0)
    model = Llama(LlamaConfig.tiny(vocab_size=300, max_position_embeddings=256)).eval()
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 300, n) for n in (200, 64, 37, 1, 300)]
    write_domain(str(tmp_path / "dom"), docs)
    length, buckets = 128, 4
    got = ev.perplexity_by_position(model, ev.read_documents(str(tmp_path / "dom"), None, 10, length), length, buckets)
    # reference: full logits, float64 log-softmax, per document; nll[p - 1] is the loss of the token at position p
    pos, nlls, halves = [], [], []
    with torch.no_grad():
        for d in docs:
            ids = torch.tensor(d[:length], dtype=torch.long)
            if len(ids) < 2:
                continue
            nll = -model(ids).double().log_softmax(-1)[:-1].gather(-1, ids[1:, None])[:, 0].numpy()
            pos.append(np.arange(1, len(ids)))
            nlls.append(nll)
            halves.append(nll[len(ids) // 2 - 1:])
    pos, nlls = np.concatenate(pos), np.concatenate(nlls)
    per_pos = [list(nlls[pos == p]) for p in range(length)]
    assert got["documents"] == 4 and got["tokens"] == sum(len(x) for x in per_pos)
    for row in got["buckets"]:
        lo, hi = row["positions"]
        ref = [x for p in range(lo, hi) for x in per_pos[p]]
        assert row["tokens"] == len(ref) and row["loss"] == pytest.approx(np.mean(ref), rel=1e-5)
    assert [r["positions"] for r in got["buckets"]] == [[0, 32], [32, 64], [64, 96], [96, 128]]
    assert got["second_half_loss"] == pytest.approx(np.concatenate(halves).mean(), rel=1e-5)
    assert got["loss"] == pytest.approx(np.mean([x for p in per_pos for x in p]), rel=1e-5)


def test_perplexity_of_a_text_file(tmp_path, tok):
    from model import Llama, LlamaConfig
    torch.manual_seed(0)
    model = Llama(LlamaConfig.tiny(vocab_size=128256)).eval()
    path = tmp_path / "t.txt"
    path.write_text("The grass is green. " * 80)
    docs = ev.read_documents(str(path), tok, 5, 64)  # a text file is cut into documents of 64 tokens, BOS first
    ids = tok.encode(path.read_text())
    assert [list(d) for d in docs] == [[tok.bos_id] + ids[i:i + 63] for i in range(0, len(ids), 63)][:5]
    got = ev.perplexity_by_position(model, docs, 64, 2)
    loss_sum = n_sum = 0
    with torch.no_grad():
        for d in docs:
            d = torch.tensor(d)
            loss, n = model(d, labels=torch.cat([d[1:], torch.tensor([-100])]))
            loss_sum, n_sum = loss_sum + float(loss), n_sum + int(n)
    assert got["loss"] == pytest.approx(loss_sum / n_sum, rel=1e-5) and got["tokens"] == n_sum == 5 * 63

# ------------------------------------------------------------------------------------------------------------
# lm-eval-harness: a clear skip without it; the adapter's log-likelihoods are the model's own


def test_lm_eval_missing_is_a_clear_skip(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import fails even where it is installed
    assert ev.run_lm_eval(None, None, ["hellaswag"]) is None
    assert "lm-eval-harness is not installed" in capsys.readouterr().err


def test_lm_eval_adapter_loglikelihood(tok):
    from model import Llama, LlamaConfig
    torch.manual_seed(0)
    model = Llama(LlamaConfig.tiny(vocab_size=128256, max_position_embeddings=64)).eval()
    lm = ev.lm_eval_adapter(model, tok, object)
    req = types.SimpleNamespace
    (lp, greedy), = lm.loglikelihood([req(args=("The sky is ", "blue"))])
    ids = [tok.bos_id] + tok.encode("The sky is blue")
    n_ctx = len([tok.bos_id] + tok.encode("The sky is"))
    with torch.no_grad():
        logp = model(torch.tensor(ids)).double().log_softmax(-1)
    ref = sum(float(logp[i - 1, ids[i]]) for i in range(n_ctx, len(ids)))
    assert lp == pytest.approx(ref, rel=1e-5) and isinstance(greedy, bool)
    text = "word " * 100  # longer than the 64-token window: disjoint windows
    (rolling,) = lm.loglikelihood_rolling([req(args=(text,))])
    ids = [tok.bos_id] + tok.encode(text)
    with torch.no_grad():
        ref = 0.0
        for s in range(1, len(ids), 63):
            chunk = ids[s - 1:s + 63]
            logp = model(torch.tensor(chunk[:-1])).double().log_softmax(-1)
            ref += sum(float(logp[j, chunk[j + 1]]) for j in range(len(chunk) - 1))
    assert rolling == pytest.approx(ref, rel=1e-5)

# ------------------------------------------------------------------------------------------------------------
# errors a user can cause


def test_record_without_a_template_field_is_a_clear_error():
    with pytest.raises(ValueError, match="ruler_niah_mk_2: the record has no 'type_needle_v' field"):
        ev.build_prompt("ruler_niah_mk_2", ev.prompt_fields("ruler_niah_mk_2", {"context": "c", "query": "q"}))


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON line"):
        ev.read_jsonl(str(path))

# ------------------------------------------------------------------------------------------------------------
# 6. the command line on a tiny random checkpoint with the real tokenizer


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tok):
    from model import Llama, LlamaConfig
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt")
    Llama(LlamaConfig.tiny(vocab_size=128256, max_position_embeddings=2048)).save_pretrained(str(path))
    tok.save(str(path))  # tokenizer.model beside the weights, as our checkpoints have it
    return path


def test_cli_end_to_end(tiny_ckpt, tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("Call me Ishmael. Some years ago, never mind how long precisely, I went to sea. " * 30)
    out = tmp_path / "res.json"
    tasks = ["json_kv", "ruler_niah_mv"]  # two of the four Recall tasks: keeps the test fast, shows a partial average
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--ckpt", str(tiny_ckpt),
                           "--tasks", ",".join(tasks), "--lengths", "512,1024", "--samples", "1", "--ppl", str(text),
                           "--out", str(out), "--lm-eval", "hellaswag"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["task", "512", "1024"]
    for name in tasks + ["Recall"]:
        row = next(line.split() for line in lines if line.startswith(name))
        assert len(row) == 3 + (name == "Recall") and all(0 <= float(x) <= 100 for x in row[-2:])
    assert "averages over the tasks that ran only: Recall at 512: json_kv, ruler_niah_mv" in proc.stdout
    assert "second half of each document" in proc.stdout and "depth 0.0" in proc.stdout
    report = json.loads(out.read_text())
    assert set(report["tasks"]) == set(tasks)
    for task in tasks:
        for L in ("512", "1024"):
            r = report["tasks"][task][L]
            assert r["n"] == 1 and 0 <= r["score"] <= 100
            assert all(s["input_len"] + ev.TASKS[task][2] <= int(L) for s in r["samples"])
    assert report["perplexity"]["length"] == 1024 and report["perplexity"]["tokens"] > 500
    assert "lm-eval-harness is not installed" in proc.stderr or report["lm_eval"] is not None
    assert "matplotlib is not installed" in proc.stderr or os.path.exists(report["heatmap"])


def test_cli_missing_tokenizer_vocab_mismatch_and_unknown_task(tiny_ckpt, tmp_path, tok):
    from model import Llama, LlamaConfig
    bare = tmp_path / "bare"
    shutil.copytree(tiny_ckpt, bare)
    os.remove(bare / "tokenizer.model")
    with pytest.raises(SystemExit, match="(?s)no tokenizer for .*bare: .*pass --tokenizer SPEC"):  # a message,
        ev.main(["--ckpt", str(bare), "--lengths", "512", "--samples", "1", "--tasks", "json_kv"])  # no traceback
    (bare / "generation_config.json").write_text('{"eos_token_id": [128001, 128008, 128009]}')
    model, tok2 = ev.load_checkpoint(str(bare), tokenizer="llama3")  # the package's Llama-3 tokenizer instead
    assert tok2.encode("hello world") == tok.encode("hello world")
    assert set(ev.stop_tokens(tok2, model, False)) == {128001, 128008, 128009}  # as HELMET: generation config's
    small = tmp_path / "small"
    Llama(LlamaConfig.tiny(vocab_size=1000)).save_pretrained(str(small))
    tok.save(str(small))
    with pytest.raises(SystemExit, match="tokenizer has 128256 tokens but the model's vocabulary is 1000"):
        ev.load_checkpoint(str(small))
    with pytest.raises(SystemExit, match="unknown task"):
        ev.main(["--ckpt", str(tiny_ckpt), "--tasks", "json_kv,nope", "--lengths", "512"])
