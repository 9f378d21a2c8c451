"""hf_checkpoint.py's writer: a directory that held another layout keeps no stale shard or index, weight files
get the mode every other file gets, and a failed write leaves no temporary behind."""
import json
import os

import pytest
import torch

import hf_checkpoint


def state(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    return {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(64, 64, generator=g) for i in range(n)}


def equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_new_layout_replaces_a_stale_one_in_both_directions(tmp_path):
    old, new = state(0), state(1)
    hf_checkpoint.save_safetensors(old, tmp_path, max_shard_bytes=40_000)  # 16 KiB tensors: 3 shards
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) == 3
    hf_checkpoint.save_safetensors(new, tmp_path)  # one file now: the old index and shards must go
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    assert equal(hf_checkpoint.read_safetensors(str(tmp_path)), new)
    hf_checkpoint.save_safetensors(old, tmp_path, max_shard_bytes=40_000)  # and back to shards
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" not in files and "model.safetensors.index.json" in files and len(files) == 4
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    assert set(index["weight_map"].values()) == set(files[:-1])
    assert equal(hf_checkpoint.read_safetensors(str(tmp_path)), old)


def test_weights_get_the_mode_of_the_other_files(tmp_path):
    """safetensors creates its files 0600; a colleague must be able to read a shared checkpoint (umask
    022)."""
    old = os.umask(0o022)
    try:
        hf_checkpoint.save_safetensors(state(0, 2), tmp_path)
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777  # noqa: E731
    assert mode("model.safetensors") == mode("plain.txt") == 0o644


def test_a_failed_write_leaves_no_temporary_shard(tmp_path, monkeypatch):
    real, calls = hf_checkpoint.save_file, []

    def full_on_the_second(tensors, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # what safetensors raises on a full disk (measured on a full tmpfs)
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, *args, **kwargs)
    monkeypatch.setattr(hf_checkpoint, "save_file", full_on_the_second)
    with pytest.raises(RuntimeError, match="No space left"):
        hf_checkpoint.save_safetensors(state(0), tmp_path, max_shard_bytes=40_000)
    assert os.listdir(tmp_path) == []
