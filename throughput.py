"""
Throughput accounting for train.py's log: the model FLOPs of a step, the peak a device can reach, and from
them the model FLOPs utilisation (MFU), tokens per second, memory and the time left; and the log's line for a
step.

MFU counts the FLOPs the model needs (forward and backward, attention included, recomputation not), divided by
what the devices could do in the same time at their dense peak for the compute dtype.
"""
import resource

import torch
import torch.distributed as dist


def step_flops(config, cu_seqlens_list):
    """Model FLOPs of forward + backward: 6 per parameter per token for the matmuls (the head included, the
    embedding lookup not), plus causal attention, 6 x head_dim x heads x layers x L^2 per document of length
    L."""
    c = config
    per_layer = (c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
                 + 3 * c.hidden_size * c.intermediate_size)
    matmul_params = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size
    tokens, squares = 0, 0
    for cu in cu_seqlens_list:
        lengths = (cu[1:] - cu[:-1]).double()
        tokens += int(lengths.sum())
        squares += float((lengths ** 2).sum())
    return 6 * matmul_params * tokens + 6 * c.head_dim * c.num_attention_heads * c.num_hidden_layers * squares


# Dense (no sparsity) peaks per GPU in TFLOP/s, from the vendors' data sheets: (name, bf16/fp16, tf32, fp32
# without tensor cores). fp32 compute counts against the TF32 peak when torch.set_float32_matmul_precision
# allows TF32, else against the plain fp32 peak. Order matters: "H100 PCIe" and "H100 NVL" must match before
# plain "H100" (SXM).
GPU_PEAKS = (("H100 PCIe", 756, 378, 51), ("H100 NVL", 835, 418, 60), ("H200 NVL", 835, 418, 60),
             ("GH200", 989, 495, 67), ("H200", 989, 495, 67), ("H100", 989, 495, 67), ("H800", 989, 495, 67),
             ("B200", 2250, 1100, 80), ("A100", 312, 156, 19.5), ("A800", 312, 156, 19.5),
             ("L40S", 362, 183, 91.6), ("A10", 125, 62.5, 31.2), ("RTX 4090", 165, 82.6, 82.6))


def peak_flops_per_device(device, dtype):
    """(peak FLOP/s, where it comes from) for MFU; (None, why) for a GPU not in the table: set peak_flops."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, half, tf32, fp32 in GPU_PEAKS:
            if key in name:
                if dtype in (torch.bfloat16, torch.float16):
                    return half * 1e12, f"{key} dense {str(dtype).removeprefix('torch.')}"
                if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
                    return tf32 * 1e12, f"{key} dense tf32"
                return fp32 * 1e12, f"{key} {str(dtype).removeprefix('torch.')} (no tensor cores)"
        return None, f"unknown GPU {name!r}: set peak_flops for MFU"
    # measured on a 2-core CPU machine: fp32 ~180 GFLOP/s, bf16 ~420 GFLOP/s
    if dtype == torch.bfloat16:
        return 420e9, "2-core CPU bf16, measured"
    return 180e9, "2-core CPU fp32, measured"


def mfu_peak(setting, device, dtype):
    """(peak FLOP/s per device, where it comes from): the peak_flops setting, else the table; (None, why)."""
    return (setting, "peak_flops setting") if setting else peak_flops_per_device(device, dtype)


def global_flops(config, batches, sp, device):
    """The model FLOPs of one step over all ranks (each SP rank counts 1/sp of the sequences its group
    shares), counted on the host; the all-reduce needs a device tensor (an NCCL group has no CPU backend)."""
    flops = torch.tensor(step_flops(config, [b.cu_seqlens for b in batches]) / sp, dtype=torch.float64,
                         device=device)
    dist.all_reduce(flops)
    return flops.item()


def measure(step_times, tokens, flops, peak, world, device):
    """What the step just done achieved: tokens/s, MFU (None without a peak), peak memory, its seconds."""
    dt = step_times[-1]
    return dict(tokens_per_s=tokens / dt, mfu=flops / dt / (peak * world) if peak else None,
                peak_mem_gib=peak_memory_gib(device), step_s=dt)


def step_line(record, steps, step_times):
    """The log's line for a step's record: loss, learning rate, gradient norm, tokens/s, MFU, memory, time
    left."""
    mfu, eta = record["mfu"], time_left(step_times, steps - record["step"])
    return (f"step {record['step']:>6}/{steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | grad "
            f"{record['grad_norm']:.3f} | {record['tokens_per_s']:,.0f} tok/s | MFU "
            f"{f'{100 * mfu:.1f}%' if mfu is not None else 'n/a'} | mem {record['peak_mem_gib']:.2f} GiB "
            f"| ETA {format_seconds(eta)}")


def time_left(step_times, steps_left):
    """Seconds: the median of the last 20 steps' times (robust to a slow checkpoint step) x the steps left."""
    recent = sorted(step_times[-20:])
    return recent[len(recent) // 2] * steps_left


def peak_memory_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def format_seconds(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
