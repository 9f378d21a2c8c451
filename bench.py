"""
Benchmarks: our code side by side with a reference, in one run. `python bench.py [--reps 5] [--device cpu|cuda]`

Cases (forward + backward each):
  attention-16docs  a pack of 16 documents of 512 tokens: attention.py (one causal SDPA call per document) against
                    one SDPA call with a block-diagonal causal mask (what packing without varlen kernels costs)
  attention-1doc    one document of 8192 tokens: the same two, to show the per-document path costs nothing extra
  loss-4k           the output layer's loss alone, 4096 tokens, hidden 256, 128,256 vocabulary: loss.py's fused
                    chunked cross-entropy against F.cross_entropy on full logits
  train-step        a 4-layer model (hidden 256, real 128,256 vocabulary), fp32, forward + backward + AdamW, on 4
                    documents of 1024 tokens: model.py (packed, fused chunked loss) against Hugging Face
                    transformers' LlamaForCausalLM (SDPA) with the same weights (the documents as a batch, full logits)
  train-1doc-4k/8k  the same on one document of 4096 / 8192 tokens (one timed step per fresh run: a step takes s)
                    (BENCH_FUSED_LOSS=0 in the environment: model.py with the recomputing loss, for a before/after)

Every measurement runs in a fresh process, so its peak memory (max RSS on CPU, max allocated on CUDA) is its own;
ours and the reference alternate, `--reps` times each. Figures are medians, and ratios are reference / ours. This
machine is shared: the CPU seconds that *other* processes used during each run (from /proc/stat) are printed, so a
disturbed run can be seen and discarded.

`python bench.py gpu [--cpu-smoke]` (`make gpu-check`): the one-shot check of everything that needs a GPU, with
an exit status to trust (gpucheck.py). `python bench.py memory CONFIG [--gpus N] [--sp N]`: a config's per-GPU
memory by phase of a training step, from a run on the meta device, before any GPU is rented (memory.py).
`python bench.py extend [--cpu-smoke]`: SmolLM2-135M's context extended from 8K to 32K on one GPU (extend.py).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CASES = ("attention-16docs", "attention-1doc", "loss-4k", "train-step", "train-1doc-4k", "train-1doc-8k")


def measure(case, impl, device, iters=3):
    """Run one case in this process; returns median seconds per forward+backward, peak memory, FLOPs."""
    import torch
    torch.manual_seed(0)
    dev = torch.device(device)
    if case.startswith("attention"):
        import attention
        lengths = [512] * 16 if case == "attention-16docs" else [8192]
        T, H, KV, D = sum(lengths), 8, 2, 64
        q = torch.randn(T, H, D, device=dev, requires_grad=True)
        k = torch.randn(T, KV, D, device=dev, requires_grad=True)
        v = torch.randn(T, KV, D, device=dev, requires_grad=True)
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
        flops = 6 * D * H * sum(L * L for L in lengths)  # causal: 2 matmuls x 2 FLOPs x L^2/2, forward + 2x backward
        if impl == "ours":
            docs = attention.prepare(cu, T, dev, backend="sdpa")
            step = lambda: attention.attend(q, k, v, docs).sum().backward()  # noqa: E731
        else:
            doc = torch.repeat_interleave(torch.arange(len(lengths), device=dev), torch.tensor(lengths, device=dev))
            mask = (doc[:, None] == doc[None, :]) & torch.ones(T, T, dtype=torch.bool, device=dev).tril()
            qb, kb, vb = (x.transpose(0, 1)[None] for x in (q, k, v))
            step = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
                qb, kb, vb, attn_mask=mask, enable_gqa=True).sum().backward()
        tokens = T
    else:
        step, flops, tokens = train_case(case, impl, dev)
        iters = 1 if case in ("train-1doc-4k", "train-1doc-8k") else iters  # a step of several seconds
    step()  # warm-up
    times = []
    for _ in range(iters):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": statistics.median(times), "peak_bytes": peak, "flops": flops, "tokens": tokens}


# The loss and train-step rows: hidden 256 with Llama-3's real 128,256 vocabulary, where the output layer dominates
# as it does in small models; fp32; a train step is forward, backward and one AdamW update.
TRAIN_SHAPES = {"train-step": (4, 1024), "train-1doc-4k": (1, 4096), "train-1doc-8k": (1, 8192)}


def train_case(case, impl, dev):
    """(step function, model FLOPs, tokens) of a loss or train-step row."""
    import torch
    import torch.nn.functional as F
    from model import Llama, LlamaConfig, fused_cross_entropy
    config = LlamaConfig.tiny(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=688)
    if case == "loss-4k":  # the output layer alone: loss.py's fused form against F.cross_entropy on full logits
        T, d, V = 4096, config.hidden_size, config.vocab_size
        hidden = torch.randn(T, d, device=dev, requires_grad=True)
        weight = (0.02 * torch.randn(V, d, device=dev)).requires_grad_()
        labels = torch.randint(0, V, (T,), device=dev)
        if impl == "ours":
            loss = lambda: fused_cross_entropy(hidden, weight, labels)  # noqa: E731
        else:
            loss = lambda: F.cross_entropy(hidden @ weight.T, labels, reduction="sum")  # noqa: E731

        def step():
            hidden.grad = weight.grad = None
            loss().backward()
        return step, 6 * T * d * V, T
    B, L = TRAIN_SHAPES[case]
    ids = torch.randint(0, config.vocab_size, (B, L), device=dev)
    labels = torch.cat([ids[:, 1:], torch.full((B, 1), -100, device=dev)], dim=1)
    model = Llama(config).to(dev)
    model.fused_loss = os.environ.get("BENCH_FUSED_LOSS", "1") != "0"  # 0: the recomputing loss (before issue 18)
    if impl == "ours":  # packed, document-masked, fused chunked loss
        cu = torch.arange(0, B * L + 1, L, dtype=torch.int32, device=dev)
        loss = lambda: model(ids.reshape(-1), cu_seqlens=cu, labels=labels.reshape(-1))[0]  # noqa: E731
    else:  # Hugging Face's LlamaForCausalLM, SDPA attention, the documents as a batch, full logits
        import transformers
        hf = transformers.LlamaForCausalLM._from_config(transformers.LlamaConfig(**config.to_hf_dict()),
                                                        attn_implementation="sdpa").to(dev)
        hf.load_state_dict(model.state_dict(), strict=False)
        model = hf
        loss = lambda: F.cross_entropy(  # noqa: E731
            hf(ids, use_cache=False).logits.flatten(0, 1).float(), labels.reshape(-1), reduction="sum")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)

    def step():
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    c = config
    matmul_params = c.num_hidden_layers * (c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 *
                                           c.num_key_value_heads) + 3 * c.hidden_size * c.intermediate_size) \
        + c.vocab_size * c.hidden_size
    flops = 6 * matmul_params * B * L + 6 * c.head_dim * c.num_attention_heads * c.num_hidden_layers * B * L * L
    return step, flops, B * L


def busy_cpu_seconds():
    """CPU seconds all processes have spent (user + nice + system + irq + softirq), from /proc/stat."""
    try:
        fields = open("/proc/stat").readline().split()[1:]
        return sum(int(fields[i]) for i in (0, 1, 2, 5, 6)) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def run_isolated(case, impl, device):
    """`measure` in a fresh process; also the CPU time that other processes used meanwhile."""
    before = busy_cpu_seconds()
    proc = subprocess.run([sys.executable, __file__, "--measure", case, impl, "--device", device],
                          capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    if proc.returncode != 0:
        raise SystemExit(f"{case}/{impl} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    own = result.pop("cpu_seconds")
    result["others_cpu_s"] = busy_cpu_seconds() - before - own
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--peak-flops", type=float, default=None, help="per device; default: train.py's table")
    ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        import torch
        if args.device == "cpu":
            torch.set_num_threads(os.cpu_count())
        t0 = resource.getrusage(resource.RUSAGE_SELF)
        result = measure(*args.measure, args.device)
        t1 = resource.getrusage(resource.RUSAGE_SELF)
        result["cpu_seconds"] = t1.ru_utime + t1.ru_stime - t0.ru_utime - t0.ru_stime
        print(json.dumps(result))
        return
    import torch
    import throughput
    peak = args.peak_flops or throughput.peak_flops_per_device(torch.device(args.device), torch.float32)[0] \
        or float("nan")
    print(f"torch {torch.__version__}, device {args.device}, {os.cpu_count()} CPUs, {args.reps} runs each, "
          f"MFU against {peak / 1e9:,.0f} GFLOP/s")
    print(f"{'case':<18} {'impl':<10} {'median s':>9} {'tokens/s':>10} {'MFU':>6} {'peak MiB':>9} "
          f"{'others CPU s':>13}")
    for case in args.cases.split(","):
        runs = {"ours": [], "reference": []}
        for _ in range(args.reps):
            for impl in runs:
                runs[impl].append(run_isolated(case, impl, args.device))
        med = {}
        for impl, results in runs.items():
            s = statistics.median(r["seconds"] for r in results)
            mem = statistics.median(r["peak_bytes"] for r in results) / 2**20
            others = max(r["others_cpu_s"] for r in results)
            med[impl] = (s, mem)
            print(f"{case:<18} {impl:<10} {s:>9.3f} {results[0]['tokens'] / s:>10,.0f} "
                  f"{100 * results[0]['flops'] / s / peak:>5.1f}% {mem:>9,.0f} {others:>13.1f}")
        print(f"{case:<18} {'ratio':<10} {med['reference'][0] / med['ours'][0]:>8.2f}x faster, "
              f"{med['reference'][1] / med['ours'][1]:.2f}x less peak memory")


def _cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    if sys.argv[1:2] == ["gpu"]:  # the one-shot GPU check: gpucheck.py
        import gpucheck
        gpucheck.gpu_check(sys.argv[2:])
    elif sys.argv[1:2] == ["memory"]:  # per-GPU memory of a config's training step, before launch: memory.py
        import memory
        memory.main(sys.argv[2:])
    elif sys.argv[1:2] == ["extend"]:  # a real model's context extended on one GPU: extend.py
        import extend
        extend.main(sys.argv[2:])
    elif sys.argv[1:2] == ["balance"]:  # paper ordering against balanced steps for a config's mixture: balance.py
        import balance
        balance.main(sys.argv[2:])
    else:
        main()
