"""Sequence parallelism (seqpar.py) against one process: real gloo groups of 4 and 2 CPU processes.

The multi-process work is in tests/seqpar_worker.py; three launches (4 processes: attention and full-model
identities in float64; 2 processes with sp = 2 and 1 process with sp = 1: training steps in fp32) start
together once per session, and each test reads what it needs from their results.
"""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import seqpar
import settings
from model import LlamaConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "seqpar_worker.py")


def launch(nproc, mode, out):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    prefix = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.Popen(prefix + [WORKER, mode, str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seqpar")
    started = {name: (launch(n, mode, tmp / f"{name}.json"), tmp / f"{name}.json")
               for name, n, mode in [("exact", 4, "exact"), ("sp2", 2, "train"), ("sp1", 1, "train")]}
    done = {}

    def result(name):
        if name not in done:
            proc, out = started[name]
            log, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, f"{name} worker failed:\n{log[-6000:]}"
            done[name] = json.loads(out.read_text())
        return done[name]

    yield result
    for proc, _ in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def minimum_bytes(tokens_per_rank, n_heads, n_kv_heads, head_dim, sp, bytes_per_element):
    """What each rank must receive for its own heads (and, by symmetry, sends): the other ranks' tokens of its
    H/sp query heads and of the KV heads they use (H_kv/sp of them, or one when sp > H_kv), then the attention
    output of the other ranks' heads for its own tokens."""
    kv = max(n_kv_heads // sp, 1)
    per_token_head = head_dim * bytes_per_element
    return (sp - 1) * tokens_per_rank * per_token_head * (n_heads // sp + 2 * kv + n_heads // sp)


# ------------------------------------------------------------------------------------------------ attention


@pytest.mark.slow
def test_attention_output_and_grads_equal_one_process(runs):
    results = runs("exact")["attention"]
    assert len(results) == 4 * 2 * 4 * 3  # ranks x sp sizes x head layouts x packs: every rank reported
    cases = {(r["sp"], r["heads"], r["kv_heads"]) for r in results}
    assert {(4, 8, 2), (4, 4, 1), (2, 4, 1)} <= cases  # GQA/MQA with fewer KV heads than ranks
    assert {(2, 8, 2), (4, 8, 4), (2, 4, 4), (4, 4, 4)} <= cases  # KV heads split evenly; MHA
    # packs whose documents straddle the slice boundaries of both sp sizes (12, 24, 36 and 24)
    assert [0, 5, 17, 18, 41, 48] in [r["cu"] for r in results]
    for r in results:
        assert r["grad_norm"] > 0
        assert r["max_err"] <= 1e-10, r


@pytest.mark.slow
def test_bytes_sent_are_the_minimum_exchange(runs):
    for r in runs("exact")["attention"]:
        expected = minimum_bytes(r["tokens_per_rank"], r["heads"], r["kv_heads"], r["head_dim"], r["sp"], 8)
        # q, k, v in one exchange, the output back in another; the backward pass mirrors them
        assert len(r["forward_sent"]) == 2 and len(r["backward_sent"]) == 2, r
        assert sum(r["forward_sent"]) == r["formula"] == expected, r
        assert sum(r["backward_sent"]) == expected


def test_llama3_8b_bytes_printed_next_to_repeating_kv(capsys):
    T, D, bf16 = 65536, 128, 2
    ours = minimum_bytes(T, 32, 8, D, 8, bf16)
    repeated = minimum_bytes(T, 32, 32, D, 8, bf16)  # K/V repeated to 32 heads: as if there were 32 KV heads
    assert seqpar.bytes_per_layer(T, 32, 8, D, 8) == ours == 1_174_405_120
    assert seqpar.bytes_per_layer(T, 32, 8, D, 8, repeat_kv=True) == repeated == 1_879_048_192
    seqpar.main()
    printed = capsys.readouterr().out
    assert f"{ours:,} B" in printed and f"{repeated:,} B" in printed and "sp = 8" in printed


# ------------------------------------------------------------------------------------------------ full model


@pytest.mark.slow
def test_full_model_loss_and_gradients_equal_one_process(runs):
    results = runs("exact")["model"]
    assert [(r["dp"], r["sp"]) for r in results] == [(1, 4), (2, 2)]
    for r in results:
        assert r["ulysses"] == r["sp"]  # the model really attended through the Ulysses exchange
        assert abs(r["loss"] - r["ref_loss"]) <= 1e-10, r
        assert r["n_params"] == 2 * 9 + 3  # every parameter of the 2-layer model, untied head
        for name, err in r["max_grad_err"].items():
            assert r["ref_grad_max"][name] > 0, name
            assert err <= 1e-10, (r["dp"], r["sp"], name, err)


@pytest.mark.slow
def test_training_steps_with_sp2_equal_sp1(runs):
    one, two = runs("sp1"), runs("sp2")
    assert (one["sp"], two["sp"]) == (1, 2)
    assert one["losses"][-1] < one["losses"][0] - 0.05  # the steps really train: same batches, falling loss
    for a, b in zip(one["losses"] + [one["val_loss"]], two["losses"] + [two["val_loss"]], strict=True):
        assert abs(a - b) <= 1e-5
    for a, b in zip(one["grad_norms"], two["grad_norms"], strict=True):
        assert abs(a - b) <= 1e-5 * max(1.0, a)


# ------------------------------------------------------------------------------------------------ the split


def test_split_pads_and_keeps_global_documents_and_positions():
    ids = torch.arange(10, 20)
    labels = torch.cat([ids[1:], torch.tensor([-100])])
    cu = torch.tensor([0, 3, 9, 10], dtype=torch.int32)
    batch = SimpleNamespace(input_ids=ids, labels=labels, cu_seqlens=cu)
    parts = [seqpar.split_batch(batch, 4, r) for r in range(4)]  # 10 tokens: padded to 12
    assert all(len(p.input_ids) == 3 for p in parts)
    assert torch.cat([p.input_ids for p in parts]).tolist() == list(range(10, 20)) + [0, 0]
    assert torch.cat([p.labels for p in parts]).tolist() == labels.tolist() + [-100, -100]
    for p in parts:  # the padding is its own last document; boundaries stay global
        assert p.cu_seqlens.tolist() == [0, 3, 9, 10, 12] and p.cu_seqlens.dtype == torch.int32
    # true positions in each document, across slice boundaries (the document 3..9 spans three slices)
    assert torch.cat([p.position_ids for p in parts]).tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 5, 0, 0, 1]
    cross = [seqpar.split_batch(batch, 4, r, continuous_positions=True).position_ids for r in range(4)]
    assert torch.cat(cross).tolist() == list(range(12))
    even = seqpar.split_batch(batch, 2, 1)  # 10 tokens split in two: no padding, boundaries unchanged
    assert even.input_ids.tolist() == list(range(15, 20)) and even.cu_seqlens.tolist() == [0, 3, 9, 10]
    with pytest.raises(ValueError, match="cu_seqlens from 0 to 10"):
        cut_short = SimpleNamespace(input_ids=ids, labels=labels, cu_seqlens=torch.tensor([0, 9]))
        seqpar.split_batch(cut_short, 2, 0)


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("heads,kv_heads,sp,message", [
    (6, 2, 4, "sp_size 4 does not divide num_attention_heads 6"),
    (9, 3, 2, "sp_size 2 does not divide num_attention_heads 9"),  # SmolLM2-135M
    (12, 6, 4, "num_key_value_heads 6 is neither divisible by sp_size 4 nor a divisor of it"),
])
def test_heads_not_divisible_by_sp_is_a_clear_error(heads, kv_heads, sp, message):
    config = LlamaConfig.tiny(hidden_size=16 * heads, num_attention_heads=heads, num_key_value_heads=kv_heads)
    with pytest.raises(ValueError, match=message) as err:
        seqpar.check_heads(config, sp)
    assert "\n" not in str(err.value)


def test_splittable_heads_pass():
    for heads, kv_heads, sp in [(32, 8, 8), (32, 8, 16), (32, 8, 2), (4, 1, 4), (8, 2, 4)]:
        seqpar.check_heads(LlamaConfig.tiny(hidden_size=16 * heads, num_attention_heads=heads,
                                            num_key_value_heads=kv_heads), sp)


def test_sp_not_dividing_world_size_is_a_clear_error():
    cfg = dict(settings.DEFAULTS, sp_size=4)
    with pytest.raises(settings.ConfigError, match="sp_size 4 does not divide the world size 6"):
        settings.validate(cfg, 6)
