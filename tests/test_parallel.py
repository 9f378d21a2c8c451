"""parallel.py in a world of one: rank 0's failure as one ConfigError, and the sharded model's weights, RoPE
base, length and wrapping as build_model promises them. (Several ranks: tests/test_train.py's workers.)"""
import os
import sys

import pytest
import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.device_mesh import init_device_mesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import parallel  # noqa: E402
import settings  # noqa: E402
from model import Llama, LlamaConfig  # noqa: E402


@pytest.fixture(scope="module")
def world_of_one():
    own = not dist.is_initialized()
    if own:
        parallel.init_distributed()
    yield
    if own:
        dist.destroy_process_group()


def test_on_rank0_gives_its_result_or_one_config_error(world_of_one):
    assert parallel.on_rank0(lambda: {"a": 1}, "load") == {"a": 1}

    def fails():
        raise OSError("disk\n   gone")
    with pytest.raises(settings.ConfigError, match=r"^init_from x: disk gone$"):
        parallel.on_rank0(fails, "init_from x")

    def bug():
        raise RuntimeError("a bug is not the user's")
    with pytest.raises(RuntimeError):
        parallel.on_rank0(bug, "init_from x")


def test_build_model_starts_from_the_seeded_init_with_the_runs_rope_and_length(world_of_one):
    over = {"vocab_size": 256, "num_hidden_layers": 2}
    cfg = dict(settings.DEFAULTS, model="tiny", model_overrides=over, seed=5, rope_theta=8e6, seq_len=65536,
               param_dtype="float64", compute_dtype="float64")
    mesh = init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",))
    lines = []
    model = parallel.build_model(cfg, mesh, torch.device("cpu"), lines.append)
    torch.manual_seed(5)
    reference = Llama(LlamaConfig.tiny(**over)).double().state_dict()  # the unsharded model, seeded alike
    got = {n.replace("._checkpoint_wrapped_module", ""): p.full_tensor() for n, p in model.state_dict().items()}
    assert got.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(got[name], tensor), name
    assert model.config.rope_theta == 8e6 and model.config.max_position_embeddings == 65536
    assert all(isinstance(block, CheckpointWrapper) for block in model.model.layers)
    n = sum(t.numel() for t in reference.values())
    assert lines == [f"model: {n / 1e6:,.1f}M parameters, 2 layers, RoPE base 8e+06, compute float64, "
                     f"master float64"]
