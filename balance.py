"""
What balanced steps buy for a config, before any GPU is rented: `python bench.py balance CONFIG [--dp 8 16 64]`;
and measured on CPU: `python bench.py balance --cpu-run [STEPS]` (cpu_run).

With FSDP every micro-step runs at the pace of its slowest data-parallel rank (with sequence parallelism: its
slowest SP group), so a step costs the sum over micro-steps of the heaviest rank's work. This draws `--steps` steps
of sequences from the config's mixture, costs each sequence by the model FLOPs of its documents (throughput.py's
count: 6 x parameters per token plus 6 x head_dim x heads x layers x L^2 per document of L tokens), and prints the
expected step time of the paper's ordering (each rank its own sequences r, r + dp, ..., micro-batches sorted,
data.paper_step) against balanced steps (data.balance_step), for each data-parallel size.

Document lengths come from the domains on disk when they are all there (the sequences train.py would read, through
data.Mixture.sequence_lengths); otherwise from LENGTH_TABLE: long domains in `chunk` mode are exactly their
length whatever the data, and short documents barely matter to the cost (a 64K pack of 1K documents holds 1/64
of one 64K document's attention), so rough typical lengths suffice.
"""
import argparse
import os

import numpy as np

# Median document length (Llama-3 tokens) of the paper's short domains, for packs when the data is not on disk;
# lengths drawn log-normal around it (sigma 1). Rough public figures: a web page ~1K tokens, an arXiv paper ~10K.
LENGTH_TABLE = {"fineweb-edu": 1000, "fineweb-2023-50": 700, "stackexchange": 600, "dolmawiki": 600,
                "tuluv2": 600, "arxiv": 10000, "openwebmath": 1500}
DEFAULT_MEDIAN = 1000


def flop_cost(config):
    """cost(segment lengths) in model FLOPs, as throughput.step_flops counts them."""
    c = config
    per_layer = (c.hidden_size * c.head_dim * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
                 + 3 * c.hidden_size * c.intermediate_size)
    linear = 6 * (c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size)
    attention = 6 * c.head_dim * c.num_attention_heads * c.num_hidden_layers
    return lambda lengths: float(linear * np.sum(lengths) + attention * np.sum(np.square(lengths, dtype=float)))


def table_lengths(mixture, seq_len, n, seed=0):
    """Segment lengths of n sequences drawn from the mixture without its data (see the module docstring):
    the component of each sequence by its share of sequences, chunks exactly, packs from LENGTH_TABLE."""
    rng = np.random.default_rng(seed)
    per_seq = [seq_len // int(c["length"]) for c in mixture]
    share = np.array([c["proportion"] / (k * int(c["length"])) for c, k in zip(mixture, per_seq)])
    tails = [0] * len(mixture)  # packs: the cut document's remainder starts the next unit
    out = []
    for ci in rng.choice(len(mixture), size=n, p=share / share.sum()):
        c, length = mixture[ci], int(mixture[ci]["length"])
        segments = []
        for _ in range(per_seq[ci]):
            if c["mode"] == "chunk":
                segments.append(length)
                continue
            left, median = length, LENGTH_TABLE.get(os.path.basename(c["path"]), DEFAULT_MEDIAN)
            while left:
                doc = tails[ci] or max(1, int(rng.lognormal(np.log(median), 1.0)))
                piece = min(doc, left)
                segments.append(piece)
                tails[ci], left = doc - piece, left - piece
        if sum(segments) < seq_len:
            segments.append(seq_len - sum(segments))
        out.append(np.array(segments, np.int64))
    return out


def simulate(lengths, per_step, dp, per_micro, cost):
    """(mean paper step, mean balanced step, mean ideal step) in cost units over consecutive steps of `lengths`."""
    import data
    paper = balanced = ideal = 0.0
    steps = len(lengths) // per_step
    for s in range(steps):
        costs = [cost(x) for x in lengths[s * per_step:(s + 1) * per_step]]
        paper += data.step_time(costs, data.paper_step(costs, dp, per_micro))
        balanced += data.step_time(costs, data.balance_step(costs, dp, per_micro))
        ideal += sum(costs) / dp
    return paper / steps, balanced / steps, ideal / steps


def cpu_run(steps=8, seq_len=8192, reps=1):
    """Measured, not simulated: real 2-rank gloo train.py runs on CPU of a 1-layer model with a 512-token
    vocabulary (byte tokens, so that attention, not the output layer, is the cost) on a skewed mixture: 25% of
    the sequences one document of seq_len tokens, 75% packs of 128-512-token documents, 4 sequences per rank per
    step. The paper's ordering and balanced steps alternate, `reps` runs each; tokens/s over steps 2..steps."""
    import base64
    import json
    import shutil
    import subprocess
    import sys
    import tempfile

    import tokenfiles
    from tokenizer import load_tokenizer
    root = tempfile.mkdtemp(prefix="balance-run-")
    vocab = os.path.join(root, "bytes.tiktoken")
    with open(vocab, "w") as f:
        f.writelines(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256))
    meta = tokenfiles.token_meta(load_tokenizer(vocab), "random bytes")
    rng = np.random.default_rng(0)
    for name, sizes in (("long", [seq_len] * 8), ("short", rng.integers(128, 512, 2000))):
        with tokenfiles.ShardWriter(os.path.join(root, name), meta) as w:
            for n in sizes:
                w.add(rng.integers(0, 256, int(n)))
                w.end_document()
    base = dict(data_root=root, tokenizer=vocab, seq_len=seq_len, tokens_per_step=8 * seq_len, max_steps=steps,
                mixture=[dict(path="long", proportion=0.25, length=seq_len, mode="chunk"),
                         dict(path="short", proportion=0.75, length=seq_len, mode="pack")],
                model_overrides={"vocab_size": 512, "num_hidden_layers": 1}, compute_dtype="float32",
                activation_checkpointing=False, allow_repeat=True, hf_weights=False, warmup_fraction=0.0)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    here = os.path.dirname(os.path.abspath(__file__))
    results = {False: [], True: []}
    for rep in range(reps):
        for balanced in (False, True):
            out = os.path.join(root, f"run-{balanced}-{rep}")
            config = os.path.join(root, f"config-{balanced}-{rep}.py")
            with open(config, "w") as f:
                f.writelines(f"{k} = {v!r}\n" for k, v in dict(base, out_dir=out, balance_steps=balanced).items())
            before = _busy_cpu_seconds()
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node=2", os.path.join(here, "train.py"), config], env=env,
                                  cwd=here, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"train.py failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            records = map(json.loads, open(os.path.join(out, "metrics.jsonl")))
            times = [r["step_s"] for r in records if "step_s" in r]
            busy = _busy_cpu_seconds() - before
            results[balanced].append((base["tokens_per_step"] * (len(times) - 1) / sum(times[1:]), busy))
            print(f"{'balanced' if balanced else 'paper':<9} run {rep + 1}: {results[balanced][-1][0]:,.0f} "
                  f"tokens/s "
                  f"(steps 2-{len(times)}; all processes' CPU seconds during the run {busy:.0f}, its own ~2 x "
                  f"{sum(times):.0f})", flush=True)
    shutil.rmtree(root)
    paper, balanced = (float(np.median([t for t, _ in results[k]])) for k in (False, True))
    print(f"2 ranks, CPU, skewed mixture: paper ordering {paper:,.0f} tokens/s, balanced {balanced:,.0f} tokens/s "
          f"({balanced / paper:.2f}x)")


def _busy_cpu_seconds():
    fields = open("/proc/stat").readline().split()[1:]
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6)) / os.sysconf("SC_CLK_TCK")


def main(argv):
    import data
    import settings
    from model import LlamaConfig
    if argv[:1] == ["--cpu-run"]:  # python bench.py balance --cpu-run [STEPS]
        return cpu_run(*(int(a) for a in argv[1:2]))
    ap = argparse.ArgumentParser(prog="bench.py balance", description=__doc__.strip().split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("--dp", type=int, nargs="+", default=[8, 16, 64],
                    help="data-parallel sizes (with sp_size > 1: SP groups)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--model", default="llama3_8b", choices=("tiny", "llama3_2_1b", "llama3_8b"),
                    help="the shape whose FLOPs cost a sequence")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = settings.load_config([args.config])
    seq_len, per_micro = cfg["seq_len"], cfg["micro_batch_sequences"]
    per_step = cfg["tokens_per_step"] // seq_len
    paths = [os.path.join(cfg["data_root"], c["path"]) for c in cfg["mixture"]]
    n = args.steps * per_step
    if paths and all(os.path.isdir(p) for p in paths):
        mix = data.Mixture([dict(c, path=p) for c, p in zip(cfg["mixture"], paths)], seq_len, seed=cfg["seed"],
                           allow_repeat=True)
        lengths, source = [mix.sequence_lengths(g) for g in range(n)], "the domains on disk"
    else:
        lengths = table_lengths(cfg["mixture"], seq_len, n, args.seed)
        source = "balance.LENGTH_TABLE (data not on disk)"
    cost = flop_cost(getattr(LlamaConfig, args.model)())
    single = np.mean([len(x) == 1 for x in lengths])
    print(f"bench.py balance {args.config}: {args.steps} steps of {per_step} sequences x {seq_len:,} tokens, "
          f"{100 * single:.0f}% of them one document; lengths from {source}; cost = {args.model} model FLOPs")
    print(f"{'dp':>4} {'seq/rank':>8} {'micro-steps':>11} {'paper PFLOP':>12} {'balanced':>9} {'ideal':>9} "
          f"{'paper / balanced':>17}")
    for dp in args.dp:
        if per_step % (dp * per_micro):
            print(f"{dp:>4} {'n/a':>8}  ({per_step} sequences per step do not fill {dp} ranks x {per_micro})")
            continue
        paper, balanced, ideal = simulate(lengths, per_step, dp, per_micro, cost)
        print(f"{dp:>4} {per_step // dp:>8} {per_step // (dp * per_micro):>11} {paper / 1e15:>12.1f} "
              f"{balanced / 1e15:>9.1f} {ideal / 1e15:>9.1f} {paper / balanced:>16.3f}x")
