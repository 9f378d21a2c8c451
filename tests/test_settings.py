"""settings.py: config files that compose by name from any directory, and every setting checked against its
rule before any work, one line naming it."""
import glob
import os

import pytest

import settings
from model import LlamaConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
                 if not os.path.basename(p).startswith("_"))


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------------------------------------
# composing config files


def test_include_is_relative_to_the_including_file_from_any_directory(tmp_path, monkeypatch):
    write(tmp_path / "base.py", "lr = 1e-3\nmax_steps = 7\n_share = 0.5\n")
    write(tmp_path / "arms" / "mid.py", 'include("../base.py")\nmax_steps = 9\n')
    arm = write(tmp_path / "arms" / "deep" / "arm.py", 'include("../mid.py")\nmin_lr = _share * lr\n')
    for cwd in (tmp_path / "arms" / "deep", tmp_path, ROOT):
        monkeypatch.chdir(cwd)
        cfg = settings.load_config([os.path.relpath(arm, cwd)])
        assert (cfg["lr"], cfg["max_steps"], cfg["min_lr"]) == (1e-3, 9, 5e-4)  # later assignments win
        assert "_share" not in cfg and "include" not in cfg
    assert settings.read_file(arm)["_share"] == 0.5  # a file's helpers, for tests and tools


def test_every_config_loads_the_same_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    here = {p: settings.load_config([os.path.relpath(p, ROOT)]) for p in CONFIGS}
    monkeypatch.chdir(tmp_path)
    assert {p: settings.load_config([p]) for p in CONFIGS} == here
    assert len(CONFIGS) >= 25
    for p in CONFIGS:  # one mechanism: no config reads another by a path relative to the working directory
        text = open(p).read()
        assert "exec(" not in text and "_getframe" not in text, p


@pytest.mark.parametrize("text,included,message", [
    ('include("missing.py")\n', None, "top.py line 1: config file {d}/missing.py not found"),
    ('lr = 1e-3\ninclude("loop.py")\n', 'include("top.py")\n',
     "loop.py line 1: include cycle: {d}/top.py -> {d}/loop.py -> {d}/top.py"),
    ('include("bad.py")\n', "lr = = 1\n", "bad.py line 1: invalid syntax"),
    ('include("bad.py")\n', "x = 1\nlr = undefined_name\n", "bad.py line 2: NameError"),
])
def test_include_errors_name_the_file_and_line(tmp_path, text, included, message):
    top = write(tmp_path / "top.py", text)
    if included is not None:
        write(tmp_path / ("loop.py" if "loop" in text else "bad.py"), included)
    with pytest.raises(settings.ConfigError) as info:
        settings.load_config([top])
    assert message.format(d=tmp_path) in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# the rules


def test_every_setting_has_exactly_one_rule_and_the_defaults_keep_them():
    assert set(settings.RULES) == set(settings.DEFAULTS)
    for key, value in settings.DEFAULTS.items():
        assert settings.RULES[key][1](value), key
    for name in settings.PRESETS:
        assert callable(getattr(LlamaConfig, name)), name


NUMERIC = [k for k, v in settings.DEFAULTS.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
NUMERIC += ["rope_theta", "peak_flops"]  # None by default: the checkpoint's RoPE base, the table's peak
ZERO_OK = {"seed", "eval_interval", "checkpoint_interval", "keep_checkpoints", "min_lr", "warmup_fraction",
           "weight_decay", "beta1", "beta2"}  # 0 means something for these (README: Training)


@pytest.fixture
def good(tmp_path):
    (tmp_path / "code").mkdir()
    return write(tmp_path / "good.py", f"data_root = {str(tmp_path)!r}\nout_dir = {str(tmp_path / 'run')!r}\n"
                 "mixture = [dict(path='code', proportion=1.0, length=128, mode='pack')]\n"
                 "seq_len = 128\ntokens_per_step = 256\n")


def refusal(argv, world=1):
    """The one-line ConfigError that load_config + validate give for argv, or None when they accept it."""
    try:
        settings.validate(settings.load_config(argv), world)
    except settings.ConfigError as e:
        assert "\n" not in str(e), str(e)
        return str(e)
    return None


def test_every_numeric_setting_refuses_zero_minus_one_and_wrong_types(good):
    """Through the command line's parser: 0, -1, a string, a bool, an infinity; one line naming the
    setting."""
    assert refusal([good]) is None
    tried = 0
    for key in NUMERIC:
        for value in ("0", "-1", "'x'", "True", "1e999", "[1]"):
            tried += 1
            message = refusal([good, f"--{key}={value}"])
            if value == "0" and key in ZERO_OK:
                assert message is None, (key, message)
            else:
                assert message is not None and repr(key) in message, (key, value, message)
    assert tried == 6 * len(NUMERIC) and len(NUMERIC) == 20


@pytest.mark.parametrize("override,words", [
    ("--lr=-1", ["'lr'", "> 0", "-1"]),
    ("--seq_len=0", ["'seq_len'", ">= 1"]),
    ("--micro_batch_sequences=0", ["'micro_batch_sequences'"]),
    ("--sp_size=0", ["'sp_size'"]),
    ("--log_interval=0", ["'log_interval'"]),
    ("--tokens_per_step=0", ["'tokens_per_step'"]),
    ("--min_lr=-5.0", ["'min_lr'", ">= 0"]),
    ("--min_lr=0.5", ["min_lr 0.5 is above lr"]),
    ("--warmup_fraction=1.5", ["'warmup_fraction'", "[0, 1]"]),
    ("--beta2=1.0", ["'beta2'", "[0, 1)"]),
    ("--compute_dtype=float33", ["'compute_dtype'", "'bfloat16'"]),
    ("--param_dtype=float33", ["'param_dtype'"]),
    ("--hf_dtype=float33", ["'hf_dtype'"]),
    ("--model=llama4", ["'model'", "'tiny'"]),
    ("--attention_backend=fast", ["'attention_backend'", "'sdpa'"]),
    ("--cross_document_labels=1", ["'cross_document_labels'"]),
    ("--rope_theta=abc", ["'rope_theta'"]),
    ("--init_from=5", ["'init_from'"]),
    ("--out_dir=", ["'out_dir'", "non-empty"]),
    ("--model_overrides={'num_attention_heads': 3}", ["model_overrides", "divisible"]),
    ("--model_overrides={'hiden_size': 64}", ["hiden_size"]),
])
def test_bad_values_are_one_line_naming_the_setting(good, override, words):
    message = refusal([good, override])
    assert message is not None and all(w in message for w in words), message


def test_out_dir_must_be_a_writable_directory(good, tmp_path):
    (tmp_path / "afile").write_text("x")
    assert "is a file" in refusal([good, f"--out_dir={tmp_path / 'afile'}"])
    assert "cannot be created" in refusal([good, f"--out_dir={tmp_path / 'afile' / 'run'}"])
    assert refusal([good, f"--out_dir={tmp_path / 'new' / 'deeper'}"]) is None
    assert not (tmp_path / "new").exists()  # checked, not created
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "locked").mkdir(mode=0o555)
        assert "not writable" in refusal([good, f"--out_dir={tmp_path / 'locked' / 'run'}"])
