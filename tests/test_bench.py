"""bench.py gpu (gpucheck.py): the one-shot GPU check runs end to end at CPU size (so it cannot rot before a
GPU sees it), its exit status says FAILED, incomplete or no CUDA, and its time budget stops a section that
overruns; bench.py's CPU memory meter measures what it says."""
import os
import re
import subprocess
import sys
import time

import pytest
import torch

import memory
import gpucheck

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_ONLY = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # the CPU path even on a GPU machine


def table(out):
    """The check's rows: fixed columns section 10, case 26, backend 8, dtype 8, then the result."""
    return [[line[0:10].strip(), line[11:37].strip(), line[38:46].strip(), line[47:55].strip(), line[56:]]
            for line in out.splitlines() if line[0:10].strip() in ("attention", "compile", "train", "mask")]


@pytest.mark.slow
def test_gpu_check_runs_every_section_at_cpu_size():
    t0 = time.perf_counter()
    # a loose budget: a loaded 2-core CI machine must not stop a section (the budget has its own test below)
    proc = subprocess.run([sys.executable, "bench.py", "gpu", "--cpu-smoke", "--budget", "900"], cwd=ROOT,
                          env=CPU_ONLY, capture_output=True, text=True, timeout=1000)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "FAILED" not in out and "skipped" not in out and out.splitlines()[-1] == "gpu check: passed", out
    rows = table(out)
    assert {r[0] for r in rows} == {"attention", "compile", "train", "mask"}, out
    # compile runs before the second dtype's attention rows, the slow ones on a GPU (fp32 flex at 64K)
    order = [r[0] for r in rows if r[1] != "section time"]
    first_fp64 = next(i for i, r in enumerate(rows) if r[3] == "float64" and r[2] == "sdpa")
    assert order.index("compile") < first_fp64, out

    def results(backend, dtype):
        return [r[4] for r in rows if r[0] == "attention" and r[2] == backend and r[3] == dtype]

    # sdpa forward and backward, flex forward, checked against the float64 reference on both cases
    sdpa64 = results("sdpa", "float64")
    assert len(sdpa64) == 2 and all("dv" in r and "<= 1e-10" in r for r in sdpa64)
    for r in sdpa64 + results("flex", "float64"):
        errors = [float(x) for x in re.findall(r"\b(?:out|dq|dk|dv) ([0-9.e+-]+)", r.split(";")[0])]
        assert errors and max(errors) < 1e-12, r
    # the kernels this machine lacks say why instead of failing
    assert all(r.startswith("n/a (") for r in results("fa3", "float32"))
    # a freshly initialised model predicts uniformly: loss near ln(vocab)
    steady = [r[4] for r in rows if r[0] == "train" and r[1].startswith("steady")]
    assert steady and abs(float(steady[0].split()[1].rstrip(",")) - 11.76) < 0.1, out
    assert any("T=524288" in line and "held" in line for line in out.splitlines())
    print(f"gpu check at CPU size: {time.perf_counter() - t0:.0f} s")


@pytest.mark.slow
def test_gpu_check_without_cuda_is_an_error_not_a_cpu_run():
    proc = subprocess.run([sys.executable, "bench.py", "gpu"], cwd=ROOT, env=CPU_ONLY, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == gpucheck.NO_CUDA and proc.stdout == "", proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA device") and "--cpu-smoke" in lines[0]


def run(*bodies, budget):
    """gpucheck.run_sections over sections of equal weight that run the Python `bodies` instead of the
    check."""
    names = [(f"s{i}", 1) for i in range(len(bodies))]
    return gpucheck.run_sections(names, budget, lambda name, share: [sys.executable, "-c", bodies[int(name[1:])]])


def test_the_exit_status_is_failed_for_a_failed_section_and_passed_only_when_all_pass(capfd):
    ok = "print('fine')"
    assert run(ok, ok, budget=60) == gpucheck.PASSED
    assert capfd.readouterr().out.splitlines()[-1] == "gpu check: passed"
    failed = "import sys; sys.exit(1)"
    assert run(ok, failed, ok, budget=90) == gpucheck.FAILED
    assert capfd.readouterr().out.splitlines()[-1] == "gpu check: FAILED in s1"
    crashed = "import os; os.abort()"  # a segfault-like death is a failure, not a pass
    assert run(crashed, budget=60) == gpucheck.FAILED


def test_the_budget_stops_a_section_that_overruns_and_the_next_one_still_runs(capfd, monkeypatch):
    # shares of a few seconds here (the check's own floor, 10 s, only sizes real sections)
    monkeypatch.setattr(gpucheck, "MIN_SHARE_S", 2)
    t0 = time.perf_counter()
    status = run("import time; time.sleep(600)", "print('second ran')", budget=8)
    elapsed = time.perf_counter() - t0
    out = capfd.readouterr().out
    assert status == gpucheck.INCOMPLETE and elapsed < 7, (elapsed, out)  # stopped at its share, 4 s
    assert "stopped (time budget: its share of 4 s" in out and "second ran" in out
    # a share too small to be worth starting is skipped, and says so
    assert run("print('x')", budget=gpucheck.MIN_SHARE_S - 1) == gpucheck.INCOMPLETE
    assert "skipped (time budget" in capfd.readouterr().out


def test_errors_above_the_tolerance_fail_the_row():
    ref = [torch.ones(4, dtype=torch.float64)]
    ok, text = gpucheck.judge(gpucheck.relative_errors([ref[0] + 1e-3], ref), torch.bfloat16, names=("out",))
    assert ok and "<= 0.05" in text
    ok, text = gpucheck.judge(gpucheck.relative_errors([ref[0] + 1e-2], ref), torch.float32, names=("out",))
    assert not ok and "above tolerance 0.002 (out)" in text
    ok, _ = gpucheck.judge([float("nan")], torch.float32, names=("out",))
    assert not ok


def test_a_row_that_fails_makes_the_section_fail(capfd):
    check = gpucheck.GpuCheck(torch.device("cpu"), True, time.perf_counter() + 60)
    check.row("attention", "x", "sdpa", "float32", "fine")
    assert check.status == gpucheck.PASSED
    check.skipped("attention", "y", "sdpa", "float32")
    assert check.status == gpucheck.INCOMPLETE
    check.failed("attention", "z", "sdpa", "float32", "rel err out 1 above tolerance")
    check.skipped("attention", "w", "sdpa", "float32")
    assert check.status == gpucheck.FAILED
    assert "FAILED rel err" in capfd.readouterr().out


def test_timings_take_fewer_repetitions_when_a_call_is_slow():
    check = gpucheck.GpuCheck(torch.device("cpu"), True, time.perf_counter() + 60)
    calls = []
    check.timed(lambda: calls.append(1), first_s=0.001)
    assert len(calls) == 5
    calls.clear()
    check.timed(lambda: calls.append(1), first_s=3.0)  # one 64K fp32 flex call: no repetition at all
    assert calls == []


def test_tensor_memory_counts_live_storages_not_views():
    with memory.TensorMemory() as mem:
        a = torch.zeros(1000)  # 4000 bytes
        view = a[None, :500]
        b = torch.ones(2000)  # 8000 more
        del b  # freed: live goes back down
        c = a + 1  # 4000 more
    assert view.shape == (1, 500) and c.shape == (1000,)
    assert mem.peak == 12000 and mem.largest == 8000
    assert mem.live == 8000
