"""
Benchmarks: our code side by side with a reference, in one run. `python bench.py [--reps 5] [--device cpu|cuda]`

Cases (forward + backward each):
  attention-16docs  a pack of 16 documents of 512 tokens: attention.py (one causal SDPA call per document) against
                    one SDPA call with a block-diagonal causal mask (what packing without varlen kernels costs)
  attention-1doc    one document of 8192 tokens: the same two, to show the per-document path costs nothing extra
  train-step        a 4-layer model (hidden 256, real 128,256 vocabulary) on 4 documents of 1024 tokens: model.py
                    (packed, chunked loss) against Hugging Face transformers' LlamaForCausalLM with the same weights
                    (the 4 documents as a batch, full logits)

Every measurement runs in a fresh process, so its peak memory (max RSS on CPU, max allocated on CUDA) is its own;
ours and the reference alternate, `--reps` times each. Figures are medians, and ratios are reference / ours. This
machine is shared: the CPU seconds that *other* processes used during each run (from /proc/stat) are printed, so a
disturbed run can be seen and discarded.

`python bench.py gpu [--cpu-smoke]` (`make gpu-check`): the one-shot check of everything that needs a GPU, in one
table and under 5 minutes on one H100/H200: every attention backend against a float64 reference (forward and
backward, bf16 and fp32, median time) on a pack of documents and on one 64K document; an inductor-compiled
transformer block on three packings, with graph breaks and recompiles counted; one FSDP2 training step of the
Llama-3.2-1B shape on a 64K pack (loss, tokens/s, MFU, peak memory); the flex BlockMask's memory at 64K and 512K.
Without CUDA (or with --cpu-smoke) every section runs at toy size on the CPU backends, so the script cannot rot.
A section that fails prints its error in its row and the next one runs.
"""
import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import traceback
import warnings
import weakref

CASES = ("attention-16docs", "attention-1doc", "train-step")


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
        from model import Llama, LlamaConfig
        config = LlamaConfig.tiny(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=688)
        B, L = 4, 1024
        ids = torch.randint(0, config.vocab_size, (B, L), device=dev)
        labels = torch.cat([ids[:, 1:], torch.full((B, 1), -100, device=dev)], dim=1)
        ours = Llama(config).to(dev)
        if impl == "ours":
            cu = torch.arange(0, B * L + 1, L, dtype=torch.int32, device=dev)
            step = lambda: ours(ids.reshape(-1), cu_seqlens=cu, labels=labels.reshape(-1))[0].backward()  # noqa
        else:
            import transformers
            hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_hf_dict())).to(dev)
            hf.load_state_dict(ours.state_dict(), strict=False)
            del ours
            loss_sum = lambda: torch.nn.functional.cross_entropy(  # noqa: E731
                hf(ids, use_cache=False).logits.flatten(0, 1).float(), labels.reshape(-1), reduction="sum")
            step = lambda: loss_sum().backward()  # noqa: E731
        c = config
        matmul_params = c.num_hidden_layers * (c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 *
                                               c.num_key_value_heads) + 3 * c.hidden_size * c.intermediate_size) \
            + c.vocab_size * c.hidden_size
        flops = 6 * matmul_params * B * L + 6 * c.head_dim * c.num_attention_heads * c.num_hidden_layers * B * L * L
        tokens = B * L
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
    peak = args.peak_flops or peak_flops(torch.device(args.device), torch.float32)[0] or float("nan")
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


def peak_flops(device, dtype):
    """(peak FLOP/s or None, where it comes from) from train.py's table (older train.py returned a bare number)."""
    import train
    peak = train.peak_flops_per_device(device, dtype)
    return peak if isinstance(peak, tuple) else (peak, "train.py's table")


def _cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


# ----------------------------------------------------------------------------------------------------------------
# memory of tensors created on the CPU (no allocator statistics there)


class TensorMemory:
    """Within a `with` block: the peak bytes of live tensor storages created inside it, and the largest one.
    Counts storages (a view is free), forgets each when it is really freed (a weakref on the storage, whose Python
    object lives exactly as long as the storage), and ignores in-place results on storages made before."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._record(out)
                return out

        self.live = self.peak = self.largest = 0
        self._ids = set()
        self._mode = _Mode()

    def _record(self, out):
        import torch
        from torch.utils._pytree import tree_flatten
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            if id(storage) in self._ids:
                continue
            size = storage.nbytes()
            self._ids.add(id(storage))
            self.live += size
            self.peak, self.largest = max(self.peak, self.live), max(self.largest, size)
            weakref.finalize(storage, self._free, id(storage), size)

    def _free(self, key, size):
        self._ids.discard(key)
        self.live -= size

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


# ----------------------------------------------------------------------------------------------------------------
# the one-shot GPU check


def gpu_check(argv):
    ap = argparse.ArgumentParser(prog="bench.py gpu", description="the one-shot GPU check (see the module docstring)")
    ap.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU (automatic without CUDA)")
    ap.add_argument("--budget", type=float, default=280.0, help="seconds; later sections are skipped past it")
    args = ap.parse_args(argv)
    import torch
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        torch.set_num_threads(os.cpu_count())
    check = GpuCheck(device, smoke, time.perf_counter() + args.budget)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores), smoke sizes"
    print(f"bench.py gpu: torch {torch.__version__}, {name}" + (f", CUDA {torch.version.cuda}" if not smoke else ""))
    check.row("section", "case", "backend", "dtype", "result")
    # the compiled block last: its compile time varies most, and the budget skips what no longer fits
    sections = (("attention", check.attention), ("train", check.train_step), ("mask", check.mask_memory),
                ("compile", check.compiled_block))
    for name, section in sections:
        t0 = time.perf_counter()
        try:
            section()
        except Exception as e:  # one broken section must not hide the others
            check.row(name, "-", "-", "-", f"FAILED {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
            traceback.print_exc(limit=3, file=sys.stdout)
        check.row(name, "section time", "-", "-", f"{time.perf_counter() - t0:.1f} s")
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


class GpuCheck:
    def __init__(self, device, smoke, deadline):
        import torch
        self.torch, self.device, self.smoke, self.deadline = torch, device, smoke, deadline
        # dtypes tried: the training dtype and fp32 on the GPU; fp32 and fp64 on the CPU
        self.dtypes = (torch.float32, torch.float64) if smoke else (torch.bfloat16, torch.float32)

    def row(self, section, case, backend, dtype, result):
        """One line of the table; fixed columns (tests/test_bench.py reads them by position)."""
        dtype = str(dtype).replace("torch.", "")
        print(f"{section:<10.10} {case:<26.26} {backend:<8.8} {dtype:<8.8} {result}", flush=True)

    def left(self):
        return self.deadline - time.perf_counter()

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def timed(self, fn, reps):
        fn()  # warm-up (and compilation)
        times = []
        for _ in range(reps):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    # ------------------------------------------------------------------------------------------------------------
    def attention(self):
        """Every backend against a float64 reference, forward and backward, on a pack and on one long document."""
        torch = self.torch
        import attention
        H, KV, D = (4, 2, 32) if self.smoke else (8, 2, 128)
        pack_total, single = (512, 1024) if self.smoke else (32768, 65536)
        lengths = [1, 7, 127, 128, 129] + ([] if self.smoke else [1000, 4096, 8191])
        lengths.append(pack_total - sum(lengths))
        cases = [(f"pack {pack_total}", lengths), (f"1 doc {single}", [single])]
        for case, lens in cases:
            if self.left() < 60:
                self.row("attention", case, "-", "-", "skipped (time budget)")
                continue
            T = sum(lens)
            cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)  # host: no sync
            bounds = list(zip(cu[:-1].tolist(), cu[1:].tolist()))
            g = torch.Generator(device="cpu").manual_seed(0)
            # bf16-representable values, so that every dtype sees the same inputs and one reference serves all
            q, k, v, dout = (torch.randn(T, h, D, generator=g).bfloat16().double().to(self.device)
                             for h in (H, KV, KV, H))
            t0 = time.perf_counter()
            ref = reference_attention(q, k, v, dout, bounds)
            self.sync()
            self.row("attention", case, "fp64ref", "float64", f"reference in {time.perf_counter() - t0:.1f} s")
            for backend in attention.BACKENDS:
                reason = attention.unavailable(backend, self.device)
                for dtype in self.dtypes:
                    if reason is not None:
                        self.row("attention", case, backend, dtype, f"n/a ({reason})")
                        continue
                    if backend in ("fa3", "flash", "varlen") and dtype not in (torch.bfloat16, torch.float16):
                        self.row("attention", case, backend, dtype, "n/a (half precision only)")
                        continue
                    try:
                        self.row("attention", case, backend, dtype,
                                 self._one_backend(backend, dtype, q, k, v, dout, cu, ref))
                    except Exception as e:
                        self.row("attention", case, backend, dtype,
                                 f"FAILED {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        self._cached_attention()

    def _one_backend(self, backend, dtype, q, k, v, dout, cu, ref):
        torch = self.torch
        import attention
        T = q.shape[0]
        docs = attention.prepare(cu, T, self.device, backend=backend)
        backward = not (backend == "flex" and self.device.type == "cpu")  # flex has no CPU backward
        qx, kx, vx = (x.detach().to(dtype).requires_grad_(backward) for x in (q, k, v))
        g = dout.to(dtype)

        def step():
            for x in (qx, kx, vx):
                x.grad = None
            out = attention.attend(qx, kx, vx, docs)
            if backward:
                out.backward(g)
            return out

        with torch.no_grad() if not backward else contextlib.nullcontext(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flex on CPU: "called without torch.compile", intended
            out = step()
            errors = [(out.double() - ref[0]).abs().max().item()]
            if backward:
                errors += [(x.grad.double() - r).abs().max().item() for x, r in zip((qx, kx, vx), ref[1:])]
            ms = self.timed(step, reps=1 if self.smoke else 5)
        names = ("out", "dq", "dk", "dv")
        err = " ".join(f"{n} {e:.1e}" for n, e in zip(names, errors))
        what = "fwd+bwd" if backward else "fwd only (no flex backward on CPU)"
        return f"max|err| {err}; {what} {ms:.2f} ms"

    def _cached_attention(self):
        """Generation's bottom-right causal alignment with the kernel this device uses, against the c x L mask."""
        torch = self.torch
        import attention
        c, L = 5, 1000
        dtype = torch.float64 if self.smoke else torch.bfloat16
        g = torch.Generator(device="cpu").manual_seed(1)
        q, k, v = (torch.randn(n, h, 64, generator=g).to(dtype).to(self.device) for n, h in ((c, 8), (L, 2), (L, 2)))
        mask = torch.ones(c, L, dtype=torch.bool, device=self.device).tril(diagonal=L - c)
        qb, kb, vb = (x.double().transpose(0, 1)[None] for x in (q, k, v))
        ref = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, enable_gqa=True)
        with torch.no_grad():
            out = attention.attend_cached(q, k, v)
        err = (out.double() - ref[0].transpose(0, 1)).abs().max().item()
        self.row("attention", f"cached c={c} L={L}", "auto", dtype, f"max|err| out {err:.1e} vs c x L mask")

    # ------------------------------------------------------------------------------------------------------------
    def compiled_block(self):
        """Two compiled transformer blocks (train.py's per-block compile) on three packings: graphs, breaks."""
        torch = self.torch
        import attention
        from torch._dynamo.utils import counters
        from model import Llama, LlamaConfig
        if self.left() < 90:
            return self.row("compile", "-", "-", "-", "skipped (time budget)")
        torch._dynamo.reset()
        if self.smoke:
            config, dtype, sizes, compile_backend = LlamaConfig.tiny(), torch.float32, (128, 128, 192), "aot_eager"
        else:
            config = LlamaConfig.llama3_2_1b(num_hidden_layers=2)
            dtype, sizes, compile_backend = torch.bfloat16, (8192, 8192, 12288), "inductor"
        torch.manual_seed(0)
        model = Llama(config).to(device=self.device, dtype=dtype)
        backend = attention.default_backend(self.device)
        model.attention_backend = backend
        for block in model.model.layers:
            block.compile(backend=compile_backend)
        packings = [[sizes[0]], [sizes[1] // 8, sizes[1] // 2, sizes[1] - sizes[1] // 8 - sizes[1] // 2],
                    [sizes[2] // 3, sizes[2] - sizes[2] // 3]]
        for lens in packings:
            T = sum(lens)
            cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
            ids = torch.randint(0, config.vocab_size, (T,), device=self.device)
            before = (counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()))
            t0 = time.perf_counter()
            loss, n = model(ids, cu_seqlens=cu, labels=ids)
            loss.backward()
            self.sync()
            graphs = counters["stats"]["unique_graphs"] - before[0]
            breaks = sum(counters["graph_break"].values()) - before[1]
            self.row("compile", f"{len(lens)} docs, T={T}", backend, dtype,
                     f"{graphs} graphs compiled, {breaks} graph breaks, fwd+bwd {time.perf_counter() - t0:.1f} s "
                     f"(loss {loss.item() / n.item():.3f})")
        reasons = sorted(set(r.splitlines()[0] for r in counters["graph_break"]))
        for r in reasons[:5]:
            self.row("compile", "graph break reason", "-", "-", r[:160])

    # ------------------------------------------------------------------------------------------------------------
    def train_step(self):
        """One FSDP2 step of the Llama-3.2-1B shape on a 64K pack: bf16 compute, activation checkpointing, the
        fastest attention backend, a world of one process, through train.py's own functions."""
        torch = self.torch
        from types import SimpleNamespace

        import attention
        import train
        from torch.distributed.device_mesh import init_device_mesh
        if self.left() < 60:
            return self.row("train", "-", "-", "-", "skipped (time budget)")
        import torch.distributed as dist
        if not dist.is_initialized():
            train.init_distributed()
        backend = attention.default_backend(self.device)
        if self.smoke:
            overrides, T, dtype = dict(model="tiny", compute_dtype="float32"), 512, torch.float32
        else:
            overrides, T, dtype = dict(model="llama3_2_1b", compute_dtype="bfloat16"), 65536, torch.bfloat16
        cfg = dict(train.DEFAULTS, attention_backend=backend, activation_checkpointing=True, compile=False,
                   **overrides)
        mesh = init_device_mesh(self.device.type, (1,), mesh_dim_names=("fsdp",))
        t0 = time.perf_counter()
        model = train.build_model(cfg, mesh, self.device, log=lambda msg: None)
        optimizer = train.build_optimizer(model, cfg)
        self.row("train", "build", backend, dtype, f"model and optimizer in {time.perf_counter() - t0:.1f} s")
        g = torch.Generator().manual_seed(0)
        lens = [T // 2, T // 4, T // 8, T - T // 2 - T // 4 - T // 8]
        ids = torch.randint(0, model.config.vocab_size, (T,), generator=g)
        labels = torch.cat([ids[1:], torch.tensor([-100])])
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
        batch = SimpleNamespace(input_ids=ids, labels=labels, cu_seqlens=cu)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(2 if self.smoke else 3):
            self.sync()
            t0 = time.perf_counter()
            loss, grad_norm = train.train_step(model, optimizer, [batch], self.device, cfg["grad_clip"])
            self.sync()
            times.append(time.perf_counter() - t0)
            if step == 0:
                self.row("train", f"step 1 (warm-up), T={T}", backend, dtype,
                         f"loss {loss:.4f} (ln V = {math.log(model.config.vocab_size):.4f}), grad norm "
                         f"{grad_norm:.3f}, {times[0]:.2f} s")
        dt = statistics.median(times[1:])
        flops = train.step_flops(model.config, [cu])
        peak, source = peak_flops(self.device, dtype)
        mfu = (f"MFU {100 * flops / dt / peak:.1f}% of {peak / 1e12:g} TFLOP/s ({source})" if peak
               else f"MFU n/a ({source})")
        self.row("train", f"steady step, T={T}", backend, dtype,
                 f"loss {loss:.4f}, {T / dt:,.0f} tokens/s, {mfu}, peak memory "
                 f"{train.peak_memory_gib(self.device):.2f} GiB, {dt:.2f} s")
        del model, optimizer

    # ------------------------------------------------------------------------------------------------------------
    def mask_memory(self):
        """The flex BlockMask built from cu_seqlens: bytes held and peak while building, 64K and 512K."""
        torch = self.torch
        import attention
        for T, n_docs in ((65536, 8), (524288, 64)):
            cu = torch.arange(0, T + 1, T // n_docs, dtype=torch.int32)
            t0 = time.perf_counter()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                bm = attention.document_block_mask(cu, T, self.device)
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - base
            else:
                with TensorMemory() as mem:
                    bm = attention.document_block_mask(cu, T, self.device)
                peak = mem.peak
            held = attention.block_mask_bytes(bm)
            self.row("mask", f"{n_docs} docs, T={T}", "flex", "int32",
                     f"held {held / 2**20:.1f} MiB, peak while building {peak / 2**20:.1f} MiB, "
                     f"{time.perf_counter() - t0:.2f} s (a T x T bool mask: {T * T / 2**30:,.0f} GiB)")
            del bm


def reference_attention(q, k, v, dout, bounds, budget=2**28):
    """float64 out, dq, dk, dv of document-causal attention written out with explicit formulas, per document and
    per chunk of queries so that no (heads x chunk x keys) tensor exceeds `budget` elements (a 64K document on a
    GPU never holds its 64K x 64K score matrix at once). Backward: dS = P * (dP - rowsum(dO * O))."""
    import torch
    q, k, v, dout = (x.double() for x in (q, k, v, dout))
    T, H, D = q.shape
    group = H // k.shape[1]
    scale = D ** -0.5
    out, dq = torch.zeros_like(q), torch.zeros_like(q)
    dk_h, dv_h = torch.zeros_like(q), torch.zeros_like(q)  # per query head, summed over each group at the end
    for s, e in bounds:
        kd, vd = (x[s:e].repeat_interleave(group, dim=1) for x in (k, v))
        chunk = max(1, min(e - s, budget // (H * (e - s))))
        for c0 in range(s, e, chunk):
            c1 = min(c0 + chunk, e)
            n = c1 - s  # keys this chunk can see
            qc, gc = q[c0:c1], dout[c0:c1]
            scores = torch.einsum("chd,khd->hck", qc, kd[:n]) * scale
            rows = torch.arange(c0 - s, c1 - s, device=q.device)
            allowed = torch.arange(n, device=q.device)[None, :] <= rows[:, None]
            p = scores.masked_fill_(~allowed, float("-inf")).softmax(-1)
            o = torch.einsum("hck,khd->chd", p, vd[:n])
            out[c0:c1] = o
            dp = torch.einsum("chd,khd->hck", gc, vd[:n])
            ds = p * (dp - (gc * o).sum(-1).transpose(0, 1)[:, :, None])
            dq[c0:c1] = torch.einsum("hck,khd->chd", ds, kd[:n]) * scale
            dk_h[s:s + n] += torch.einsum("hck,chd->khd", ds, qc) * scale
            dv_h[s:s + n] += torch.einsum("hck,chd->khd", p, gc)
            del scores, p, dp, ds
    dk, dv = (x.view(T, -1, group, D).sum(2) for x in (dk_h, dv_h))
    return out, dq, dk, dv


if __name__ == "__main__":
    if sys.argv[1:2] == ["gpu"]:
        gpu_check(sys.argv[2:])
    else:
        main()
