"""
The one-shot GPU check, `python bench.py gpu [--cpu-smoke] [--budget 280]` (`make gpu-check`): everything that
needs a GPU, in one table and under 5 minutes on one H100/H200, with an exit status a script can trust.

Sections, in this order: attention in the training dtype (every backend against a float64 reference, forward
and backward, median time, on a pack of documents and on one 64K document, plus generation's cached
attention); an inductor-compiled transformer block on three packings (graphs and breaks counted); one FSDP2
training step of the Llama-3.2-1B shape on a 64K pack (loss, tokens/s, MFU, peak memory); the flex BlockMask's
memory at 64K and 512K; then the fp32 attention rows, last because fp32 flex on one 64K document is the
slowest thing here and must not eat the compile's time.

The one idea: each section runs in a child process with its own share of the time budget, and the parent kills
it (its whole process group, compile workers included) when that share is spent. A budget that only decided
whether a section *starts* let one slow row run the check to 6-7 minutes. Inside a section rows are skipped,
not started, when its share is nearly spent, and timings take fewer repetitions when one call is slow.

Exit status: 0 when every row passed; 1 when a row FAILED (an exception, or an error above TOLERANCE, or a
loss that is not finite or far from ln V for a fresh model); 3 when nothing failed but something was skipped
or stopped for time (the check is incomplete); 2 without CUDA unless --cpu-smoke (then every section runs at
toy size on the CPU backends, so that the script cannot rot before a GPU sees it).
"""
import argparse
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
import warnings

from common import fail

# max |ours - float64 reference| / max |reference|, per tensor (out, dq, dk, dv), by the dtype computed in.
# bf16 keeps 8 mantissa bits (rounding alone is 2^-9 relative) and the kernels accumulate in fp32; fp32 allows
# TF32.
TOLERANCE = {"float64": 1e-10, "float32": 2e-3, "float16": 1e-2, "bfloat16": 5e-2}
# each section's share of the budget, by weight; time a section leaves unused passes to the later ones
SECTIONS = (("attention", 3), ("compile", 3), ("train", 2), ("mask", 1), ("attn-fp32", 3))
MIN_SHARE_S = 10  # a section offered less is skipped (reported, exit 3) rather than started to be killed
PASSED, FAILED, INCOMPLETE, NO_CUDA = 0, 1, 3, 2


def gpu_check(argv):
    ap = argparse.ArgumentParser(prog="bench.py gpu", description="the one-shot GPU check (see gpucheck.py)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="toy sizes on the CPU (without it, no CUDA is an error)")
    ap.add_argument("--budget", type=float, default=280.0, help="seconds for all sections together (default 280)")
    ap.add_argument("--section", help=argparse.SUPPRESS)  # the child's side: run one section
    ap.add_argument("--seconds", type=float, default=None, help=argparse.SUPPRESS)  # the child's share
    args = ap.parse_args(argv)
    import torch
    if not args.cpu_smoke and not torch.cuda.is_available():
        fail(f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}): the GPU check "
             f"needs one; `python bench.py gpu --cpu-smoke` runs it at toy size on the CPU", NO_CUDA)
    if args.section:
        sys.exit(run_section(args.section, args.cpu_smoke, args.seconds))
    device = "CPU" if args.cpu_smoke else torch.cuda.get_device_name()
    print(f"bench.py gpu: torch {torch.__version__}, {device}" +
          (f" ({os.cpu_count()} cores), smoke sizes" if args.cpu_smoke else f", CUDA {torch.version.cuda}") +
          f", budget {args.budget:g} s", flush=True)
    row("section", "case", "backend", "dtype", "result")
    here = os.path.abspath(__file__)
    def command(name, share):
        smoke = ["--cpu-smoke"] if args.cpu_smoke else []
        return [sys.executable, here, "--section", name, "--seconds", f"{share:.1f}"] + smoke
    sys.exit(run_sections(SECTIONS, args.budget, command))


def run_sections(sections, budget, command):
    """Run each (name, weight) section as `command(name, share)` in its own process group, killed when its
    share of what is left of `budget` is spent. Returns the exit status of the whole check (see the module
    docstring)."""
    deadline = time.perf_counter() + budget
    statuses = {}
    for i, (name, weight) in enumerate(sections):
        left = deadline - time.perf_counter()
        share = left * weight / sum(w for _, w in sections[i:])
        if share < MIN_SHARE_S:
            row(name, "-", "-", "-", f"skipped (time budget: {max(left, 0):.0f} s left of {budget:g})")
            statuses[name] = INCOMPLETE
            continue
        t0 = time.perf_counter()
        proc = subprocess.Popen(command(name, share), start_new_session=True)  # its own group, to kill it whole
        try:
            code = proc.wait(timeout=share)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            row(name, "-", "-", "-", f"stopped (time budget: its share of {share:.0f} s is spent)")
            code = INCOMPLETE
        if code not in (PASSED, FAILED, INCOMPLETE):
            row(name, "-", "-", "-", f"FAILED: the section's process died with status {code}")
            code = FAILED
        statuses[name] = code
        row(name, "section time", "-", "-", f"{time.perf_counter() - t0:.1f} s")
    failed = [n for n, c in statuses.items() if c == FAILED]
    incomplete = [n for n, c in statuses.items() if c == INCOMPLETE]
    verdict = (f"FAILED in {', '.join(failed)}" if failed else
               f"INCOMPLETE ({', '.join(incomplete)} skipped or stopped for time)" if incomplete else "passed")
    print(f"gpu check: {verdict}", flush=True)
    return FAILED if failed else INCOMPLETE if incomplete else PASSED


def row(section, case, backend, dtype, result):
    """One line of the table; fixed columns (tests/test_bench.py reads them by position)."""
    dtype = str(dtype).replace("torch.", "")
    print(f"{section:<10.10} {case:<26.26} {backend:<8.8} {dtype:<8.8} {result}", flush=True)


def run_section(name, smoke, seconds):
    """The child's side: one section; returns its exit status."""
    import torch
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        torch.set_num_threads(os.cpu_count())
    check = GpuCheck(device, smoke, time.perf_counter() + (seconds or 1e9))
    section = {"attention": lambda: check.attention(0), "attn-fp32": lambda: check.attention(1),
               "compile": check.compiled_block, "train": check.train_step, "mask": check.mask_memory}[name]
    shown = "attention" if name.startswith("attention") else name
    try:
        section()
    except Exception as e:  # the row says what broke; the parent goes on with the next section
        check.failed(shown, "-", "-", "-", f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
        traceback.print_exc(limit=3, file=sys.stdout)
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
    return FAILED if check.status == FAILED else check.status


def relative_errors(ours, refs):
    """max |ours - ref| / max |ref| for each pair (float64)."""
    return [((o.double() - r).abs().max() / r.abs().max().clamp(min=1e-300)).item() for o, r in zip(ours, refs)]


def judge(errors, dtype, names=("out", "dq", "dk", "dv")):
    """(passed, text) of relative errors against TOLERANCE for `dtype`."""
    tol = TOLERANCE[str(dtype).replace("torch.", "")]
    text = " ".join(f"{n} {e:.1e}" for n, e in zip(names, errors))
    bad = [n for n, e in zip(names, errors) if not e <= tol]  # NaN fails too
    verdict = f" above tolerance {tol:g} ({', '.join(bad)})" if bad else f" <= {tol:g}"
    return not bad, f"rel err {text}{verdict}"


class GpuCheck:
    def __init__(self, device, smoke, deadline):
        import torch
        self.torch, self.device, self.smoke, self.deadline = torch, device, smoke, deadline
        self.status = PASSED
        # dtypes tried: the training dtype and fp32 on the GPU; fp32 and fp64 on the CPU
        self.dtypes = (torch.float32, torch.float64) if smoke else (torch.bfloat16, torch.float32)

    row = staticmethod(row)

    def failed(self, *columns):
        *head, result = columns
        self.status = FAILED
        row(*head, f"FAILED {result}")

    def skipped(self, *columns):
        if self.status == PASSED:
            self.status = INCOMPLETE
        row(*columns, "skipped (time budget)")

    def left(self):
        return self.deadline - time.perf_counter()

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def timed(self, fn, first_s):
        """Median ms of a few calls of `fn` (already warmed up: its first call took `first_s`): five when a
        call is quick, fewer when it is slow, none past what the section has left (then the first call's
        time)."""
        reps = max(0, min(5, int(min(2.0, self.left() / 4) / max(first_s, 1e-6))))
        times = [first_s]
        for _ in range(reps):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times[1:] or times)

    # --------------------------------------------------------------------------------------------------------
    def attention(self, which):
        """Every backend against a float64 reference, forward and backward, on a pack and on one long
        document, in self.dtypes[which]."""
        torch = self.torch
        import attention
        dtype = self.dtypes[which]
        H, KV, D = (4, 2, 32) if self.smoke else (8, 2, 128)
        pack_total, single = (512, 1024) if self.smoke else (32768, 65536)
        lengths = [1, 7, 127, 128, 129] + ([] if self.smoke else [1000, 4096, 8191])
        lengths.append(pack_total - sum(lengths))
        margin = 1 if self.smoke else 15  # seconds a row needs at least, to be started
        for case, lens in [(f"pack {pack_total}", lengths), (f"1 doc {single}", [single])]:
            if self.left() < 3 * margin:
                self.skipped("attention", case, "-", dtype)
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
            row("attention", case, "fp64ref", "float64", f"reference in {time.perf_counter() - t0:.1f} s")
            for backend in attention.BACKENDS:
                reason = attention.unavailable(backend, self.device)
                if reason is not None:
                    row("attention", case, backend, dtype, f"n/a ({reason})")
                elif backend in ("fa3", "flash", "varlen") and dtype not in (torch.bfloat16, torch.float16):
                    row("attention", case, backend, dtype, "n/a (half precision only)")
                elif self.left() < margin:
                    self.skipped("attention", case, backend, dtype)
                else:
                    try:
                        ok, text = self._one_backend(backend, dtype, q, k, v, dout, cu, ref)
                        (row if ok else self.failed)("attention", case, backend, dtype, text)
                    except Exception as e:
                        self.failed("attention", case, backend, dtype,
                                    f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}")
            del q, k, v, dout, ref
        if which == 0:
            self._cached_attention()

    def _one_backend(self, backend, dtype, q, k, v, dout, cu, ref):
        torch = self.torch
        import attention
        T = q.shape[0]
        attention.activate(self.device, backend)  # routes aten's flash kernels: FA3 for fa3, FA2 for varlen
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
            step()  # compiles where it compiles (flex on CUDA); not timed
            self.sync()
            t0 = time.perf_counter()
            out = step()
            self.sync()
            first = time.perf_counter() - t0
            ours = [out] + ([x.grad for x in (qx, kx, vx)] if backward else [])
            ok, text = judge(relative_errors(ours, ref), dtype)
            ms = self.timed(step, first)
        what = "fwd+bwd" if backward else "fwd only (no flex backward on CPU)"
        return ok, f"{text}; {what} {ms:.2f} ms"

    def _cached_attention(self):
        """Generation's bottom-right causal alignment with the kernel this device uses, against the c x L
        mask."""
        torch = self.torch
        import attention
        c, L = 5, 1000
        dtype = self.dtypes[0]
        g = torch.Generator(device="cpu").manual_seed(1)
        q, k, v = (torch.randn(n, h, 64, generator=g).to(dtype).to(self.device)
                   for n, h in ((c, 8), (L, 2), (L, 2)))
        mask = torch.ones(c, L, dtype=torch.bool, device=self.device).tril(diagonal=L - c)
        qb, kb, vb = (x.double().transpose(0, 1)[None] for x in (q, k, v))
        ref = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, enable_gqa=True)
        with torch.no_grad():
            out = attention.attend_cached(q, k, v)
        ok, text = judge(relative_errors([out], [ref[0].transpose(0, 1)]), dtype, names=("out",))
        (row if ok else self.failed)("attention", f"cached c={c} L={L}", "auto", dtype, f"{text} vs c x L mask")

    # --------------------------------------------------------------------------------------------------------
    def compiled_block(self):
        """Two compiled transformer blocks (train.py's per-block compile) on three packings: graphs,
        breaks."""
        torch = self.torch
        import attention
        from torch._dynamo.utils import counters
        from model import Llama, LlamaConfig
        torch._dynamo.reset()
        if self.smoke:
            config, dtype = LlamaConfig.tiny(), torch.float32
            sizes, compile_backend = (128, 128, 192), "aot_eager"
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
            case = f"{len(lens)} docs, T={T}"
            if self.left() < (1 if self.smoke else 10):
                self.skipped("compile", case, backend, dtype)
                continue
            cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
            ids = torch.randint(0, config.vocab_size, (T,), device=self.device)
            before = (counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()))
            t0 = time.perf_counter()
            loss, n = model(ids, cu_seqlens=cu, labels=ids)
            loss.backward()
            self.sync()
            graphs = counters["stats"]["unique_graphs"] - before[0]
            breaks = sum(counters["graph_break"].values()) - before[1]
            mean = loss.item() / n.item()
            (row if math.isfinite(mean) else self.failed)(
                "compile", case, backend, dtype, f"{graphs} graphs compiled, {breaks} graph breaks, fwd+bwd "
                f"{time.perf_counter() - t0:.1f} s (loss {mean:.3f})")
        reasons = sorted(set(r.splitlines()[0] for r in counters["graph_break"]))
        for r in reasons[:5]:
            row("compile", "graph break reason", "-", "-", r[:160])

    # --------------------------------------------------------------------------------------------------------
    def train_step(self):
        """One FSDP2 step of the Llama-3.2-1B shape on a 64K pack: bf16 compute, activation checkpointing, the
        fastest attention backend, a world of one process, through train.py's own functions."""
        torch = self.torch
        from types import SimpleNamespace

        import attention
        import parallel
        import settings
        import throughput
        import train
        from throughput import peak_flops_per_device
        from torch.distributed.device_mesh import init_device_mesh
        import torch.distributed as dist
        if not dist.is_initialized():
            parallel.init_distributed()
        backend = attention.default_backend(self.device)
        if self.smoke:
            overrides, T, dtype = dict(model="tiny", compute_dtype="float32"), 512, torch.float32
        else:
            overrides, T, dtype = dict(model="llama3_2_1b", compute_dtype="bfloat16"), 65536, torch.bfloat16
        cfg = dict(settings.DEFAULTS, attention_backend=backend, activation_checkpointing=True, compile=False,
                   **overrides)
        mesh = init_device_mesh(self.device.type, (1,), mesh_dim_names=("fsdp",))
        t0 = time.perf_counter()
        model = parallel.build_model(cfg, mesh, self.device, log=lambda msg: None)
        optimizer = train.build_optimizer(model, cfg)
        row("train", "build", backend, dtype, f"model and optimizer in {time.perf_counter() - t0:.1f} s")
        g = torch.Generator().manual_seed(0)
        lens = [T // 2, T // 4, T // 8, T - T // 2 - T // 4 - T // 8]
        ids = torch.randint(0, model.config.vocab_size, (T,), generator=g)
        labels = torch.cat([ids[1:], torch.tensor([-100])])
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
        batch = SimpleNamespace(input_ids=ids, labels=labels, cu_seqlens=cu)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ln_v = math.log(model.config.vocab_size)
        times = []
        for step in range(2 if self.smoke else 3):
            if step and self.left() < times[0] * 1.5:
                self.skipped("train", f"step {step + 1}, T={T}", backend, dtype)
                break
            self.sync()
            t0 = time.perf_counter()
            loss, grad_norm = train.train_step(model, optimizer, [batch], self.device, cfg["grad_clip"])
            self.sync()
            times.append(time.perf_counter() - t0)
            # a fresh model predicts nearly uniformly: a loss far from ln V means a broken step
            ok = math.isfinite(loss) and math.isfinite(grad_norm) and abs(loss - ln_v) < 1.0
            text = f"loss {loss:.4f} (ln V = {ln_v:.4f}, within 1 nat), grad norm {grad_norm:.3f}"
            if step == 0:
                (row if ok else self.failed)("train", f"step 1 (warm-up), T={T}", backend, dtype,
                                             f"{text}, {times[0]:.2f} s")
            elif not ok:
                self.failed("train", f"step {step + 1}, T={T}", backend, dtype, text)
        if len(times) < 2:
            return
        dt = statistics.median(times[1:])
        flops = throughput.step_flops(model.config, [cu])
        peak, source = peak_flops_per_device(self.device, dtype)
        mfu = (f"MFU {100 * flops / dt / peak:.1f}% of {peak / 1e12:g} TFLOP/s ({source})" if peak
               else f"MFU n/a ({source})")
        row("train", f"steady step, T={T}", backend, dtype,
            f"loss {loss:.4f}, {T / dt:,.0f} tokens/s, {mfu}, peak memory "
            f"{throughput.peak_memory_gib(self.device):.2f} GiB, {dt:.2f} s")
        self._memory_estimate(dict(cfg, seq_len=T), throughput.peak_memory_gib(self.device))
        del model, optimizer

    def _memory_estimate(self, cfg, measured_gib):
        """bench.py memory's estimate of this very step against the allocator's peak: an estimate below what
        the GPU really allocated by more than 15% is a failure (the launch-time check would let an OOM through)."""
        import memory
        rows, _ = memory.estimate(cfg, 1)
        est = memory.peak_bytes(rows) / memory.GiB
        if self.smoke:  # the CPU has no allocator peak to compare with (max RSS counts the whole process)
            return row("train", "memory estimate", "meta", cfg["compute_dtype"], f"{est:.2f} GiB estimated")
        ok = measured_gib <= 1.15 * est
        (row if ok else self.failed)("train", "memory estimate", "meta", cfg["compute_dtype"],
                                     f"{est:.2f} GiB estimated, {measured_gib:.2f} GiB allocated at peak "
                                     f"({measured_gib / est:.2f}x)")

    # --------------------------------------------------------------------------------------------------------
    def mask_memory(self):
        """The flex BlockMask built from cu_seqlens: bytes held and peak while building, 64K and 512K."""
        torch = self.torch
        import attention
        from memory import TensorMemory
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
            row("mask", f"{n_docs} docs, T={T}", "flex", "int32",
                f"held {held / 2**20:.1f} MiB, peak while building {peak / 2**20:.1f} MiB, "
                f"{time.perf_counter() - t0:.2f} s (a T x T bool mask: {T * T / 2**30:,.0f} GiB)")
            del bm


def reference_attention(q, k, v, dout, bounds, budget=2**28):
    """float64 out, dq, dk, dv of document-causal attention written out with explicit formulas, per document
    and per chunk of queries so that no (heads x chunk x keys) tensor exceeds `budget` elements (a 64K
    document on a GPU never holds its 64K x 64K score matrix at once). Backward: dS = P * (dP - rowsum(dO *
    O))."""
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
    gpu_check(sys.argv[1:])
