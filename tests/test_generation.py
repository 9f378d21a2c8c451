"""generation.py: what the caches build, they build once per forward pass, not once per layer: on a GPU each
small tensor made on the host is a host-to-device copy, and per layer per decoded token those add up (issue
19)."""
import torch
from torch.overrides import TorchFunctionMode

import attention
from model import Llama, LlamaConfig

FACTORIES = {torch.tensor, torch.as_tensor}  # tensors made from host data: a host-to-device copy each on a GPU


class CountFactories(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += func in FACTORIES
        return func(*args, **(kwargs or {}))


def factory_calls(layers, run):
    torch.manual_seed(0)
    model = Llama(LlamaConfig.tiny(num_hidden_layers=layers)).double().eval()
    with CountFactories() as count:
        run(model)
    return count.calls


def test_decoding_builds_its_small_tensors_once_per_forward_not_per_layer():
    prompts = [list(range(1, 6)), list(range(7, 10))]
    for run in (lambda m: m.generate(prompts[0], 6), lambda m: m.generate_batch(prompts, 6)):
        assert factory_calls(1, run) == factory_calls(4, run) > 0


def test_the_varlen_boundaries_reach_every_layer_built_once(monkeypatch):
    """On a GPU attend_cached hands (cu_q, cu_k) to the varlen kernel; the cache builds them in `positions`,
    once per forward, and every layer receives the same two tensors, [0, c] and [0, L]."""
    seen = []
    real = attention.attend_cached

    def recording(q, k, v, cu=None):
        seen.append(cu)
        return real(q, k, v, cu=cu)

    monkeypatch.setattr(attention, "attend_cached", recording)
    model = Llama(LlamaConfig.tiny(num_hidden_layers=3)).double().eval()
    model.generate([1, 2, 3, 4], 2, prefill_chunk=3)  # prefill 3 + 1 tokens, then one forward per new token
    forwards = [(3, 3), (1, 4), (1, 5), (1, 6)]
    assert len(seen) == 3 * len(forwards)
    for forward, (c, L) in enumerate(forwards):
        layers = seen[3 * forward:3 * forward + 3]
        assert all(cu is layers[0] for cu in layers)  # the same objects: built once
        assert [x.tolist() for x in layers[0]] == [[0, c], [0, L]]
