"""The last four differences from HELMET's code (princeton-nlp/HELMET at 4526dfb), each rebuilt here from HELMET's
procedure with references nobody here wrote: `datasets` itself for the unseeded shuffles of NarrativeQA and
Multi-LexSum demonstrations (numpy's global RNG seeded as transformers.set_seed does at HELMET's model load),
transformers' GenerationConfig for the stop set, HELMET's per-sample rounding of NDCG@10, and the offsets of the
Hugging Face `tokenizers` library (a Llama-3 tokenizer converted by transformers from the same tiktoken file) for
cuts that fall inside a multi-byte character."""
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tasks import TASKS, local, rag  # noqa: E402
from tasks.common import fit_context  # noqa: E402
from tests.test_tasks_common import tok  # noqa: E402,F401  (the real Llama-3 tokenizer)
from tests.test_tasks_local import DATA, SEED, WordTok, read, records, small, truncated  # noqa: E402,F401

datasets = pytest.importorskip("datasets")

# ------------------------------------------------------------------------------------------------------------
# 1. NarrativeQA and Multi-LexSum demos: Dataset.shuffle() with no seed, after set_seed(42)


def test_unseeded_shuffle_seeds_are_datasets_own():
    """Our replay of the seeds equals what `datasets` draws from numpy's global state, shuffle after shuffle (the
    first right after np.random.seed, when the state's position is 624), and leaves the global state alone."""
    pool = datasets.Dataset.from_dict({"i": list(range(37))})
    np.random.seed(SEED)
    theirs = [pool.shuffle()["i"] for _ in range(700)]  # past one 624-word refill of the Mersenne state
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ours = [list(np.random.default_rng(s).permutation(37)) for s in local.unseeded_shuffle_seeds(SEED, 700)]
    assert ours == theirs and (np.random.get_state()[1] == before).all()


def helmet_narrativeqa_demos(test, train, keep, shots, seed):
    """HELMET's load_narrativeqa, in `datasets`: test.shuffle(seed), the length filter, then a map whose every row
    draws train.shuffle() unseeded, in a process where set_seed(seed) ran at model load; the first rows' demos."""
    np.random.seed(seed)
    data = datasets.Dataset.from_list(test).shuffle(seed=seed).filter(keep)
    train = datasets.Dataset.from_list(train)
    data = data.map(lambda ex: {"demo": "For example:\n\n" + "\n\n".join(
        f"Question: {d['question']['text']}\nAnswer: {d['answers'][0]['text']}"
        for d in train.shuffle().select(range(shots)))
        + "\n\nNow, use the following story to answer the question:\n\n"})
    return data["demo"]


def test_narrativeqa_demos_are_helmets(small):
    test, train = read("narrativeqa/test.jsonl"), read("narrativeqa/train.jsonl")
    keep = lambda row: 1 + len(WordTok.split(row["document"]["text"])) >= local.MIN_TOKENS["narrativeqa"]
    theirs = helmet_narrativeqa_demos(test, train, keep, 2, SEED)
    recs = records("narrativeqa", 700, DATA, 5, SEED, WordTok())
    assert 5 < len(theirs) and [r["demo"] for r in recs] == theirs[:5]
    other = records("narrativeqa", 700, DATA, 5, SEED + 1, WordTok())  # another seed, another draw
    assert [r["demo"] for r in other] == helmet_narrativeqa_demos(test, train, keep, 2, SEED + 1)[:5]
    assert [r["demo"] for r in other] != [r["demo"] for r in recs]


def test_multi_lexsum_demos_are_helmets(small):
    """HELMET's load_multi_lexsum: all_data.filter(short summary), then one DatasetDict.map over train and then
    validation, each row drawing train.shuffle(); the length filter and the sample shuffle come after."""
    splits = {s: [dict(r, sources_metadata=None, case_metadata=None) for r in read(f"multi_lexsum/{s}.jsonl")]
              for s in ("train", "validation")}
    np.random.seed(SEED)
    all_data = datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in splits.items()})
    all_data = all_data.filter(lambda x: x["summary/short"] is not None)
    train = all_data["train"]
    all_data = all_data.map(lambda x: {"demo": "Example summaries:\n\n" + "\n\n".join(
        f"Summary: {ex['summary/short']}" for ex in train.shuffle().select(range(2)))
        + "\n\nNow, write a summary of the following legal documents.\n"})
    theirs = dict(zip(all_data["validation"]["id"], all_data["validation"]["demo"]))
    recs = records("multi_lexsum", 1100, DATA, None, SEED, WordTok())
    assert len(recs) >= 3 and all(r["demo"] == theirs[r["id"]] for r in recs)


def test_demos_are_the_same_at_every_length(small):
    """datasets' cache serves the demo map at every length (it runs before the length's cut): one replay for all."""
    a = records("narrativeqa", 700, DATA, 5, SEED, WordTok())
    b = records("narrativeqa", 900, DATA, 5, SEED, WordTok())
    assert [r["demo"] for r in a] == [r["demo"] for r in b] and a[0]["context"] != b[0]["context"]

# ------------------------------------------------------------------------------------------------------------
# 2. stops: the model's generation_config.eos_token_id, nothing else


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tok):
    from model import Llama, LlamaConfig
    path = tmp_path_factory.mktemp("ckpt")
    Llama(LlamaConfig.tiny(vocab_size=128256, max_position_embeddings=512)).save_pretrained(str(path))
    tok.save(str(path))
    return path


@pytest.mark.parametrize("gen_config", [None, {"eos_token_id": 128001}, {"eos_token_id": [128001, 128009]},
                                        {"eos_token_id": [128001, 128008, 128009], "bos_token_id": 128000}])
def test_stop_set_is_the_generation_configs_eos(ckpt, tok, gen_config):
    """HELMET's HFModel: stop_token_ids = model.generation_config.eos_token_id (a list if not one), which
    transformers reads from generation_config.json, or derives from config.json when there is none."""
    import evaluate
    from transformers import GenerationConfig, PretrainedConfig
    path = ckpt / "generation_config.json"
    if path.exists():
        path.unlink()
    if gen_config is not None:
        path.write_text(json.dumps(gen_config))
        ref = GenerationConfig.from_pretrained(str(ckpt)).eos_token_id
    else:
        ref = GenerationConfig.from_model_config(PretrainedConfig.from_json_file(str(ckpt / "config.json")))
        ref = ref.eos_token_id
    ref = ref if isinstance(ref, list) else [ref]
    model, _ = evaluate.load_checkpoint(str(ckpt))
    assert evaluate.stop_tokens(tok, model, False) == tuple(sorted(set(ref)))
    instruct = gen_config is not None and 128009 in np.atleast_1d(gen_config["eos_token_id"])
    assert (tok.eot_id in evaluate.stop_tokens(tok, model, False)) == instruct == evaluate.is_instruct(model, tok)

# ------------------------------------------------------------------------------------------------------------
# 3. NDCG@10 rounded per sample to 5 decimals (utils.py calculate_retrieval_metrics, called once per sample)


def test_ndcg_is_rounded_per_sample():
    qrels = {"1": 3, "2": 2, "3": 1, "4": 0, "5": 2}
    ranking = "Ranking: 4 > 2 > 1 > 3 > 5"
    gains = [qrels[d] for d in ["4", "2", "1", "3", "5"]]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted(qrels.values(), reverse=True)
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal) if g > 0)
    exact = dcg / idcg
    score = TASKS["msmarco_rerank_psg"].score(ranking, {"qrels": qrels})["NDCG@10"]
    assert score == round(exact, 5) and score != exact
    assert rag.ndcg_at_k(rag.parse_rankings(ranking), qrels) == pytest.approx(exact)  # the unrounded value

# ------------------------------------------------------------------------------------------------------------
# 4. cuts inside a multi-byte character


@pytest.fixture(scope="module")
def hf_offsets():
    """Character offsets of each token as HELMET's `tokenizer(text, return_offsets_mapping=True)` gives them: the
    Hugging Face `tokenizers` library, on transformers' conversion of Llama-3's tiktoken file."""
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    from tokenizer import LLAMA3_PATTERN, load_tokenizer
    hf = convert.TikTokenConverter(vocab_file=load_tokenizer(None).files[0], pattern=LLAMA3_PATTERN,
                                   additional_special_tokens=[]).converted()
    return lambda text: hf.encode(text, add_special_tokens=False).offsets


RARE = "龘靐齉麤𠀀𠀁 🦜🦩 "  # characters Llama-3 splits into byte tokens


def split_positions(tok, text):
    """Indices of tokens that start inside a character (their first byte a UTF-8 continuation byte)."""
    ids = tok.encode(text)
    return [i for i in range(1, len(ids)) if not text.startswith(tok.decode(ids[:i]))]


def test_model_side_cut_inside_a_character_is_helmets(tok, hf_offsets):
    """model_utils.tokenize: context[:offset_mapping[-truncate_length][0]], the start of the first dropped token's
    character, so the split character goes."""
    spec = TASKS["json_kv"]
    context = ("{" + ", ".join(f'"{i}": "{RARE * (i % 3 + 1)}"' for i in range(40)) + "}")
    fields = {"context": context, "demos": "", "question": "7"}
    ctx = tok.encode(context)
    offsets = [(0, 0)] + hf_offsets(context)  # HELMET tokenises the context with its BOS
    assert len(offsets) == len(ctx) + 1
    cuts = [i for i in split_positions(tok, context) if i > 10]
    assert cuts
    full = len(fit_context(spec, fields, tok, 10**6)[0])
    for dropped_from in cuts[:6]:  # the first dropped context token starts inside a character
        excess = len(ctx) - dropped_from
        _, new = fit_context(spec, fields, tok, full - excess)
        assert new["context"] == context[:offsets[-excess][0]]
        assert "\ufffd" not in new["context"]


def test_llama2_length_cut_inside_a_character_is_helmets(tok, hf_offsets):
    """truncate_llama2: context[:offset_mapping[max_length - len(tokenizer(postfix))][1]] + postfix, the end of the
    last kept token's character, so the split character stays whole."""
    text = "Story. " + RARE * 60
    offsets = [(0, 0)] + hf_offsets(text)
    sep = 1 + len(tok.encode(local.OMITTED))  # with the BOS, as HELMET counts it
    count = local.Lengths(tok)
    splits = split_positions(tok, text)  # keeping m tokens where token m starts inside a character
    assert splits
    for m in splits[:8]:
        max_length = m + sep  # HELMET keeps max_length - sep tokens after its BOS
        ours = count.truncate(text, max_length)
        assert ours == text[:offsets[max_length - sep][1]] + local.OMITTED
        assert "\ufffd" not in ours
