"""
A training run's settings: DEFAULTS, overridden by config files, overridden by `--key=value`, and every check
that can be made on them before any model is built or data read.

A config file is plain Python assignments run with one helper in scope: `include("base.py")` runs another
config file, named relative to the including file, into the same names, so that an experiment states only what
it changes and runs from any working directory. Names starting with `_` are the file's own helpers, not
settings. Each setting has one rule in RULES (its type comes from DEFAULTS, its range or choices from the
rule); a value that breaks one stops the run with one line naming the setting.
"""
import ast
import difflib
import math
import os
import traceback

import attention
import data
from common import UserError
from hf_checkpoint import is_local_path
from model import LlamaConfig


class ConfigError(UserError):
    pass


# Every setting of a run, with its default (RULES below says what values each takes). The optimiser and
# precision are the paper's for every stage, so the recipe configs state only what a stage sets.
DEFAULTS = dict(
    out_dir="runs/default",  # checkpoints, metrics.jsonl
    # model
    init_from=None,  # HF checkpoint directory or hub id; None: a fresh model of `model`
    model="tiny",  # LlamaConfig preset for fresh models: tiny, llama3_2_1b, llama3_8b
    model_overrides={},  # LlamaConfig fields for fresh models, e.g. {"num_hidden_layers": 4}
    rope_theta=None,  # replaces the checkpoint's RoPE base (ProLong: 8e6 at 64K, 1.28e8 at 512K)
    tokenizer=None,  # data.load_tokenizer spec; None: init_from's tokenizer, else the Llama-3 one
    cross_document=False,  # ablation: attention across document boundaries, positions run on
    # None: follow cross_document (the paper's code with masks off also trains each boundary's prediction: a
    # document's last token predicts the next one's first); False: labels within documents
    cross_document_labels=None,
    attention_backend=None,  # None: picked from the device (attention.py)
    # data
    data_root=".",  # relative mixture paths are under this directory
    mixture=[],  # [{"path", "proportion", "length", "mode": "chunk"|"pack"}, ...] (data.py)
    val_mixture=None,  # held-out data, same format; None: no validation
    val_sequences=8,
    allow_repeat=False,  # reuse a domain that runs out instead of stopping
    seq_len=2048,
    micro_batch_sequences=1,  # sequences packed into one micro-batch
    sort_microbatches=True,  # order each rank's micro-batches by sum of squared document lengths (paper B.3)
    # spread each step's sequences over (rank, micro-step) so that every micro-step's ranks carry equal cost
    # (data.balance_step; then sort_microbatches has no say); False: each rank its own sequences, as the paper
    balance_steps=True,
    tokens_per_step=16384,
    # optimisation
    max_steps=100,
    lr=1e-5,
    min_lr=1e-6,
    warmup_fraction=0.1,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.95,
    grad_clip=1.0,
    param_dtype="float32",  # master weights and optimizer state
    compute_dtype="bfloat16",  # forward/backward (FSDP MixedPrecisionPolicy)
    activation_checkpointing=True,
    # the loss's gradients made in its forward pass (loss.py): one vocab matmul fewer; False: recomputed in
    # backward, without the (vocab x hidden) float32 buffer held from forward to backward
    fused_loss=True,
    compile=False,
    sp_size=1,  # sequence-parallel group size (Ulysses)
    seed=0,
    # logging and checkpoints
    log_interval=1,
    eval_interval=0,  # 0: validate only at the start and the end
    checkpoint_interval=0,  # 0: only at the end
    keep_checkpoints=2,  # the newest checkpoints kept; 0: all
    hf_weights=True,  # also write HF safetensors in every checkpoint (else: python checkpoint.py export)
    hf_dtype=None,  # dtype of those safetensors, e.g. "bfloat16"; None: the master weights' dtype
    resume=False,  # continue from out_dir/latest (from scratch, said in the log, when there is none yet)
    load_optimizer=False,  # also take the optimizer state of init_from (stage hand-off)
    peak_flops=None,  # per device, for MFU; None: looked up from the device
)


# names other trainers use, to point at ours
SYNONYMS = {"learning_rate": "lr", "min_learning_rate": "min_lr", "warmup_ratio": "warmup_fraction",
            "max_grad_norm": "grad_clip", "batch_size": "tokens_per_step", "seq_length": "seq_len",
            "max_seq_length": "seq_len", "gradient_checkpointing": "activation_checkpointing",
            "output_dir": "out_dir", "model_name_or_path": "init_from", "save_steps": "checkpoint_interval"}


# ----------------------------------------------------------------------------------------------------------
# loading


def load_config(argv, defaults=DEFAULTS):
    """defaults <- each config file in argv <- each --key=value of argv (a Python literal, else a bare
    string), checked against the defaults' keys and types after every step."""
    cfg = dict(defaults)
    for path in (a for a in argv if not a.startswith("--")):
        cfg.update({k: v for k, v in read_file(path).items() if not k.startswith("_") and not callable(v)
                    and type(v).__name__ != "module"})
        check_types(cfg, defaults, f"in {path}")
    for arg in (a for a in argv if a.startswith("--")):
        key, eq, value = arg[2:].partition("=")
        if not eq:
            raise ConfigError(f"{arg}: overrides are written --key=value")
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass  # a bare string
        cfg[key] = value
        check_types(cfg, defaults, "on the command line")
    return cfg


def read_file(path):
    """Every name a config file assigns once its includes have run, its `_` helpers too."""
    namespace = {}
    _run_file(os.path.normpath(path), namespace, ())
    namespace.pop("include", None)
    return namespace


def given_settings(argv):
    """The names that the config files of argv, or its --key=value, set (the others keep DEFAULTS')."""
    names = {a[2:].partition("=")[0] for a in argv if a.startswith("--")}
    for path in (a for a in argv if not a.startswith("--")):
        names |= {k for k in read_file(path) if not k.startswith("_")}
    return names


def cpu_compute_dtype(cfg, argv, log, slowdown=None):
    """The dtype a run on CPU computes in: compute_dtype, unless a matmul in it is more than twice slower than
    in float32 on this CPU (bf16 without AVX-512-BF16 or AMX: ~9x; fp16 on most CPUs: worse), in which case
    float32, said in one line, unless the config or the command line set compute_dtype itself."""
    wanted = cfg["compute_dtype"]
    if wanted in ("float32", "float64"):
        return wanted
    slower = (slowdown or matmul_slowdown)(wanted)
    if slower <= 2:
        return wanted
    if "compute_dtype" in given_settings(argv):
        log(f"warning: compute_dtype={wanted!r} runs matmuls {slower:.0f}x slower than float32 on this CPU; "
            f"kept, as the settings ask for it")
        return wanted
    log(f"compute_dtype: {wanted} matmuls are {slower:.0f}x slower than float32 on this CPU, so this run "
        f"computes in float32 (set compute_dtype={wanted!r} to insist)")
    return "float32"


def matmul_slowdown(dtype_name, seconds=0.2):
    """How many times slower a (256 x 512) @ (512 x 2048) matmul runs in dtype_name than in float32 here."""
    import time

    import torch
    rates = []
    for dtype in (torch.float32, getattr(torch, dtype_name)):
        a, b = torch.randn(256, 512).to(dtype), torch.randn(512, 2048).to(dtype)
        a @ b  # warm-up
        n, t0 = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
        rates.append(n / (time.perf_counter() - t0))
    return rates[0] / rates[1]


class _IncludeError(Exception):
    pass


def _run_file(path, namespace, including):
    if path in including:
        raise _IncludeError("include cycle: " + " -> ".join(including + (path,)))
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = "not found" if isinstance(e, FileNotFoundError) else f"unreadable ({e})"
        raise (_IncludeError if including else ConfigError)(f"config file {path} {why}") from None

    def include(name):
        _run_file(os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(name))), namespace,
                  including + (path,))

    outer = namespace.get("include")
    namespace["include"] = include
    try:
        exec(compile(source, path, "exec"), namespace)
    except ConfigError:
        raise  # from an included file, already naming it
    except SyntaxError as e:
        raise ConfigError(f"{path} line {e.lineno}: {e.msg} (config files are Python assignments)") from None
    except Exception as e:  # a NameError, an import that fails, an include that does
        frames = reversed(traceback.extract_tb(e.__traceback__))
        line = next((f.lineno for f in frames if f.filename == path), "?")
        what = str(e) if isinstance(e, _IncludeError) else f"{type(e).__name__}: {e}"
        raise ConfigError(f"{path} line {line}: {what}") from None
    finally:
        namespace["include"] = outer


def check_types(cfg, defaults, where):
    """Unknown keys (naming the closest one) and values of another type than the default's; an int where the
    default is a float becomes that float. Defaults of None take any type here: their rules say which."""
    for key, value in cfg.items():
        if key not in defaults:
            close = [SYNONYMS[key]] if key in SYNONYMS else difflib.get_close_matches(key, defaults, n=1)
            raise ConfigError(f"unknown setting {key!r} {where}"
                              + (f"; did you mean {close[0]!r}?" if close else ""))
        default = defaults[key]
        if default is None or value is None or type(value) is type(default) or (
                isinstance(value, type(default)) and not isinstance(value, bool)):
            continue
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            cfg[key] = float(value)
            continue
        raise ConfigError(f"setting {key!r} {where} must be {type(default).__name__}, got {value!r}")


# ----------------------------------------------------------------------------------------------------------
# the rules: one per setting, (what it must be, test)


def _number(test, says, integer=False):
    def ok(v):
        kinds = int if integer else (int, float)
        return isinstance(v, kinds) and not isinstance(v, bool) and math.isfinite(v) and test(v)
    return says, ok


def _one_of(*choices):
    return "one of " + ", ".join(map(repr, choices)), lambda v: isinstance(v, str) and v in choices


def _optional(rule):
    return "None or " + rule[0], lambda v: v is None or rule[1](v)


COUNT = _number(lambda v: v >= 1, "an integer >= 1", integer=True)
COUNT0 = _number(lambda v: v >= 0, "an integer >= 0", integer=True)
POSITIVE = _number(lambda v: v > 0, "a number > 0")
NONNEGATIVE = _number(lambda v: v >= 0, "a number >= 0")
TEXT = ("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")
FLAG = ("True or False", lambda v: isinstance(v, bool))
BETA = _number(lambda v: 0 <= v < 1, "a number in [0, 1)")
MIXTURE = ("a list of {path, proportion, length, mode} dicts", lambda v: isinstance(v, list))
DTYPES = ("float32", "bfloat16", "float16", "float64")
PRESETS = ("tiny", "llama3_2_1b", "llama3_8b")  # LlamaConfig's classmethods of these names

RULES = dict(
    out_dir=TEXT, init_from=_optional(TEXT), model=_one_of(*PRESETS),
    model_overrides=("a dict of LlamaConfig fields", lambda v: isinstance(v, dict)),
    rope_theta=_optional(POSITIVE), tokenizer=_optional(TEXT), cross_document=FLAG,
    cross_document_labels=_optional(FLAG), attention_backend=_optional(_one_of(*attention.BACKENDS)),
    data_root=TEXT, mixture=MIXTURE, val_mixture=_optional(MIXTURE), val_sequences=COUNT, allow_repeat=FLAG,
    seq_len=COUNT, micro_batch_sequences=COUNT, sort_microbatches=FLAG, balance_steps=FLAG, fused_loss=FLAG,
    tokens_per_step=COUNT,
    max_steps=COUNT, lr=POSITIVE, min_lr=NONNEGATIVE,
    warmup_fraction=_number(lambda v: 0 <= v <= 1, "a number in [0, 1]"), weight_decay=NONNEGATIVE,
    beta1=BETA, beta2=BETA, grad_clip=POSITIVE, param_dtype=_one_of(*DTYPES), compute_dtype=_one_of(*DTYPES),
    activation_checkpointing=FLAG, compile=FLAG, sp_size=COUNT, seed=COUNT0, log_interval=COUNT,
    eval_interval=COUNT0, checkpoint_interval=COUNT0, keep_checkpoints=COUNT0,  # 0 means something: DEFAULTS
    hf_weights=FLAG, hf_dtype=_optional(_one_of(*DTYPES)), resume=FLAG, load_optimizer=FLAG,
    peak_flops=_optional(POSITIVE),
)


def check_rules(cfg):
    for key, value in cfg.items():
        says, ok = RULES[key]
        if not ok(value):
            raise ConfigError(f"setting {key!r} must be {says}, got {value!r:.100}")
    if cfg["min_lr"] > cfg["lr"]:
        raise ConfigError(f"min_lr {cfg['min_lr']:g} is above lr {cfg['lr']:g}: the schedule decays from lr "
                          f"to min_lr")


# ----------------------------------------------------------------------------------------------------------
# checks that combine settings, the world size and the disk


def validate(cfg, world_size):
    """Everything that can be checked before any long work but init_from (check_init_from): every setting's
    rule, sizes, divisibility, the model shape, proportions, the data and the run directory. Returns
    (data-parallel size, micro-batches per rank per step)."""
    check_rules(cfg)
    if world_size % cfg["sp_size"]:
        raise ConfigError(f"sp_size {cfg['sp_size']} does not divide the world size {world_size}")
    if cfg["seq_len"] % cfg["sp_size"]:
        raise ConfigError(f"seq_len {cfg['seq_len']} is not divisible by sp_size {cfg['sp_size']}")
    dp = world_size // cfg["sp_size"]
    per_micro_batch = cfg["seq_len"] * cfg["micro_batch_sequences"] * dp
    if cfg["tokens_per_step"] % per_micro_batch:
        raise ConfigError(f"tokens_per_step {cfg['tokens_per_step']} is not a multiple of seq_len x "
                          f"micro_batch_sequences x data-parallel size = {per_micro_batch}")
    if not cfg["init_from"]:
        fresh_model_config(cfg)
    for name in ("mixture",) + (("val_mixture",) if cfg["val_mixture"] else ()):
        try:
            data.check_mixture(cfg[name], cfg["seq_len"], root=cfg["data_root"], name=name)
        except data.DataError as e:
            raise ConfigError(str(e)) from None
    check_out_dir(cfg["out_dir"])
    return dp, cfg["tokens_per_step"] // per_micro_batch


def fresh_model_config(cfg):
    """The LlamaConfig of a fresh model: its preset with model_overrides (a dataclass: no weights built)."""
    try:
        return getattr(LlamaConfig, cfg["model"])(**cfg["model_overrides"])
    except (TypeError, ValueError) as e:  # a misspelt field, or heads that do not divide
        raise ConfigError(f"model_overrides {cfg['model_overrides']}: {e}") from None


def check_init_from(path):
    """A local init_from must be a whole HF directory; a hub id ('org/name') is fetched later by rank 0."""
    if not path or not is_local_path(path):
        return
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        raise ConfigError(f"init_from {path}: no such checkpoint directory")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ConfigError(f"init_from {path}: no config.json (an HF checkpoint directory holds config.json "
                          f"and *.safetensors)")
    if not any(f.endswith(".safetensors") for f in os.listdir(path)):
        hint = f"; write them with: python checkpoint.py export {path} {path}" if os.path.isdir(
            os.path.join(path, "train_state")) else ""
        raise ConfigError(f"init_from {path}: no *.safetensors weights{hint}")


def check_out_dir(path):
    """out_dir is a writable directory, or can be created as one; nothing is created here."""
    where = os.path.abspath(path)
    while not os.path.exists(where):
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        raise ConfigError(f"out_dir {path}: {where} is a file, not a directory" if where == os.path.abspath(
            path) else f"out_dir {path} cannot be created: {where} is a file")
    if not os.access(where, os.W_OK | os.X_OK):
        raise ConfigError(f"out_dir {path}: {where} is not writable" + (
            "" if where == os.path.abspath(path) else " (out_dir would be created inside it)"))


# ----------------------------------------------------------------------------------------------------------
# what settings read together mean to the data


def labels_cross(cfg):
    """Whether labels cross document boundaries: cross_document_labels, or cross_document when that is
    None."""
    labels = cfg["cross_document_labels"]
    return bool(cfg["cross_document"] if labels is None else labels)


def resolved(mixture, root):
    """A mixture's components with their paths under data_root."""
    return [dict(c, path=os.path.join(root, c["path"])) for c in mixture]
