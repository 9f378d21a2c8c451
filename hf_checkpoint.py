"""
Hugging Face checkpoints on disk: where a checkpoint is (a local directory, never the network, or a hub id
fetched with huggingface-hub), its weights as safetensors shards in HF's layout, and its config.json. model.py
builds and saves models through these; checkpoint.py writes the HF half of a training checkpoint with them.
`read_hf_config` reads config.json as transformers reads it: HF's defaults per model_type, metadata ignored, and
every key that would change the computation but is not implemented here refused in one line.

Weights are written shard by shard, so that a caller streaming gathered tensors never holds more than one
shard, and every file under a temporary name that is renamed only when all are written; a directory that held
another layout (a sharded export over a single file, or the reverse) keeps no stale shard or index.
"""
import difflib
import json
import math
import os
import re

from safetensors.torch import load_file, save_file

from common import atomic_write


def write_hf_config(config, path, dtype, max_position_embeddings=None):
    """config.json for `config`; a model trained at a longer length says so (max_position_embeddings >=
    it)."""
    d = config.to_hf_dict()
    d["torch_dtype"] = str(dtype).removeprefix("torch.")
    if max_position_embeddings:
        d["max_position_embeddings"] = max(d["max_position_embeddings"], int(max_position_embeddings))
    atomic_write(os.path.join(path, "config.json"), json.dumps(d, indent=2))


def resolve_checkpoint(path_or_hub_id):
    """A local directory is used as it is and never touches the network. Only an `org/name` that cannot be a
    local path goes to the hub: an existing file, a path that starts with . / ~ or ends with /, has more than
    one slash, or whose first component is a directory here (`runs/missin` is a missing run, not a hub repo)
    is local."""
    name = os.fspath(path_or_hub_id)
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"checkpoint directory {name} has no config.json")
        return path
    first = name.split("/")[0]
    hub_shaped = name.count("/") == 1 and not name.startswith((".", "/", "~")) and not name.endswith("/")
    if is_local_path(name):
        local_dir = f" ({first}/ is a local directory, so this is a local path, not a hub id)"
        why = (": it is a file" if os.path.exists(path) else " (and it is not a hub id 'org/name')"
               if "/" not in name else local_dir if hub_shaped else "")
        raise FileNotFoundError(f"no checkpoint directory at {name}{why}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    try:
        return snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "original/tokenizer.model"])
    except GatedRepoError:
        why = "is gated: accept its licence on huggingface.co, then log in (hf auth login, or set HF_TOKEN)"
    except RepositoryNotFoundError:
        why = "does not exist on the hub (or is private: log in with hf auth login, or set HF_TOKEN)"
    except LocalEntryNotFoundError:
        why = "is not in the local hub cache and cannot be downloaded (no network, or HF_HUB_OFFLINE is set)"
    except (OSError, ValueError) as e:  # other HTTP errors, an invalid repo name
        why = "cannot be downloaded: " + " ".join(str(e).split())
    raise OSError(f"no local directory {name}, and as a hub checkpoint it {why}")


def is_local_path(name):
    """Whether a checkpoint name means a local path (see resolve_checkpoint), whether or not it exists."""
    name = os.fspath(name)
    hub_shaped = name.count("/") == 1 and not name.startswith((".", "/", "~")) and not name.endswith("/")
    return os.path.exists(os.path.expanduser(name)) or not hub_shaped or os.path.isdir(name.split("/")[0])


def read_safetensors(path):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"checkpoint {path} has no .safetensors files")
    state = {}
    for name in files:
        file = os.path.join(path, name)
        if not os.path.exists(file):
            raise FileNotFoundError(f"checkpoint {path}: the index names {name}, which is missing")
        try:
            state.update(load_file(file))
        except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
            raise ValueError(f"checkpoint file {file} cannot be read ({e})") from None
    return state


def save_safetensors(state, path, dtype=None, max_shard_bytes=5 * 2**30):
    """Write a state dict, or (name, tensor) pairs streamed one at a time, as HF safetensors shards: a shard
    is written as soon as it is full, so a caller gathering tensors one by one never holds more than one
    shard."""
    os.makedirs(path, exist_ok=True)
    items = state.items() if isinstance(state, dict) else state
    written, weight_map, current, size, total = [], {}, {}, 0, 0
    mode = _default_mode()

    def flush():
        file = os.path.join(path, f".shard-{len(written):05d}.tmp")
        written.append((file, list(current)))
        save_file(current, file, metadata={"format": "pt"})
        os.chmod(file, mode)  # safetensors creates files 0600; the checkpoint's others follow the umask

    try:
        for name, t in items:
            t = (t if dtype is None else t.to(dtype)).detach().cpu().contiguous()
            nbytes = t.numel() * t.element_size()
            if current and size + nbytes > max_shard_bytes:
                flush()
                current, size = {}, 0
            current[name], size, total = t, size + nbytes, total + nbytes
        flush()
    except BaseException:  # a full disk, Ctrl-C: no temporary shard stays behind
        for file, _ in written:
            if os.path.exists(file):
                os.remove(file)
        raise
    # names need the shard count, known only now
    if len(written) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(written):05d}.safetensors" for i in range(len(written))]
    index_file = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index_file):  # a stale layout goes, its index first: it must never name a missing shard
        os.remove(index_file)
    for stale in os.listdir(path):
        if stale not in names and SHARD.fullmatch(stale):
            os.remove(os.path.join(path, stale))
    for (file, keys), name in zip(written, names):
        os.replace(file, os.path.join(path, name))
        weight_map.update({k: name for k in keys})
    if len(written) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        atomic_write(index_file, json.dumps(index, indent=2))


SHARD = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors")  # the names HF gives weight files


def _default_mode():
    """The mode a new file gets under this process's umask (0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask

# ----------------------------------------------------------------------------------------------------------------
# config.json

FAMILY_NAMES = "llama, qwen2 (Qwen2 and Qwen2.5: q/k/v bias), qwen3 (q/k norm)"


def read_hf_config(d, ours, source="config.json"):
    """A checkpoint's config.json read the way Hugging Face reads it: (our fields, model_type).

    `ours` names the fields a model config has (besides those model_type implies). Metadata is ignored; a
    setting that changes the computation and is not implemented here (`_HF_REQUIREMENTS`, a RoPE type or
    parameter, a sliding window that is switched on), or a key nobody listed, is refused in one line naming
    the key and its value: a new math-changing key must never be silently ignored. A value of the wrong type
    ("hidden_size": "64") is refused naming the key and `source`. Absent keys take HF's defaults for that
    model_type, not our presets', because those are what the checkpoint was trained and saved with."""
    d = dict(d)
    family = d.pop("model_type", "llama")
    if family not in HF_DEFAULTS:
        raise ValueError(f"{source} has model_type={family!r}, which is not implemented here "
                         f"(only {FAMILY_NAMES})")
    if family != "llama":
        _check_no_sliding_window(d, family, source)
    if family == "qwen2":
        d.pop("attention_bias", None)  # Qwen2's q/k/v projections always have a bias: HF never reads the key
    # RoPE has two spellings: `rope_theta` + `rope_scaling` (transformers 4), and `rope_parameters` holding both
    # (transformers 5). Like transformers 5, a non-empty `rope_scaling` wins, and a theta inside the dict wins.
    params = d.pop("rope_parameters", None)
    for key, value in (("rope_scaling", d.get("rope_scaling")), ("rope_parameters", params)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{source}: {key} must be an object or null, got {json.dumps(value)}")
    spelling = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
    scaling = d.get("rope_scaling") or params
    if scaling is not None:
        scaling = dict(scaling)
        if "rope_theta" in scaling:
            d["rope_theta"] = scaling.pop("rope_theta")
        d["rope_scaling"] = checked_rope_scaling(scaling, spelling)
    if d.get("num_key_value_heads") is None:  # Llama-1/2 configs: one KV head per query head
        d["num_key_value_heads"] = d.get("num_attention_heads", HF_DEFAULTS[family]["num_attention_heads"])
    if d.get("head_dim") is None and family != "qwen3":
        d.pop("head_dim", None)  # hidden_size // num_attention_heads, as in HF
    d = {**HF_DEFAULTS[family], **{k: v for k, v in d.items() if not (k == "head_dim" and v is None)}}
    _check_types(d, source)
    requirements = {**_HF_REQUIREMENTS, **_FAMILY_REQUIREMENTS[family]}
    for key, value in d.items():
        if key in ours or _is_hf_metadata(key) or (family != "llama" and key in _QWEN_WINDOW_KEYS):
            continue
        if key in requirements:
            ok = requirements[key]
            if value == ok and isinstance(value, bool) == isinstance(ok, bool):  # 1 == True, but not here
                continue
            raise ValueError(f"{source} has {key}={value!r}, which is not implemented here "
                             f"(this {family} model supports only {key}={ok!r})")
        close = difflib.get_close_matches(key, ours | set(requirements), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown config key {key!r}={value!r}{hint}: not implemented here, and it may change "
                         f"the model; if it is metadata, add it to hf_checkpoint._HF_METADATA")
    return {k: v for k, v in d.items() if k in ours}, family


# What transformers assumes for a key that config.json leaves out: LlamaConfig's (Llama-2-7B's values), and
# Qwen2Config's and Qwen3Config's (Qwen3's head_dim is 128 whatever hidden_size / heads is; no bos or eos id).
_LLAMA_DEFAULTS = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
                   "tie_word_embeddings": False, "rope_theta": 10000.0, "rope_scaling": None,
                   "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2}
_QWEN_DEFAULTS = {**_LLAMA_DEFAULTS, "vocab_size": 151936, "intermediate_size": 22016,
                  "max_position_embeddings": 32768, "bos_token_id": None, "eos_token_id": None}
HF_DEFAULTS = {"llama": _LLAMA_DEFAULTS, "qwen2": _QWEN_DEFAULTS, "qwen3": {**_QWEN_DEFAULTS, "head_dim": 128}}
# Keys that change the computation, with the one value this model implements (for every family, then per family).
_HF_REQUIREMENTS = {"hidden_act": "silu", "attention_dropout": 0.0,
                    "rope_interleaved": False}  # nanotron's flag: True pairs dims (2i, 2i+1), not (i, i + d/2)
_FAMILY_REQUIREMENTS = {
    "llama": {"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1, "sliding_window": None,
              "use_sliding_window": False},
    "qwen2": {"use_mrope": False},  # multimodal RoPE (Qwen2-VL's sections of head_dim)
    "qwen3": {"attention_bias": False},  # Qwen3's attention_bias would also put a bias on o_proj
}
# Qwen's sliding-window keys: read by _check_no_sliding_window, harmless when the window is off.
_QWEN_WINDOW_KEYS = {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"}
# Keys that do not change the computation: HF bookkeeping, generation defaults, tokenizer and hub metadata, and
# what other tools add (nanotron: is_llama_config; transformers.js; early LLaMA conversions: max_sequence_length,
# which HF never reads). `quantization_config` may be ignored because a still-quantised checkpoint is refused by its
# tensors (packed weights, or scale tensors beside float8 ones, which a Llama does not have): only a dequantised
# one loads.
_HF_METADATA = {
    "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version", "use_cache", "quantization_config",
    "is_llama_config", "transformers.js_config", "max_sequence_length",
    # Qwen2.5-*-1M: Dual Chunk Attention for inference past 256K in vLLM; transformers' Qwen2 ignores it and
    # attends over the whole context, as this model does
    "dual_chunk_attention_config",
    "output_attentions", "output_hidden_states", "return_dict", "torchscript", "use_bfloat16", "tf_legacy_loss",
    "pruned_heads", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "tie_encoder_decoder", "finetuning_task", "id2label", "label2id", "num_labels",
    "problem_type", "tokenizer_class", "prefix", "task_specific_params",
    # generation defaults that transformers 4 kept in config.json
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "forced_decoder_ids"}


def _check_no_sliding_window(d, family, source):
    """Refuse a Qwen config whose sliding window is actually used. As in HF: the window exists only with
    `use_sliding_window: true` and a `sliding_window` size, and applies to the layers `layer_types` marks (by
    default those from `max_window_layers` on), so Qwen2.5's `sliding_window: 131072` with the switch off is
    plain attention."""
    types = d.get("layer_types")
    if types is not None and not (isinstance(types, list) and set(types) <= {"full_attention", "sliding_attention"}):
        raise ValueError(f"{source} has layer_types={types!r}: only full_attention layers are implemented here")
    if not d.get("use_sliding_window") or d.get("sliding_window") is None:
        return
    layers, first = d.get("num_hidden_layers", 32), d.get("max_window_layers", 28)  # Qwen2Config's defaults
    types = types or ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
    if "sliding_attention" in types:
        raise ValueError(f"{source} has use_sliding_window=true with sliding_window={d['sliding_window']!r} on "
                         f"{types.count('sliding_attention')} of {len(types)} layers: sliding-window attention is "
                         f"not implemented here (only full attention, as with use_sliding_window=false)")


# The types config.json values must have: a string "64" would otherwise fail deep inside torch, or not at all.
_INT_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
             "vocab_size", "max_position_embeddings", "head_dim")
_FLOAT_KEYS = ("rope_theta", "rms_norm_eps", "initializer_range")


def _check_types(d, source):
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    eos = d.get("eos_token_id")
    checks = [(k, is_int(d[k]) and d[k] > 0, "a positive integer") for k in _INT_KEYS if k in d] + \
        [(k, is_number(d[k]) and (d[k] > 0 or k == "initializer_range"), "a positive number")
         for k in _FLOAT_KEYS if k in d] + \
        [("tie_word_embeddings", isinstance(d.get("tie_word_embeddings", False), bool), "true or false"),
         ("bos_token_id", d.get("bos_token_id") is None or is_int(d["bos_token_id"]), "an integer token id or null"),
         ("eos_token_id", eos is None or is_int(eos) or isinstance(eos, list) and eos and all(map(is_int, eos)),
          "an integer token id, a list of them, or null")]
    for key, ok, what in checks:
        if not ok:
            raise ValueError(f"{source}: {key} must be {what}, got {json.dumps(d[key])}")


def _is_hf_metadata(key):
    # `_name_or_path`, `_commit_hash`, `_attn_implementation_autoset` ...: HF's private bookkeeping; and token ids
    # other than bos/eos (pad, unk, sep, decoder_start ...) only matter to a tokenizer or to generation.
    return key in _HF_METADATA or key.startswith("_") or key.endswith("_token_id")


# The RoPE types rope_inv_freq implements, with the keys each needs besides rope_type.
_ROPE_KEYS = {"default": set(), "linear": {"factor"},
              "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}}


def checked_rope_scaling(scaling, key):
    """`scaling` if rope_inv_freq implements exactly that, None for plain RoPE, else a one-line refusal naming `key`."""
    kind = rope_type(scaling)
    if kind not in _ROPE_KEYS:
        raise ValueError(f"{key} {scaling!r}: rope type {kind!r} is not implemented (only {', '.join(_ROPE_KEYS)})")
    # A missing key would fail deep inside rope_inv_freq; an extra one (partial_rotary_factor, mscale ...) would
    # change the angles without anyone noticing.
    given = set(scaling or {}) - {"rope_type", "type"}
    if given != _ROPE_KEYS[kind]:
        raise ValueError(f"{key} {scaling!r}: {sorted(given ^ _ROPE_KEYS[kind])} missing or not implemented "
                         f"({kind!r} RoPE takes exactly {sorted(_ROPE_KEYS[kind])})")
    return None if kind == "default" else scaling  # one spelling of "no scaling": configs compare and round-trip


def rope_type(scaling):
    if not scaling:
        return "default"
    return scaling.get("rope_type", scaling.get("type", "default"))
