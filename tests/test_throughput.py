"""throughput.py: the peak table MFU is measured against, and the model FLOPs of a step."""
import torch

import throughput
from model import LlamaConfig


def test_peak_flops_table(monkeypatch):
    """PCIe and NVL parts get their own peaks; fp32 is not divided by the bf16 peak; an unknown GPU gets
    none."""
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    for name, dtype, expected in (("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),
                                  ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
                                  ("NVIDIA H100 NVL", torch.bfloat16, 835e12),
                                  ("NVIDIA H200 NVL", torch.bfloat16, 835e12),
                                  ("NVIDIA H200", torch.bfloat16, 989e12),
                                  ("NVIDIA A100-SXM4-80GB", torch.float32, 19.5e12),
                                  ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, n=name: n)
        peak, source = throughput.peak_flops_per_device(cuda, dtype)
        assert peak == expected, (name, dtype, peak, source)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    peak, source = throughput.peak_flops_per_device(cuda, torch.bfloat16)
    assert peak is None and "peak_flops" in source


def test_step_flops_count_matmuls_per_token_and_attention_per_document_square():
    """6 FLOPs per parameter per token for the matmuls, and causal attention growing with each document's
    square: one 64-token document costs the matmuls of 64 tokens plus 6 x head_dim x heads x layers x 64^2."""
    c = LlamaConfig.tiny(vocab_size=1000)
    params = sum(p.numel() for n, p in __import__("model").Llama(c).named_parameters()
                 if "embed" not in n and "norm" not in n)  # the head counts, the lookup and the norms do not
    one = throughput.step_flops(c, [torch.tensor([0, 64])])
    halves = throughput.step_flops(c, [torch.tensor([0, 32, 64])])
    attention = 6 * c.head_dim * c.num_attention_heads * c.num_hidden_layers
    assert one == 6 * params * 64 + attention * 64 ** 2
    assert one - halves == attention * (64 ** 2 - 2 * 32 ** 2)
