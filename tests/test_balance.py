"""Balanced steps (data.balance_step, Mixture.balanced_step): every sequence of a step exactly once, the same
assignment on every rank, never slower than the paper's ordering; the step's global batch is unchanged."""
import itertools
import random

import numpy as np
import pytest

import data
from test_tokenfiles import conversations, write_domain


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
def test_balanced_step_covers_the_steps_sequences_and_moves_the_cursor_alike(mixture_spec, dp, per_rank, per_micro):
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
