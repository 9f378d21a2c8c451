"""Balanced steps (data.balance_step, Mixture.balanced_step): every sequence of a step exactly once, the same
assignment on every rank, never slower than the paper's ordering; the step's global batch is unchanged."""
import itertools
import os
import random

import numpy as np
import pytest

import data
from test_tokenfiles import conversations, write_domain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_slots(slots, n, dp, per_micro):
    assert len(slots) == dp and all(len(s) == n // (dp * per_micro) for s in slots)
    assert all(len(m) == per_micro for s in slots for m in s)
    assert sorted(i for s in slots for m in s for i in m) == list(range(n))


@pytest.mark.parametrize("dp,per_micro,accumulation", [(2, 1, 4), (4, 1, 2), (4, 2, 2), (8, 1, 2), (3, 3, 3)])
def test_every_sequence_once_and_never_slower_than_the_paper(dp, per_micro, accumulation):
    rng = random.Random(dp * 100 + per_micro)
    n = dp * per_micro * accumulation
    for _ in range(50):
        # skewed like the 512K mixture: some single-document sequences, most packs of short documents
        costs = [rng.choice([1.0, 1.0, 1.0, 8.0]) + rng.random() * 0.1 for _ in range(n)]
        balanced, paper = data.balance_step(costs, dp, per_micro), data.paper_step(costs, dp, per_micro)
        check_slots(balanced, n, dp, per_micro)
        check_slots(paper, n, dp, per_micro)
        assert data.step_time(costs, balanced) <= data.step_time(costs, paper) + 1e-12
        assert data.balance_step(list(costs), dp, per_micro) == balanced  # deterministic


def test_one_heavy_sequence_per_micro_step_goes_first_and_alone():
    # 2 ranks x 2 micro-steps: the paper puts both heavy sequences on rank 0 (indices 0 and 2), so both
    # micro-steps wait for a heavy one (time 16); balanced, they share micro-step 0 (time 8 + 1)
    costs = [8.0, 1.0, 8.0, 1.0]
    assert data.step_time(costs, data.paper_step(costs, 2, 1)) == 16.0
    balanced = data.balance_step(costs, 2, 1)
    assert balanced == [[[0], [1]], [[2], [3]]] and data.step_time(costs, balanced) == 9.0


def test_lpt_within_a_micro_step_is_optimal_on_small_cases():
    rng = random.Random(1)
    for _ in range(30):
        costs = [float(rng.randint(1, 20)) for _ in range(4)]
        slots = data.balance_step(costs, 2, 2)  # one micro-step: 4 sequences over 2 ranks, 2 each
        best = min(max(sum(costs[i] for i in a), sum(costs[i] for i in range(4) if i not in a))
                   for a in itertools.combinations(range(4), 2))
        assert data.step_time(costs, slots) == best


def test_a_step_that_does_not_fill_its_slots_is_refused():
    with pytest.raises(ValueError, match="do not fill"):
        data.balance_step([1.0] * 5, 2, 1)


@pytest.fixture(scope="module")
def mixture_spec(tmp_path_factory):
    root = tmp_path_factory.mktemp("balance")
    rng = np.random.default_rng(0)
    long_docs = [rng.integers(0, 1000, int(k)) for k in rng.integers(130, 400, 40)]
    short_docs = [rng.integers(0, 1000, int(k)) for k in rng.integers(3, 40, 400)]
    return [dict(path=write_domain(root / "long", long_docs), proportion=0.5, length=128, mode="chunk"),
            dict(path=write_domain(root / "short", short_docs), proportion=0.3, length=64, mode="pack"),
            dict(path=write_domain(root / "chat", conversations(300), with_mask=True), proportion=0.2, length=128,
                 mode="sft")]


def test_sequence_lengths_are_those_of_the_sequence_without_reading_it(mixture_spec):
    mix = data.Mixture(mixture_spec, 128, seed=3, allow_repeat=True)
    for g in range(300):  # past the first epoch of the long domain
        assert mix.sequence_lengths(g).tolist() == np.diff(mix.sequence(g).cu_seqlens).tolist()


@pytest.mark.parametrize("dp,per_rank,per_micro", [(2, 4, 1), (4, 2, 1), (2, 4, 2)])
def test_balanced_step_covers_the_steps_sequences_and_moves_the_cursor_alike(mixture_spec, dp, per_rank,
                                                                             per_micro):
    def cost(lengths):
        return float((lengths.astype(float) ** 2).sum())

    plain = [data.Mixture(mixture_spec, 128, seed=3, dp_rank=r, dp_size=dp, allow_repeat=True) for r in range(dp)]
    balanced = [data.Mixture(mixture_spec, 128, seed=3, dp_rank=r, dp_size=dp, allow_repeat=True)
                for r in range(dp)]

    def time(per_rank_sequences):  # micro-steps in the given order, each as slow as its slowest rank
        costs = [[sum(cost(np.diff(s.cu_seqlens)) for s in seqs[k:k + per_micro])
                  for k in range(0, per_rank, per_micro)] for seqs in per_rank_sequences]
        return sum(max(c[j] for c in costs) for j in range(per_rank // per_micro))

    for _ in range(6):  # steps
        mine = [[next(m) for _ in range(per_rank)] for m in plain]
        want = sorted(s.input_ids.tobytes() for seqs in mine for s in seqs)
        got = [m.balanced_step(per_rank, per_micro, cost) for m in balanced]
        assert all(len(g) == per_rank for g in got)
        assert sorted(s.input_ids.tobytes() for g in got for s in g) == want
        assert [m.consumed for m in balanced] == [m.consumed for m in plain]
        paper = [sum(sorted([seqs[k:k + per_micro] for k in range(0, per_rank, per_micro)],
                            key=lambda m: -sum(cost(np.diff(s.cu_seqlens)) for s in m)), []) for seqs in mine]
        assert time(got) <= time(paper)


# ----------------------------------------------------------------------------------------------------------------
# the simulator (balance.py, `python bench.py balance CONFIG`)


def test_table_lengths_fill_every_sequence_as_the_modes_cut():
    import balance
    mixture = [dict(path="x/book-65536", proportion=0.6, length=512, mode="chunk"),
               dict(path="x/short", proportion=0.4, length=128, mode="pack")]
    lengths = balance.table_lengths(mixture, 512, 400)
    assert all(int(x.sum()) == 512 for x in lengths)
    single = [x for x in lengths if len(x) == 1]
    assert all(x.tolist() == [512] for x in single) and 0.5 < len(single) / 400 < 0.7


def test_simulator_reads_the_domains_on_disk_and_prints_the_ratio(mixture_spec, tmp_path, capsys):
    import balance
    root = os.path.dirname(mixture_spec[0]["path"])
    config = tmp_path / "config.py"
    config.write_text(f"data_root = {root!r}\nseq_len = 128\ntokens_per_step = 128 * 8\nmixture = "
                      f"{[dict(c, path=os.path.basename(c['path'])) for c in mixture_spec]!r}\n")
    balance.main([str(config), "--dp", "2", "4", "3", "--steps", "20", "--model", "tiny"])
    out = capsys.readouterr().out
    assert "from the domains on disk" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows["3"][1] == "n/a"
    # the same figures computed here from the sequences train.py would read
    from model import LlamaConfig
    mix = data.Mixture(mixture_spec, 128, seed=0, allow_repeat=True)
    cost = balance.flop_cost(LlamaConfig.tiny())
    lengths = [mix.sequence_lengths(g) for g in range(160)]
    for dp in (2, 4):
        paper, balanced, _ = balance.simulate(lengths, 8, dp, 1, cost)
        assert float(rows[str(dp)][-1].rstrip("x")) == pytest.approx(paper / balanced, abs=1e-3)
        assert paper >= balanced


@pytest.mark.parametrize("name", ["prolong_64k", "prolong_512k"])
def test_simulator_on_the_recipe_configs_without_their_data(name, capsys):
    import balance
    balance.main([os.path.join(ROOT, "configs", f"{name}.py"), "--steps", "40"])
    out = capsys.readouterr().out
    assert "LENGTH_TABLE" in out
    ratios = [float(line.split()[-1].rstrip("x")) for line in out.splitlines()[2:] if line.split()[1] != "n/a"]
    assert ratios and all(r >= 1.0 for r in ratios) and max(ratios) > 1.05


# ----------------------------------------------------------------------------------------------------------------
# train.py with balance_steps on and off: the same update (real torchrun/gloo process groups, float64)

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
VOCAB = 512  # the byte tokenizer's 259 ids, rounded up: what is balanced is the data, not the vocabulary


def launch(tmp_path, nproc, runs, steps=2):
    """Losses and gradients of `steps` steps of train.py's setup and step functions for each of `runs`
    ({name: (settings overrides, resume_at or None)}), all in ONE torchrun launch of nproc ranks."""
    import subprocess
    import sys
    specs = []
    for name, (overrides, resume_at) in runs.items():
        settings = dict(out_dir=str(tmp_path / name), data_root=str(tmp_path.parent / "domains"), seq_len=128,
                        mixture=[dict(path="long", proportion=0.4, length=128, mode="chunk"),
                                 dict(path="short", proportion=0.3, length=64, mode="pack"),
                                 dict(path="chat", proportion=0.3, length=128, mode="sft")],
                        tokens_per_step=128 * 8, max_steps=steps, param_dtype="float64",
                        compute_dtype="float64", tokenizer=str(tmp_path.parent / "tokenizer"),
                        allow_repeat=True, model_overrides={"num_hidden_layers": 2, "initializer_range": 0.2,
                                                            "vocab_size": VOCAB})
        settings.update(overrides)
        config = tmp_path / f"{name}.py"
        config.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
        specs.append(str(config) + (f"@{resume_at}" if resume_at else ""))
    out = tmp_path / f"world{nproc}.pt"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(launcher + ["tests/balance_worker.py", str(out), str(steps)] + specs, cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    import torch
    results = torch.load(out, weights_only=True)
    return {name: results[str(tmp_path / f"{name}.py")] for name in runs}


def assert_same(a, b, what):
    assert len(a) == len(b)
    for step, (x, y) in enumerate(zip(a, b)):
        assert abs(x["loss"] - y["loss"]) <= 1e-10, (what, step, x["loss"], y["loss"])
        assert x["grads"].keys() == y["grads"].keys()
        worst = max((x["grads"][k] - y["grads"][k]).abs().max().item() for k in x["grads"])
        assert worst <= 1e-10, (what, step, worst)


@pytest.mark.slow
def test_balanced_steps_give_the_same_losses_and_gradients_float64(tmp_path_factory):
    """World sizes 2 and 4, an SP group of 2, two sequences per micro-batch, SFT masks in the mixture, and a
    data stream reopened mid-run: balance_steps on equals off (<= 1e-10), and every layout equals every other.
    Two launches (one per world size) run the six layouts."""
    pytest.importorskip("tokenizers")
    from train_worker import byte_tokenizer
    base = tmp_path_factory.mktemp("train")
    byte_tokenizer(base / "tokenizer")
    domains = base / "domains"
    rng = np.random.default_rng(5)
    write_domain(domains / "long", [rng.integers(0, 256, int(k)) for k in rng.integers(130, 300, 30)])
    write_domain(domains / "short", [rng.integers(0, 256, int(k)) for k in rng.integers(3, 60, 200)])
    chats = [(ids % 256, mask) for ids, mask in conversations(200, seed=5)]  # ids of the byte tokenizer
    write_domain(domains / "chat", chats, with_mask=True)
    tmp = base / "runs"
    tmp.mkdir()
    two = launch(tmp, 2, {"paper2": ({"balance_steps": False}, None), "balanced2": ({}, None),
                          "balanced2x2": ({"micro_batch_sequences": 2}, None), "resumed": ({}, 1)})
    reference = two["paper2"]
    assert reference[0]["loss"] > 5  # a fresh model: near ln(vocab)
    assert reference[0]["grads"]["lm_head.weight"].shape[0] == VOCAB  # every gradient compared whole
    assert_same(two["balanced2"], reference, "2 ranks")
    assert_same(two["balanced2x2"], reference, "2 sequences per micro-batch")
    assert_same(two["resumed"], reference, "data reopened after step 1")
    four = launch(tmp, 4, {"balanced4": ({}, None), "balanced4sp2": ({"sp_size": 2}, None)})
    assert_same(four["balanced4"], reference, "4 ranks")
    assert_same(four["balanced4sp2"], reference, "4 ranks, SP 2")


@pytest.mark.slow
def test_cpu_run_trains_both_orderings_on_two_ranks(capsys):
    """The measured comparison runs end to end (its figures are for a quiet machine, not asserted here)."""
    pytest.importorskip("tiktoken")
    import balance
    balance.cpu_run(steps=2, seq_len=512)
    out = capsys.readouterr().out
    assert "paper     run 1:" in out and "balanced  run 1:" in out and "tokens/s" in out.splitlines()[-1]
