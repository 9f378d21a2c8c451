"""
Training checkpoints that scale: every rank writes its own shards, in parallel, and a run resumes on any world
size.

A checkpoint is one directory, `OUT_DIR/step_NNNNNNN/`:
  config.json, model*.safetensors, tokenizer   the Hugging Face directory that evaluate.py and transformers
                                               read (weights gathered one tensor at a time and streamed to
                                               disk by rank 0, so no rank ever holds the whole model;
                                               `hf_weights=False` skips them and `python checkpoint.py export`
                                               writes them later)
  train_state/                                 torch.distributed.checkpoint (DCP): the sharded master weights
                                               and AdamW state, each rank's own shards in its own file, every
                                               tensor in its own dtype. DCP reshards on load, so 64 GPUs can
                                               resume on 32.
  train_state.json                             step, data cursor, RNG, the run's settings and model shape

Weights are resumed from train_state/, not from the safetensors: a run with float64 master weights resumes
exactly, and an HF export in another dtype (`hf_dtype`) changes nothing about the run.

Crash safety: everything is written under `.tmp-step_NNNNNNN`, renamed once every rank has finished, and only
then named in `OUT_DIR/latest`, so a crash at any moment leaves the previous checkpoint as the latest (the
next run removes the half-written directory). A failed write (a full disk) removes the temporary directory and
says so.

    python checkpoint.py export RUN/step_0000500 OUT [--dtype bfloat16]   # HF weights from train_state/
"""
import signal
import sys

import common

if __name__ == "__main__":
    common.exit_on_interrupt()  # Ctrl-C while torch imports: one line and 130, not a traceback

import argparse
import errno
import json
import logging
import os
import re
import shutil

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.tensor import DTensor

from common import UserError, atomic_open, atomic_write
from hf_checkpoint import save_safetensors, write_hf_config
from model import Llama, LlamaConfig


class CheckpointError(UserError):
    """A checkpoint that cannot be written or read; the message is one line and says what can be done."""


STEP_DIR = re.compile(r"step_\d{7}$")


def _first_failure(e):
    """The underlying exception of a DCP CheckpointException (raised on every rank when any rank failed)."""
    if isinstance(e, CheckpointException) and e.failures:
        exc = next(iter(e.failures.values()))
        return exc[0] if isinstance(exc, tuple) else exc
    return e


def describe(e, where=None):
    """One line for an exception from writing or reading files under `where`. A full disk has three spellings:
    OSError ENOSPC, safetensors' "No space left on device (os error 28)", and from torch.save inside DCP a
    short write, "[enforce fail at inline_container.cc] unexpected pos N vs M", which is told apart by the
    free space."""
    e = _first_failure(e)
    text = " ".join(str(e).split()) or type(e).__name__
    full = (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in text or (
        "unexpected pos" in text and where is not None and _free_bytes(where) < 2**24)
    if full:
        return f"no space left on {where}" if where else "no space left on device"
    return text if len(text) < 300 else text[:297] + "..."


def _free_bytes(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path or ".").free
    except OSError:
        return 2**63


def _agree(error):
    """Every rank learns whether any rank failed (collective): the first failure's message, or None."""
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    return next((e for e in errors if e), None)


# ----------------------------------------------------------------------------------------------------------
# saving


def full_tensors(model, rank):
    """(name, full CPU tensor) of every weight, gathered one at a time. Every rank must iterate it to the end
    (each gather is a collective); only rank 0 receives the tensors."""
    for name, t in get_model_state_dict(model).items():
        full = t.full_tensor() if isinstance(t, DTensor) else t
        if rank == 0:
            yield name, full.detach().cpu()
        del full


def save(model, optimizer, out_dir, step, train_state, tokenizer=None, keep=2, hf_weights=True, hf_dtype=None,
         max_position_embeddings=None, eos_token_ids=None):
    """Write checkpoint `step` (every rank calls this); returns its path. Raises CheckpointError on every rank
    if any rank failed to write, after removing the temporary directory; `latest` then still names the
    previous one."""
    rank, name = dist.get_rank(), f"step_{step:07d}"
    final, tmp = os.path.join(out_dir, name), os.path.join(out_dir, f".tmp-{name}")
    error = None
    if rank == 0:
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        except OSError as e:
            error = describe(e, out_dir)
    error = _agree(error)
    if error is None:
        try:
            state = {"model": get_model_state_dict(model),
                     "optim": get_optimizer_state_dict(model, optimizer)}
            dcp.save(state, checkpoint_id=os.path.join(tmp, "train_state"))
        except (CheckpointException, OSError, RuntimeError) as e:  # DCP raises the same failure on every rank
            error = describe(e, out_dir)
        error = _agree(error)
    if error is None:
        if hf_weights:
            tensors = full_tensors(model, rank)
            if rank == 0:
                try:
                    save_safetensors(tensors, tmp, dtype=hf_dtype)
                except Exception as e:  # OSError, or safetensors' own error for the same full disk
                    error = describe(e, out_dir)
            for _ in tensors:  # a rank-0 failure must not leave the other ranks waiting in a gather
                pass
        if rank == 0 and error is None:
            try:
                dtype = hf_dtype or next(p.dtype for p in model.parameters())
                write_hf_config(model.config, tmp, dtype, max_position_embeddings=max_position_embeddings)
                if tokenizer is not None:
                    tokenizer.save(tmp)
                if eos_token_ids:  # where generation stops (HF's generation_config.json, read by evaluate.py)
                    _write_json(os.path.join(tmp, "generation_config.json"),
                                {"bos_token_id": model.config.bos_token_id, "eos_token_id": eos_token_ids})
                meta = dict(train_state, step=step, model_config=model.config.to_hf_dict(),
                            param_dtype=str(next(p.dtype for p in model.parameters())).removeprefix("torch."),
                            world_size=dist.get_world_size(), hf_weights=hf_weights)
                _write_json(os.path.join(tmp, "train_state.json"), meta)
            except OSError as e:
                error = describe(e, out_dir)
        error = _agree(error)
    if error is not None:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = read_latest_name(out_dir)
        raise CheckpointError(f"could not write checkpoint {final} ({error}); removed {tmp}; "
                              + (f"{previous} is still the latest" if previous else
                                 "no earlier checkpoint exists"))
    if rank == 0:
        _publish(tmp, final, keep)
    dist.barrier()
    return final


def _publish(tmp, final, keep):
    """The whole checkpoint takes its name, then `latest` names it, then all but the `keep` newest go."""
    out_dir, name = os.path.split(final)
    shutil.rmtree(final, ignore_errors=True)  # a stale one from a run that crashed after this step
    os.replace(tmp, final)
    atomic_write(os.path.join(out_dir, "latest"), name + "\n")
    kept = sorted(d for d in os.listdir(out_dir) if STEP_DIR.match(d))
    for old in kept[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(out_dir, old))


def _write_json(path, obj):
    atomic_write(path, json.dumps(obj, indent=1, default=str))


# ----------------------------------------------------------------------------------------------------------
# metrics.jsonl: one JSON record per logged step and per validation, beside the checkpoints


def append_metrics(rank, out_dir, record):
    if rank == 0:
        with open(os.path.join(out_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")


def trim_metrics(out_dir, step):
    """On resume, forget what a killed run logged after its last checkpoint, so the log reads as one run; a
    line that the kill cut short is not a record and goes too."""
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if step and isinstance(record, dict) and isinstance(record.get("step"), int) and \
                    record["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    with atomic_open(path) as f:
        f.writelines(kept)


# ----------------------------------------------------------------------------------------------------------
# resuming


def read_latest_name(out_dir):
    try:
        with open(os.path.join(out_dir, "latest")) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def remove_stale(out_dir):
    """Remove temporary directories of saves cut short by a crash; returns their names."""
    stale = [d for d in os.listdir(out_dir) if d.startswith(".tmp-step_")] if os.path.isdir(out_dir) else []
    for d in stale:
        shutil.rmtree(os.path.join(out_dir, d), ignore_errors=True)
    return stale


def latest(out_dir):
    """The checkpoint that `OUT_DIR/latest` names, checked to be whole; None when there is no `latest`."""
    pointer = os.path.join(out_dir, "latest")
    if not os.path.exists(pointer):
        return None
    name = read_latest_name(out_dir)
    kept = sorted(d for d in os.listdir(out_dir) if STEP_DIR.match(d))
    if not name or not STEP_DIR.match(name) or not os.path.isdir(os.path.join(out_dir, name)):
        shown = repr(name[:40]) if name else "nothing readable"
        hint = f"; the checkpoints here are {', '.join(kept)}: echo {kept[-1]} > {pointer}" if kept else ""
        raise CheckpointError(f"{pointer} holds {shown}, not the name of a checkpoint directory in "
                              f"{out_dir}{hint}")
    path = os.path.join(out_dir, name)
    for part in ("train_state.json", os.path.join("train_state", ".metadata")):
        if not os.path.exists(os.path.join(path, part)):
            raise CheckpointError(f"{path} has no {part}: it was not written by this version of train.py, or "
                                  f"is damaged" + _previous_hint(out_dir, name))
    return path


def _previous_hint(out_dir, name):
    earlier = sorted(d for d in os.listdir(out_dir) if STEP_DIR.match(d) and d < name)
    if earlier:
        pointer = os.path.join(out_dir, "latest")
        return f"; to resume from the previous checkpoint: echo {earlier[-1]} > {pointer}"
    return ""


# what train.py writes into train_state.json, and what resuming reads back
TRAIN_STATE = {"step": int, "data": dict, "rng": list, "world_size": int, "model_config": dict,
               "param_dtype": str}


def read_train_state(path):
    """train_state.json, checked to hold what resuming reads (TRAIN_STATE's keys, each of its type)."""
    file = os.path.join(path, "train_state.json")
    out_dir, name = os.path.split(os.path.normpath(path))
    try:
        with open(file) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {file} ({describe(e)})" + _previous_hint(out_dir, name)) from None
    if not isinstance(meta, dict):
        why = f"holds a JSON {type(meta).__name__}, not an object"
    else:
        wrong = [k for k, kind in TRAIN_STATE.items() if not isinstance(meta.get(k), kind) or isinstance(
            meta.get(k), bool)]
        why = f"{wrong[0]!r} is {'missing' if wrong[0] not in meta else repr(meta[wrong[0]])[:40]}, not " \
              f"{TRAIN_STATE[wrong[0]].__name__}" if wrong else None
        if why is None and not all(isinstance(b, int) and 0 <= b < 256 for b in meta["rng"]):
            why = "'rng' is not a list of bytes (torch.get_rng_state())"
        if why is None and meta["param_dtype"] not in ("float32", "bfloat16", "float16", "float64"):
            why = f"'param_dtype' is {meta['param_dtype'][:20]!r}, not a dtype"
    if why:
        raise CheckpointError(f"{file} is damaged: {why}" + _previous_hint(out_dir, name))
    return meta


def check_same_model(meta, model, param_dtype, path):
    """Resuming is only exact, and only meaningful, for the model the checkpoint was trained as."""
    try:
        saved = LlamaConfig.from_hf_dict(meta["model_config"]).to_hf_dict()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/train_state.json: model_config is damaged ({e})") from None
    now = model.config.to_hf_dict()
    differ = [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in now
              if k != "max_position_embeddings" and saved.get(k) != now.get(k)]
    if differ:
        raise CheckpointError(f"{path} was trained as another model ({', '.join(differ)}): resume with the "
                              f"run's own model settings (model, model_overrides, rope_theta, init_from)")
    dtype = str(param_dtype).removeprefix("torch.")
    if meta["param_dtype"] != dtype:
        raise CheckpointError(f"{path} holds {meta['param_dtype']} master weights but param_dtype is {dtype}")


def _dcp_load(state, path):
    """dcp.load, its failures as one line. A damaged .metadata is named as such; DCP itself would log two
    tracebacks on the root logger (its fallback to per-rank metadata) before failing, so its warnings are
    off."""
    out_dir, name = os.path.split(os.path.normpath(path))
    where = os.path.join(path, "train_state")
    try:
        FileSystemReader(where).read_metadata()
    except Exception as e:  # unpickling garbage fails in many ways: EOFError, UnpicklingError, MemoryError...
        raise CheckpointError(f"{where}/.metadata is damaged or missing ({type(e).__name__}): this "
                              f"checkpoint's training state cannot be read" + _previous_hint(out_dir, name)) \
            from None
    logging.disable(logging.WARNING)
    try:
        dcp.load(state, checkpoint_id=where)
    except (CheckpointException, OSError, RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot read {where} ({describe(e)})" + _previous_hint(out_dir, name)) \
            from None
    finally:
        logging.disable(logging.NOTSET)


def resume(model, optimizer, mixture, path, param_dtype):
    """Continue a run exactly from checkpoint `path`: weights, optimizer state, the data cursor of `mixture`
    and the RNG, for the model it was trained as. Returns its train_state.json."""
    state = read_train_state(path)
    check_same_model(state, model, param_dtype, path)
    load(model, optimizer, path)
    try:
        mixture.load_state_dict(state["data"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}/train_state.json: unusable data cursor ({e!r})") from None
    torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
    return state


def load(model, optimizer, path):
    """Weights and optimizer state from path/train_state (resharded to this world size); returns
    train_state.json."""
    meta = read_train_state(path)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    _dcp_load(state, path)
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optim"])
    return meta


def load_optimizer(model, optimizer, path):
    """Only the optimizer state (stage hand-off: the weights came with the model). Hyperparameters stay this
    run's."""
    if not os.path.isdir(os.path.join(path, "train_state")):
        raise CheckpointError(f"load_optimizer=True: {path} has no train_state/ (only checkpoints written by "
                              f"train.py carry optimizer state)")
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    state = {"optim": get_optimizer_state_dict(model, optimizer)}
    _dcp_load(state, path)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optim"])
    for group, settings in zip(optimizer.param_groups, groups):
        group.update(settings)
    return read_train_state(path)


# ----------------------------------------------------------------------------------------------------------
# export: Hugging Face weights from a checkpoint's train_state/, on one process, no GPU needed


def export(path, out, dtype=None):
    meta = read_train_state(path)
    config = LlamaConfig.from_hf_dict(meta["model_config"])
    with torch.device("meta"):
        model = Llama(config)
    model = model.to_empty(device="cpu").to(getattr(torch, meta["param_dtype"]))
    state = {"model": model.state_dict()}
    _dcp_load(state, path)
    model.load_state_dict(state["model"])
    dtype = getattr(torch, dtype) if dtype else None
    hf_config = json.load(open(os.path.join(path, "config.json"))) if os.path.exists(
        os.path.join(path, "config.json")) else {}
    os.makedirs(out, exist_ok=True)
    save_safetensors(model.state_dict(), out, dtype=dtype)
    write_hf_config(config, out, dtype or model.head_weight.dtype,
                    max_position_embeddings=hf_config.get("max_position_embeddings"))
    for f in os.listdir(path):  # the tokenizer files travel with the weights
        kind = f.startswith(("tokenizer", "special_tokens", "generation_config"))
        if kind and os.path.isfile(os.path.join(path, f)):
            shutil.copy(os.path.join(path, f), os.path.join(out, f))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a checkpoint's weights as a Hugging Face directory.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="HF safetensors + config.json + tokenizer from CHECKPOINT/train_state")
    e.add_argument("checkpoint")
    e.add_argument("out")
    e.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "float64"], default=None,
                   help="default: the master weights' dtype")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # imports done: Ctrl-C raises KeyboardInterrupt
    try:
        if not os.path.isdir(args.checkpoint):
            raise CheckpointError(f"no checkpoint directory at {args.checkpoint}")
        out = export(args.checkpoint, args.out, args.dtype)
    except (CheckpointError, ValueError, OSError) as err:
        sys.exit(f"error: {describe(err, args.out) if isinstance(err, OSError) else err}")
    except KeyboardInterrupt:  # the weights' shards are renamed into place only when all are written
        common.fail(f"interrupted; no partial weights were left in {args.out}", 130)
    except Exception as err:  # safetensors' own error type, for a full disk among others
        if type(err).__module__.split(".")[0] != "safetensors":
            raise
        sys.exit(f"error: {describe(err, args.out)}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
