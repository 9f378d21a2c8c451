"""settings.cpu_compute_dtype: a CPU run whose compute dtype is much slower than float32 says so in one line and
computes in float32, unless the settings ask for that dtype themselves."""
import settings


def decide(tmp_path, config_text, argv_extra=(), slower=9.0):
    config = tmp_path / "config.py"
    config.write_text(config_text)
    argv = [str(config), *argv_extra]
    cfg = settings.load_config(argv)
    said, probed = [], []

    def slowdown(name):
        probed.append(name)
        return slower
    return settings.cpu_compute_dtype(cfg, argv, said.append, slowdown), said, probed


def test_slow_default_dtype_falls_back_to_float32_in_one_line(tmp_path):
    dtype, said, probed = decide(tmp_path, "seq_len = 128\n")
    assert dtype == "float32" and probed == ["bfloat16"]
    assert len(said) == 1 and "9x slower than float32" in said[0] and "compute_dtype='bfloat16'" in said[0]


def test_a_dtype_the_settings_ask_for_is_kept_with_a_warning(tmp_path):
    for text, extra in (('compute_dtype = "bfloat16"\n', ()), ("seq_len = 128\n", ("--compute_dtype=bfloat16",))):
        dtype, said, _ = decide(tmp_path, text, extra)
        assert dtype == "bfloat16" and len(said) == 1 and said[0].startswith("warning:")


def test_included_config_counts_as_asking(tmp_path):
    (tmp_path / "base.py").write_text('compute_dtype = "bfloat16"\n')
    dtype, said, _ = decide(tmp_path, 'include("base.py")\n')
    assert dtype == "bfloat16" and said[0].startswith("warning:")


def test_fast_enough_or_float32_says_nothing(tmp_path):
    assert decide(tmp_path, "seq_len = 128\n", slower=1.5)[:2] == ("bfloat16", [])
    dtype, said, probed = decide(tmp_path, 'compute_dtype = "float32"\n')
    assert (dtype, said, probed) == ("float32", [], [])  # no probe at all


def test_the_probe_measures_a_real_ratio():
    ratio = settings.matmul_slowdown("bfloat16", seconds=0.05)
    assert 0.05 < ratio < 1000
    assert 0.2 < settings.matmul_slowdown("float32", seconds=0.05) < 5  # the same dtype: about 1 (a shared machine)
