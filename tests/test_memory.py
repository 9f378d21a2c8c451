"""memory.py: the meta-device estimate of a training step's activation memory agrees with what a real CPU step
holds (autograd's saved tensors, counted through saved-tensor hooks, and the live storages of the same step
run on the CPU), and `bench.py memory` prints the per-GPU table for a config."""
import os
import subprocess
import sys

import pytest
import torch

import memory
from model import Llama, LlamaConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a model whose activations are not dwarfed by its parameters: 4 layers, 32K vocabulary, 1024 tokens
CONFIG = LlamaConfig.tiny(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          intermediate_size=352, vocab_size=32000)
T = 1024


def saved_tensor_bytes(config, tokens, fused_loss):
    """Bytes of the distinct storages autograd saves in one real CPU forward (parameters excluded): what a
    step holds between forward and backward, measured independently of memory.py's counting."""
    model = Llama(config)
    model.fused_loss = fused_loss
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            saved[s.data_ptr()] = s.nbytes()
        return t

    ids = torch.randint(0, config.vocab_size, (tokens,))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = model(ids, cu_seqlens=torch.tensor([0, tokens], dtype=torch.int32), labels=ids)
    return sum(saved.values())


def test_meta_activations_match_the_tensors_a_real_forward_saves():
    """No checkpointing and the chunked loss (which keeps nothing outside autograd's saved tensors): what
    stays live after forward on meta is what autograd saved, within 1% (the loss and its count are the
    rest)."""
    est = memory.measure_step(CONFIG, T, torch.float32, checkpointing=False, fused_loss=False)
    real = saved_tensor_bytes(CONFIG, T, fused_loss=False)
    assert abs(est["after_forward"] - real) <= 0.01 * real, (est, real)


def test_meta_step_matches_the_same_step_run_on_the_cpu():
    """Forward peak, what forward leaves, backward peak: meta against real CPU tensors, within 2%, with and
    without checkpointing and with the fused loss (whose buffers live outside autograd)."""
    labels = torch.randint(0, CONFIG.vocab_size, (T,))
    for checkpointing in (False, True):
        meta = memory.measure_step(CONFIG, T, torch.float32, checkpointing)
        cpu = memory.measure_step(CONFIG, T, torch.float32, checkpointing, device="cpu", labels=labels)
        for key in ("forward_peak", "after_forward", "backward_peak"):
            assert abs(meta[key] - cpu[key]) <= 0.02 * cpu[key], (checkpointing, key, meta, cpu)
    # checkpointing keeps each block's input instead of its activations
    plain = memory.measure_step(CONFIG, T, torch.float32, checkpointing=False)
    ckpt = memory.measure_step(CONFIG, T, torch.float32, checkpointing=True)
    assert ckpt["after_forward"] < 0.5 * plain["after_forward"]


def test_sequence_parallel_ranks_hold_their_share():
    """sp 2: each rank holds half the tokens' activations (attention over the whole sequence for half the
    heads)."""
    one = memory.measure_step(CONFIG, T, torch.float32, False, sp=1, fused_loss=False)
    two = memory.measure_step(CONFIG, T // 2, torch.float32, False, sp=2, fused_loss=False)
    assert 0.45 < two["after_forward"] / one["after_forward"] < 0.55, (one, two)


def test_the_estimate_adds_sharded_states():
    cfg = dict(init_from=None, model="tiny", model_overrides={}, sp_size=1, seq_len=512, micro_batch_sequences=1,
               compute_dtype="float32", param_dtype="float32", activation_checkpointing=True)
    rows1, info = memory.estimate(cfg, gpus=1)
    rows4, _ = memory.estimate(cfg, gpus=4)
    states1, states4 = rows1[0][1], rows4[0][1]
    assert states1 == 16 * info["params"]  # fp32 weights, gradients, two Adam moments
    assert abs(states4 - states1 / 4) < 16 * 1000  # sharded over 4 GPUs (each parameter's rows rounded up)
    with pytest.raises(memory.UserError, match="multiple of the sequence-parallel size"):
        memory.estimate(dict(cfg, sp_size=2), gpus=3)


@pytest.mark.slow
def test_bench_memory_prints_the_table_of_a_recipe_config():
    proc = subprocess.run([sys.executable, "bench.py", "memory", "configs/prolong_512k.py", "--gpus", "64",
                           "--model", "llama3_8b"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sp 8: 65,536 tokens per GPU" in proc.stdout and "peak per GPU:" in proc.stdout, proc.stdout
    peak = float(proc.stdout.split("peak per GPU:")[1].split()[0])
    assert 30 < peak < 80, proc.stdout
    # a config whose init_from has no config.json here, without --model: one line
    proc = subprocess.run([sys.executable, "bench.py", "memory", "configs/prolong_512k.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.startswith("error: init_from") and proc.stderr.count("\n") == 1


def test_the_whole_estimate_bounds_a_real_fsdp2_step():
    """A real FSDP2 training step on the CPU (a world of one, train.py's own build_model, build_optimizer and
    train_step), every live tensor counted from before the model is built, states included: its steady peak is at
    most the estimate and within 20% of it (measured: 0.90; the estimate errs on the safe side)."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    import parallel
    import settings
    import train
    created = not dist.is_initialized()
    if created:
        parallel.init_distributed()
    try:
        over = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=352, vocab_size=32000)
        cfg = dict(settings.DEFAULTS, model="tiny", model_overrides=over, compute_dtype="float32", seq_len=T,
                   activation_checkpointing=True)
        ids = torch.randint(0, 32000, (T,))
        batch = SimpleNamespace(input_ids=ids, labels=ids, cu_seqlens=torch.tensor([0, T], dtype=torch.int32))
        with memory.TensorMemory() as mem:
            mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",))
            model = parallel.build_model(cfg, mesh, torch.device("cpu"), log=lambda m: None)
            optimizer = train.build_optimizer(model, cfg)
            train.train_step(model, optimizer, [batch], torch.device("cpu"), 1.0)  # the moments now exist
            mem.peak = mem.live
            train.train_step(model, optimizer, [batch], torch.device("cpu"), 1.0)
        rows, _ = memory.estimate(cfg, 1)
        ratio = mem.peak / memory.peak_bytes(rows)
        assert 0.8 <= ratio <= 1.0, ratio
    finally:
        if created:
            dist.destroy_process_group()
