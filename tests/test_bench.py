"""bench.py: the one-shot GPU check runs end to end at CPU size (so it cannot rot before a GPU sees it), and its
CPU memory meter measures what it says."""
import os
import subprocess
import sys

import pytest
import torch

import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_runs_every_section_at_cpu_size():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # the CPU smoke path even on a GPU machine
    proc = subprocess.run([sys.executable, "bench.py", "gpu", "--cpu-smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FAILED" not in out, out
    # fixed columns: section 10, case 26, backend 8, dtype 8, then the result
    rows = [[line[0:10].strip(), line[11:37].strip(), line[38:46].strip(), line[47:55].strip(), line[56:]]
            for line in out.splitlines() if line[0:10].strip() in ("attention", "compile", "train", "mask")]
    sections = {r[0] for r in rows}
    assert sections == {"attention", "compile", "train", "mask"}, out

    def results(section, backend, dtype):
        return [r[4] for r in rows if r[0] == section and r[2] == backend and r[3] == dtype]

    # sdpa forward and backward, flex forward, checked against the float64 reference on both cases
    sdpa64 = results("attention", "sdpa", "float64")
    assert len(sdpa64) == 2 and all("dv" in r for r in sdpa64)
    for r in sdpa64 + results("attention", "flex", "float64"):
        errors = [float(tok) for tok in r.split(";")[0].split()[2::2]]
        assert errors and max(errors) < 1e-12, r
    # the kernels this machine lacks say why instead of failing
    assert all(r.startswith("n/a (") for r in results("attention", "fa3", "float32"))
    # a freshly initialised model predicts uniformly: loss near ln(vocab)
    steady = [r[4] for r in rows if r[0] == "train" and r[1].startswith("steady")]
    assert steady and abs(float(steady[0].split()[1].rstrip(",")) - 11.76) < 0.1, out
    assert any("T=524288" in line and "held" in line for line in out.splitlines())


def test_tensor_memory_counts_live_storages_not_views():
    with bench.TensorMemory() as mem:
        a = torch.zeros(1000)  # 4000 bytes
        view = a[None, :500]
        b = torch.ones(2000)  # 8000 more
        del b  # freed: live goes back down
        c = a + 1  # 4000 more
    assert view.shape == (1, 500) and c.shape == (1000,)
    assert mem.peak == 12000 and mem.largest == 8000
    assert mem.live == 8000
