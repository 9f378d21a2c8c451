"""The first-GPU audit's findings that live in train.py, attention.py and evaluate.py (issue 19), each shown
on the CPU: the process group's timeout covers rank 0's first load, fp32 attention off the CPU repeats K/V
rather than ask SDPA for a GQA kernel it may not have, flex chooses compiled or eager per call's device,
cu_seqlens reaches the model as a host array that FSDP's root does not move, and evaluation's default lengths
fit the GPU."""
import datetime

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.utils import _to_kwargs

import attention
import memory
import parallel
import settings
import train
from model import Llama, LlamaConfig


def test_the_process_group_waits_long_enough_for_rank_0_to_load_init_from(monkeypatch):
    seen = {}

    def init(backend, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(parallel.dist, "init_process_group", init)
    with pytest.raises(RuntimeError, match="stop here"):
        parallel.init_distributed()
    # 32 GB at 5 MB/s is 1.8 hours; NCCL's default is 10 minutes
    assert seen["timeout"] >= datetime.timedelta(hours=2)


def sdpa_calls(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        calls.append((k.shape[1], kwargs.get("enable_gqa", False)))
        return real(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    return calls


@pytest.mark.parametrize("device,dtype,expect", [
    ("meta", torch.float32, (8, False)),  # off the CPU in fp32: K/V repeated to the 8 query heads
    ("meta", torch.bfloat16, (2, True)),  # half precision: GQA kept (the flash kernels have it)
    ("cpu", torch.float32, (2, True)),  # the CPU's flash kernel has GQA: nothing repeated
])
def test_fp32_attention_off_the_cpu_repeats_kv(monkeypatch, device, dtype, expect):
    calls = sdpa_calls(monkeypatch)
    q = torch.randn(16, 8, 32, device=device, dtype=dtype)
    k, v = (torch.randn(16, 2, 32, device=device, dtype=dtype) for _ in range(2))
    docs = attention.prepare(torch.tensor([0, 16], dtype=torch.int32), 16, device, backend="sdpa")
    out = attention.attend(q, k, v, docs)
    assert calls == [expect] and out.shape == q.shape


def test_repeated_kv_gives_the_same_attention():
    q = torch.randn(16, 8, 32, dtype=torch.float64)
    k, v = (torch.randn(16, 2, 32, dtype=torch.float64) for _ in range(2))
    gqa = attention._sdpa_causal(q, k, v, True)
    rep = attention._sdpa_causal(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), False)
    assert torch.allclose(gqa, rep, atol=1e-12)


def test_flex_stays_eager_on_the_cpu_after_a_gpu_compiled_it(monkeypatch):
    """The compiled-or-eager choice is made per call's device, not once for the process by its first call."""
    def compiled(*args, **kwargs):
        raise AssertionError("the CUDA-compiled flex was called with CPU tensors")

    monkeypatch.setattr(attention, "_compiled_flex", compiled)  # as if a GPU had run flex first
    q = torch.randn(256, 4, 16)
    k, v = torch.randn(256, 2, 16), torch.randn(256, 2, 16)
    docs = attention.prepare(torch.tensor([0, 100, 256], dtype=torch.int32), 256, "cpu", backend="flex")
    out = attention.attend(q, k, v, docs)
    ref = attention.attend(q, k, v, attention.prepare(torch.tensor([0, 100, 256], dtype=torch.int32), 256, "cpu",
                                                      backend="sdpa"))
    assert torch.allclose(out, ref, atol=1e-5)


def test_cu_seqlens_reaches_the_model_as_a_host_array_that_fsdp_does_not_move():
    """train.forward passes cu_seqlens as numpy: FSDP2's root pre-forward (torch.distributed.utils._to_kwargs,
    as DDP) moves every tensor argument to the GPU, after which attention.prepare would copy it back, a sync
    per micro-batch. The model gives the same loss for either form."""
    from types import SimpleNamespace
    seen = {}

    class Recorder(Llama):
        def forward(self, *args, **kwargs):
            seen.update(kwargs)
            return super().forward(*args, **kwargs)

    model = Recorder(LlamaConfig.tiny()).double()
    ids = torch.randint(0, model.config.vocab_size, (40,))
    cu = torch.tensor([0, 15, 40], dtype=torch.int32)
    batch = SimpleNamespace(input_ids=ids, labels=ids, cu_seqlens=cu)
    loss, _ = train.forward(model, batch, torch.device("cpu"))
    assert not isinstance(seen["cu_seqlens"], torch.Tensor)
    moved_args, moved_kwargs = _to_kwargs((), seen, torch.device("meta"), False)
    assert moved_kwargs[0]["cu_seqlens"] is seen["cu_seqlens"]  # untouched, where the labels went to "meta"
    assert moved_kwargs[0]["labels"].device.type == "meta"
    assert loss.item() == model(ids, cu_seqlens=cu, labels=ids)[0].item()


def test_evaluation_default_lengths_fit_the_gpu():
    """Llama-3-8B trained at 512K: its KV cache is 128 KiB a token in bf16, 64 GiB at 524,288, beside 15 GiB
    of weights on an 80 GiB GPU: the longest default length is left out, in one line."""
    with torch.device("meta"):
        model = Llama(LlamaConfig.llama3_8b(max_position_embeddings=524288)).to(torch.bfloat16)
    lines = []
    lengths = [8192 * 2**i for i in range(7)]  # 8K .. 512K, evaluate.default_lengths(524288)
    kept = memory.eval_lengths_that_fit(lengths, model, lines.append, free_bytes=(80 - 15) * memory.GiB)
    assert kept == lengths[:-1] and len(lines) == 1 and lines[0].startswith("lengths from 524,288 left out")
    assert memory.eval_lengths_that_fit(lengths, model, lines.append, free_bytes=200 * memory.GiB) == lengths
    with torch.device("meta"):  # the CPU: nothing is capped (the meta model stands for any non-CUDA device)
        assert memory.eval_lengths_that_fit(lengths, model, lines.append) == lengths


def test_train_stops_in_one_line_when_the_estimate_exceeds_the_gpu(monkeypatch):
    cfg = dict(settings.DEFAULTS, model="llama3_8b", seq_len=65536, compute_dtype="bfloat16")
    real, made = memory.estimate, {}

    def estimate_once(cfg, world):  # both GPU sizes below judge one estimate (a meta step of the 8B at 64K)
        key = repr((sorted(cfg.items()), world))
        if key not in made:
            made[key] = real(cfg, world)
        return made[key]

    monkeypatch.setattr(memory, "estimate", estimate_once)
    lines = []
    with pytest.raises(memory.UserError, match="exceeds this GPU's 40.0 GiB"):
        memory.check_fits(cfg, 8, torch.device("cuda"), lines.append, have=40 * memory.GiB)
    assert lines[0].startswith("memory estimate: ") and "of 40.0 GiB" in lines[0]
    assert memory.check_fits(cfg, 8, torch.device("cuda"), lines.append, have=140 * memory.GiB) < 140 * memory.GiB
    # an estimate it cannot make is said, and the run goes on
    assert memory.check_fits(dict(cfg, init_from="org/unknown"), 8, torch.device("cuda"), lines.append) is None
    assert lines[-1].startswith("memory estimate: n/a")
    assert len(made) == 1  # the two GPU sizes did judge the same estimate


@pytest.mark.parametrize("command,argv,says", [
    ("memory", ["no/such/config.py"], "error: "),
    ("memory", ["configs/prolong_64k.py", "--gpus", "3", "--sp", "2"], "error: --gpus 3 is not a multiple"),
    ("extend", ["--out", "/nonexistent-dir-for-test/x"], "error: no CUDA device"),
])
def test_bench_memory_and_extend_fail_in_one_line(monkeypatch, capsys, command, argv, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    module = __import__(command)
    with pytest.raises(SystemExit) as exit_:
        module.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith(says) and err.count("\n") == 1, err
