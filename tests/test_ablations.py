"""The paper's ablations: the cross-document switch (labels and attention across document boundaries, checked
on a hand-built example against single- and per-document runs), the micro-batch ordering switch, and every
config under configs/ablations/ (loads, validates at its GPU count, and one scaled-down training step runs on
CPU)."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import data  # noqa: E402
import settings  # noqa: E402
import train  # noqa: E402
from tests.test_train import DRY_RUN  # noqa: E402  (the recipe configs' scaled-down run)
from model import Llama, LlamaConfig  # noqa: E402

ABLATIONS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "ablations", "*.py"))
                   if not os.path.basename(p).startswith("_"))  # _mixture.py is a piece they include
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)


@pytest.fixture(scope="module")
def world_of_one():
    """train.py's step functions all-reduce: give them the same world of one that `python train.py` runs
    under."""
    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if own:
        dist.destroy_process_group()


def domain(path, docs, masks=None):
    """A domain of hand-written documents (token ids), with masks for conversations."""
    w = data.ShardWriter(str(path), {"tokenizer": "hand-built", "tokenizer_sha256": "", "eos_id": 1},
                         with_mask=masks is not None)
    for i, doc in enumerate(docs):
        w.add(np.asarray(doc), None if masks is None else np.asarray(masks[i]))
        w.end_document()
    w.commit()
    return str(path)


def tiny_model(cross_document, vocab=64, **overrides):
    torch.manual_seed(0)
    config = LlamaConfig.tiny(vocab_size=vocab, **overrides)
    return Llama(config, cross_document=cross_document).double().eval()


# ----------------------------------------------------------------------------------------------------------
# acceptance 2: cross-document labels and attention, as the paper's code with document masks off


# five documents of distinct tokens (document d holds 10 d + 2 ...), 25 tokens in all
DOCS = [[10 * d + 2 + i for i in range(n)] for d, n in enumerate([5, 3, 7, 4, 6])]


def hand_built(tmp_path, cross):
    """Sequence 0 of a pack mixture: two 12-token packs of the five documents in the seeded order (so the
    second pack starts in the middle of a document), then 2 padding tokens in a segment of their own."""
    path = tmp_path / "docs"
    spec = {"path": str(path) if path.exists() else domain(path, DOCS), "proportion": 1, "length": 12,
            "mode": "pack"}
    mix = data.Mixture([spec], 26, seed=0, cross_document_labels=cross)
    seq = mix.sequence(0)
    order, _ = mix.comps[0].epoch(0)  # the seeded order of the documents in the first epoch
    stream = np.concatenate([DOCS[d] for d in order])[:24]  # what the two packs hold, by hand
    assert seq.input_ids.tolist() == stream.tolist() + [1, 1]
    return seq, np.cumsum([0] + [len(DOCS[d]) for d in order]).tolist()  # where each document starts


def test_cross_document_labels_cross_every_real_boundary_only_when_on(tmp_path):
    on, _ = hand_built(tmp_path, cross=True)
    off, starts = hand_built(tmp_path, cross=False)
    ids, cu = on.input_ids, on.cu_seqlens
    assert cu.tolist() == off.cu_seqlens.tolist() and len(cu) > 4  # several documents, a cut, the padding
    # on: every real token but the last predicts the next one, boundaries and the cut between the packs
    # included; the label after each document boundary is the next document's first token; padding is never
    # predicted
    assert on.labels[:23].tolist() == ids[1:24].tolist() and (on.labels[23:] == -100).all()
    doc_starts = [s for s in starts if 0 < s < 24]
    assert doc_starts and all(on.labels[s - 1] == ids[s] and ids[s] in FIRST_TOKENS for s in doc_starts)
    # off: the last token of every segment (document piece) predicts nothing, the rest as on
    ends = set((cu[1:] - 1).tolist())
    for i in range(26):
        assert off.labels[i] == (-100 if i in ends or i >= 23 else ids[i + 1]), i


FIRST_TOKENS = {doc[0] for doc in DOCS}  # tokens are distinct, so a value says which document it starts


def test_cross_document_switch_in_the_model_matches_single_and_per_document_runs(tmp_path):
    """On: outputs equal one run over the whole concatenation (attention across documents, positions running
    on); off: outputs equal separate runs of each document. Checked on logits and on the summed loss, in
    float64."""
    on, _ = hand_built(tmp_path, cross=True)
    off, _ = hand_built(tmp_path, cross=False)
    ids, cu = torch.as_tensor(on.input_ids), torch.as_tensor(on.cu_seqlens)
    crossing, masked = tiny_model(True), tiny_model(False)
    masked.load_state_dict(crossing.state_dict())
    with torch.no_grad():
        whole = masked(ids)  # one document: the reference for "on"
        per_doc = torch.cat([masked(ids[a:b]) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
        assert torch.allclose(crossing(ids, cu_seqlens=cu), whole, atol=1e-12, rtol=0)
        assert torch.allclose(masked(ids, cu_seqlens=cu), per_doc, atol=1e-12, rtol=0)
        assert not torch.allclose(whole, per_doc, atol=1e-6)  # the switch does change the outputs
        # losses: on, the sum over all 23 real transitions of the one-document run; off, per-document sums
        loss_on, n_on = crossing(ids, cu_seqlens=cu, labels=torch.as_tensor(on.labels))
        ref_on = torch.nn.functional.cross_entropy(whole[:23], ids[1:24], reduction="sum")
        assert n_on == 23 and torch.allclose(loss_on, ref_on, atol=1e-10, rtol=0)
        loss_off, n_off = masked(ids, cu_seqlens=cu, labels=torch.as_tensor(off.labels))
        ref_off = sum(torch.nn.functional.cross_entropy(masked(ids[a:b])[:-1], ids[a + 1:b], reduction="sum")
                      for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()) if a < 24)
        assert n_off == 24 - (len(cu) - 2) and torch.allclose(loss_off, ref_off, atol=1e-10, rtol=0)


def test_cross_document_labels_respect_conversation_masks(tmp_path):
    """SFT data: a label crosses into the next conversation only where that token is trained on (mask 1); a
    conversation's first token (mask 0 in real data) stays unpredicted, and padding is never a target."""
    convs = [[2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13], [14, 15]]
    masks = [[0, 0, 1, 1], [1, 0, 1], [0, 1, 1, 1, 1], [0, 1]]  # the second starts with a trained-on token
    path = domain(tmp_path / "chats", convs, masks)
    seqs = {cross: data.Mixture([{"path": path, "proportion": 1, "length": 16, "mode": "sft"}], 16, seed=0,
                                cross_document_labels=cross).sequence(0) for cross in (False, True)}
    ids, cu = seqs[True].input_ids, seqs[True].cu_seqlens
    mask_of = {t: m for conv, mask in zip(convs, masks) for t, m in zip(conv, mask)}
    real = int(cu[-2]) if ids[-1] == 1 and ids[int(cu[-2])] == 1 else int(cu[-1])
    starts = set(cu[1:-1].tolist()) & set(range(1, real))
    assert starts
    for i in range(16):
        within = i + 1 < real and i + 1 not in starts
        target = ids[i + 1] if i + 1 < real and mask_of[int(ids[i + 1])] else -100
        assert seqs[True].labels[i] == target, i
        assert seqs[False].labels[i] == (target if within else -100), i
    assert any(seqs[True].labels[s - 1] == 6 for s in starts)  # into the conversation starting with mask 1


def test_cross_document_labels_setting_follows_cross_document_unless_set():
    cfg = dict(settings.DEFAULTS)
    assert cfg["cross_document_labels"] is None and not settings.labels_cross(cfg)
    assert settings.labels_cross(dict(cfg, cross_document=True))
    assert not settings.labels_cross(dict(cfg, cross_document=True, cross_document_labels=False))
    assert settings.labels_cross(dict(cfg, cross_document_labels=True))


# ----------------------------------------------------------------------------------------------------------
# micro-batch ordering


def test_sort_microbatches_switch_orders_but_changes_no_loss(world_of_one):
    seqs = [data.Sequence(torch.arange(8) % 5 + 10 * i, (torch.arange(8) + 1) % 7 + 10 * i,
                          torch.tensor(cu, dtype=torch.int32))
            for i, cu in enumerate([[0, 8], [0, 2, 4, 6, 8], [0, 4, 8], [0, 1, 8]])]
    kept = train.micro_batches(seqs, 1, sort=False)
    ordered = train.micro_batches(seqs, 1)  # sort=True by default, as the setting
    assert settings.DEFAULTS["sort_microbatches"] is True
    assert [b.input_ids.tolist() for b in kept] == [s.input_ids.tolist() for s in seqs]
    assert [b.cu_seqlens.tolist() for b in ordered] == [[0, 8], [0, 1, 8], [0, 4, 8], [0, 2, 4, 6, 8]]
    results = []
    for batches in (kept, ordered):
        model = tiny_model(False, num_hidden_layers=1)
        optimizer = train.build_optimizer(model, dict(settings.DEFAULTS, lr=1e-2))
        loss, grad_norm = train.train_step(model, optimizer, batches, torch.device("cpu"), 1.0)
        results.append((loss, grad_norm, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (loss_a, norm_a, params_a), (loss_b, norm_b, params_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-13, abs=0) and norm_a == pytest.approx(norm_b, rel=1e-12)
    assert torch.allclose(params_a, params_b, atol=1e-13, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# acceptance 1: every ablation config validates at its GPU count and runs one scaled-down step


SCALE, FEWER = 512, 8  # as tests/test_train.py's DRY_RUN: lengths / 512, tokens per step / (512 x 8) through
# train.py; in-process steps take one sequence (~1 s each with the real 128K vocabulary on 2 busy cores)


@pytest.fixture(scope="module")
def ablation_domains(tmp_path_factory):
    """Every directory any arm names, as copies of one small real domain (test_train.recipe_domains)."""
    from test_train import recipe_domains
    root = tmp_path_factory.mktemp("ablation_data")
    # one config naming every directory of every arm (recipe_domains makes its source copy once)
    union = {c["path"]: c for path in ABLATIONS for c in settings.load_config([path])["mixture"]}
    (root / "_all.py").write_text(f"mixture = {list(union.values())!r}\n")
    recipe_domains(root, str(root / "_all.py"))
    return root


def arm(path):
    """(config, intended GPU count) of an arm, read as train.py would."""
    return settings.load_config([path]), settings.read_file(path)["_gpus"]


def scaled(cfg, root, out):
    return dict(cfg, init_from=None, load_optimizer=False, model="tiny",
                model_overrides={"num_hidden_layers": 1},
                seq_len=cfg["seq_len"] // SCALE, tokens_per_step=cfg["seq_len"] // SCALE,  # one sequence
                mixture=[dict(c, length=c["length"] // SCALE) for c in cfg["mixture"]], data_root=str(root),
                out_dir=str(out), max_steps=1, compute_dtype="float32", sp_size=1, allow_repeat=True)


BASE_EXPECTED = dict(lr=1e-5, min_lr=1e-6, warmup_fraction=0.1, weight_decay=0.1, beta1=0.9, beta2=0.95,
                     grad_clip=1.0)
ARMS = {  # what each arm changes from its base (a check that the files say what their names say)
    "base_64k": {}, "long_books": {"book-65536": 0.6}, "long_repos": {"thestackv1_concat_by_repo-65536": 0.6},
    "ratio_long40": {"book-65536": 0.2}, "ratio_long80": {"book-65536": 0.4},
    "short_fineweb_edu": {"fineweb-edu": 0.4}, "short_dclm": {"dclm-baseline": 0.4},
    "rope_64k_500k": {"rope_theta": 5e5}, "rope_64k_4m": {"rope_theta": 4e6},
    "doc_mask_off": {"cross_document": True},
    "init_instruct": {"init_from": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "no_reorder": {"sort_microbatches": False},
    "base_512k": {"rope_theta": 1.28e8}, "rope_512k_64m": {"rope_theta": 6.4e7},
    "rope_512k_256m": {"rope_theta": 2.56e8},
}


@pytest.mark.slow
def test_every_ablation_validates_and_runs_one_scaled_down_step(ablation_domains, tmp_path, world_of_one):
    names = [os.path.basename(p)[:-3] for p in ABLATIONS]
    assert sorted(names) == sorted(ARMS), "a new arm needs its line in ARMS"
    for path, name in zip(ABLATIONS, names):
        cfg, gpus = arm(path)
        assert open(path).readline().startswith("# "), f"{name}: starts with its header comment"
        assert {k: cfg[k] for k in BASE_EXPECTED} == BASE_EXPECTED, name
        assert cfg["max_steps"] * cfg["tokens_per_step"] == 1280 * 4 * 2**20, f"{name}: 5B tokens"
        assert not any("textbook" in c["path"] for c in cfg["mixture"]), name
        long = sum(c["proportion"] for c in cfg["mixture"] if c["mode"] == "chunk")
        assert long == pytest.approx({"ratio_long40": 0.4, "ratio_long80": 0.8}.get(name, 0.6)), name
        by_path = {c["path"]: c["proportion"] for c in cfg["mixture"]}
        for key, value in ARMS[name].items():
            assert (cfg[key] if key in cfg else by_path[key]) == pytest.approx(value), (name, key)
        big = cfg["seq_len"] == 524288
        assert (cfg["seq_len"], cfg["sp_size"]) == ((524288, 8) if big else (65536, 1)), name
        if not big:
            assert cfg["init_from"] in ("meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct")
        dp, accumulation = settings.validate(dict(cfg, data_root=str(ablation_domains)), gpus)
        per_step = dp * accumulation * cfg["seq_len"] * cfg["micro_batch_sequences"]
        assert per_step == cfg["tokens_per_step"], name

        # one scaled-down step through train.py's own functions: data, labels, ordering, model switches,
        # optimiser
        small = scaled(cfg, ablation_domains, tmp_path / name)
        dp, accumulation = settings.validate(small, 1)
        mix = data.Mixture(settings.resolved(small["mixture"], small["data_root"]), small["seq_len"],
                           num_sequences=accumulation, allow_repeat=True,
                           cross_document_labels=settings.labels_cross(small))
        sequences = [train.as_tensors(next(mix)) for _ in range(accumulation)]
        # labels cross boundaries only with masks off; a 128-token pack of this data seldom holds a boundary,
        # so the arm's first short domain is checked in 4,096-token packs
        pack = next(c for c in small["mixture"] if c["mode"] == "pack")
        packs = data.Mixture(settings.resolved([dict(pack, proportion=1, length=4096)], small["data_root"]),
                             4096, cross_document_labels=settings.labels_cross(small))
        with_boundaries = [s for s in map(packs.sequence, range(4)) if len(s.cu_seqlens) > 2]
        assert with_boundaries, name
        for s in with_boundaries:
            ends = s.cu_seqlens[1:-1] - 1
            expected = s.input_ids[ends + 1] if name == "doc_mask_off" else np.full(len(ends), -100)
            assert s.labels[ends].tolist() == expected.tolist(), name
        batches = train.micro_batches(sequences, 1, small["sort_microbatches"])
        torch.manual_seed(0)
        model = Llama(LlamaConfig.tiny(num_hidden_layers=1, rope_theta=small["rope_theta"]),
                      cross_document=small["cross_document"])
        optimizer = train.build_optimizer(model, small)
        loss, grad_norm = train.train_step(model, optimizer, batches, torch.device("cpu"), small["grad_clip"])
        assert 10 < loss < 13 and np.isfinite(grad_norm), (name, loss)  # ~ln(128256) = 11.8 for a fresh model




@pytest.mark.slow
@pytest.mark.parametrize("name,sp", [("doc_mask_off", 1), ("rope_512k_256m", 2)])
def test_ablation_dry_run_through_train_py(ablation_domains, tmp_path, name, sp):
    """Representative arms end to end as a user runs them (the 512K one with a real Ulysses group of 2), from
    another working directory than the repository's: the arms include their bases by paths relative to
    themselves."""
    dry = tmp_path / "dry.py"
    dry.write_text(DRY_RUN.format(config=os.path.join(ROOT, "configs", "ablations", f"{name}.py"),
                                  scale=SCALE, fewer=FEWER, root=str(ablation_domains),
                                  out=str(tmp_path / "run"), sp=sp))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={sp}"] \
        if sp > 1 else [sys.executable]
    proc = subprocess.run(launcher + [os.path.join(ROOT, "train.py"), str(dry), "--allow_repeat=True"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"(dp 1 x sp {sp})" in proc.stdout and "step      1/1" in proc.stdout
