"""
Hugging Face checkpoints on disk: where a checkpoint is (a local directory, never the network, or a hub id
fetched with huggingface-hub), its weights as safetensors shards in HF's layout, and its config.json. model.py
builds and saves models through these; checkpoint.py writes the HF half of a training checkpoint with them.

Weights are written shard by shard, so that a caller streaming gathered tensors never holds more than one
shard, and every file under a temporary name that is renamed only when all are written; a directory that held
another layout (a sharded export over a single file, or the reverse) keeps no stale shard or index.
"""
import json
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
