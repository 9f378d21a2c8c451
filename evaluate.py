"""
Long-context evaluation of a checkpoint: HELMET's tasks (generated offline, or read from HELMET's data folder), and
perplexity by position.

    python evaluate.py --ckpt DIR_OR_HUB_ID [--tasks json_kv,ruler_niah_mv,...] [--lengths 8192,16384]
                       [--samples 100] [--helmet-data HELMET/data] [--ppl DOMAIN_DIR_OR_TEXT] [--out results.json]

This file is the runner: it loads a checkpoint, and for every task of the one registry (tasks/__init__.py) and
every length it asks the task for its records, generates, asks the task to score each output, and prints and
writes the results; it knows nothing else about a task. Perplexity by position: per-token losses of each
document's first `length` tokens, summed per position bucket and over the second half of each document (the
ProLong paper's "last 32K of 64K" measure).
"""

import json
import math
import os
import re
import signal
import time

import common

if __name__ == "__main__":
    common.exit_on_interrupt()  # Ctrl-C while torch imports: one line and 130, not a traceback

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import ArgumentParser, UserError, atomic_open, log, number, one_line_errors, read_json  # noqa: E402
from tasks import (GENERATED, PAPER_CATEGORIES, RULER, RULER_CATEGORIES, SYNTHETIC, TASKS, VERSIONS, Run,  # noqa: E402
                   category_averages, check_helmet_data, use_version)
from tasks.ruler import ruler_scores  # noqa: E402
from tasks.common import fit_context  # noqa: E402
from tasks.judge import Judge, judged_mean  # noqa: E402
from tokenizer import DataError, load_tokenizer  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# the checkpoint


def load_checkpoint(ckpt, tokenizer=None, device="cpu", dtype=torch.float32):
    import attention  # imported here so that this file's functions can be used without the model code
    from model import Llama, resolve_checkpoint
    attention.activate(device)  # once, before any model runs: FA3 on Hopper where it is installed (train.py too)
    path = resolve_checkpoint(ckpt)  # a missing local path fails here at once; a hub id is downloaded (once)
    try:  # "llama3" names the Llama-3 tokenizer that the llama-models package ships
        tok = load_tokenizer(path if tokenizer is None else None if tokenizer == "llama3" else tokenizer)
    except DataError as e:
        raise UserError(f"no tokenizer for {ckpt}: {e}; pass --tokenizer SPEC: a tokenizer.model file, a "
                        f"directory holding one, a hub id, or 'llama3' for the Llama-3 tokenizer of the llama-models "
                        f"package")
    read_json(os.path.join(path, "config.json"), dict)  # a JSONDecodeError from model.py would not name the file
    model = Llama.from_pretrained(path, dtype=dtype, device=device).eval()  # after the tokenizer: fail fast
    gen_config = os.path.join(path, "generation_config.json")
    if os.path.exists(gen_config):  # HELMET stops at model.generation_config.eos_token_id: transformers reads it
        # from generation_config.json when there is one (Instruct's lists eot and eom), else from config.json
        model.config.eos_token_id = read_json(gen_config, dict).get("eos_token_id") or model.config.eos_token_id
    if tok.n_vocab > model.config.vocab_size:
        raise UserError(f"tokenizer has {tok.n_vocab} tokens but the model's vocabulary is "
                        f"{model.config.vocab_size}: pass the checkpoint's own tokenizer with --tokenizer")
    return model, tok

# ----------------------------------------------------------------------------------------------------------------
# running a model on a task


def stop_tokens(tok, model, newline):
    """HELMET's stop set: the model's eos ids and nothing else (a base model does not stop at <|eot_id|>)."""
    eos = model.config.eos_token_id
    stops = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None} or {tok.eos_id}
    if newline:  # HELMET's stop_newline: the tokens that are exactly "\n" and "\n\n"
        stops |= {ids[0] for ids in (tok.encode("\n"), tok.encode("\n\n")) if len(ids) == 1}
    return tuple(sorted(s for s in stops if s is not None))


def is_instruct(model, tok):
    """--chat auto: an instruct model stops at end-of-turn (its generation_config lists <|eot_id|> among the eos ids:
    Llama-3 Instruct and checkpoints of sft.py do, base models do not)."""
    eos = model.config.eos_token_id
    return tok.eot_id in (eos if isinstance(eos, (list, tuple)) else [eos]) and tok.eot_id != tok.eos_id


def run_task(model, tok, task, records, length, opts, write_sample=None):
    """Generate for each record and score it; each per-sample result goes to `write_sample` as it is made."""
    spec = TASKS[task]
    chat = spec.chat and opts.get("chat", False)
    stops = stop_tokens(tok, model, spec.stop_newline and opts.get("stop_newline", False))
    special = set(tok.special_tokens.values())
    results, start = [], time.time()
    for i, rec in enumerate(records):
        ids, fields = fit_context(spec, spec.prompt(rec), tok, length - spec.gen_len, chat)
        new = model.generate(ids, max_new_tokens=spec.gen_len, temperature=0.0, stop_tokens=stops,
                             prefill_chunk=opts.get("prefill_chunk", 4096))
        text = tok.decode([t for t in new if t not in special])
        # completion mode: HELMET scores the output with the system template it completed put back in front
        output = text if chat else spec.templates[1].format(**fields) + text
        metrics = spec.score(output, rec)
        result = {"task": task, "length": length, "index": i, "id": rec.get("id", rec.get("qid")),
                  "depth": rec.get("depth"), "input_len": len(ids), "output_len": len(new), "output": text,
                  "answer": rec.get("answer", rec.get("outputs", rec.get("answers"))), **metrics}
        if spec.judge is not None and opts.get("judge") is not None:
            result.update(spec.judge(opts["judge"], output, rec))  # HELMET judges the stored output
        results.append(result)
        if write_sample:
            write_sample(result)
        elapsed = time.time() - start
        eta = elapsed / (i + 1) * (len(records) - i - 1)
        log(f"  {task} @ {length}: {i + 1}/{len(records)} {elapsed:.0f}s, ETA {eta:.0f}s")
    return results


def summarize(results, metric):
    """Mean x100 (HELMET's averaged_metrics) of the task's metric, overall and by depth. A judged metric is HELMET's
    judged mean (unparsed judge answers left out; gpt-4-score x100/3); without a judge, ROUGE-L F1 is reported
    instead and the summary says which metric is missing."""
    if results and metric not in results[0]:
        return {**summarize(results, "rougeL_f1"), "missing": metric}
    if metric.startswith("gpt-4"):
        score = judged_mean([r[metric] for r in results], metric)
        judged = sum(r[metric] is not None for r in results)
        return {"metric": metric, "score": float("nan") if score is None else score, "n": len(results),
                "judged": judged, "rougeL_f1": 100 * float(np.mean([r["rougeL_f1"] for r in results])),
                "by_depth": {}}  # ROUGE-L beside the judged score, as HELMET's results files have it
    by_depth, depths = {}, {r["depth"] for r in results if r["depth"] is not None}
    for r in results:  # JSON KV has six depths; RULER's random needle positions are put in tenths
        if r["depth"] is not None:
            d = r["depth"] if len(depths) <= 10 else math.floor(r["depth"] * 10) / 10
            by_depth.setdefault(str(d), []).append(r[metric])
    return {"metric": metric, "score": 100 * float(np.mean([r[metric] for r in results])), "n": len(results),
            "by_depth": {d: 100 * float(np.mean(v)) for d, v in sorted(by_depth.items())}}

# ----------------------------------------------------------------------------------------------------------------
# perplexity by position


def read_documents(path, tok, max_docs, length):
    """Token documents from a data.py domain directory (NAME.bin/.idx/.json shards), or a text file cut into
    documents of `length` tokens, each BOS first."""
    if os.path.isdir(path):
        from data import open_domain
        domain = open_domain(path)
        made_with = domain.meta.get("tokenizer_sha256")
        if made_with and made_with != getattr(tok, "sha256", made_with):
            log(f"warning: {path} was tokenized with another tokenizer ({domain.meta.get('tokenizer')}) than the "
                f"checkpoint's: its perplexity means little")
        return [domain.tokens(i) for i in range(min(len(domain), max_docs))]
    ids = tok.encode(read_text(path))
    bos = bos_ids(tok)
    return [np.array(bos + ids[i:i + length - len(bos)], dtype=np.int64)
            for i in range(0, len(ids), length - len(bos))][:max_docs]


def read_text(path):
    """A --ppl text file's text; a file that is not UTF-8 is an error naming it and the byte."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--ppl {path}: invalid UTF-8 at byte {e.start}; give a UTF-8 text file or a token domain "
                        f"directory") from None


def bos_ids(tok):
    """[BOS] if the tokenizer starts a text with one (Llama-3), else nothing (Qwen)."""
    return [tok.bos_id] if getattr(tok, "add_bos", True) else []


@torch.no_grad()
def perplexity_by_position(model, docs, length, buckets=8):
    """Mean loss per bucket of target positions (token p predicted from tokens < p) over each document's first
    `length` tokens, and over the second half of each (so truncated) document."""
    device = model.head_weight.device
    loss_sum, count = np.zeros(length), np.zeros(length)
    half_sum, half_n, n_docs = 0.0, 0, 0
    for doc in docs:
        ids = torch.as_tensor(np.asarray(doc[:length], dtype=np.int64), device=device)
        T = ids.numel()
        if T < 2:
            continue
        labels = torch.full_like(ids, -100)
        labels[:-1] = ids[1:]  # labels[i] is the target at position i + 1
        losses, _ = model(ids, labels=labels, reduction="none")
        losses = losses[:-1].double().cpu().numpy()
        loss_sum[1:T] += losses
        count[1:T] += 1
        half_sum += losses[T // 2 - 1:].sum()
        half_n += T - T // 2
        n_docs += 1
    edges = np.linspace(0, length, buckets + 1).astype(int)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        n = count[lo:hi].sum()
        if n:
            rows.append({"positions": [int(lo), int(hi)], "tokens": int(n), "loss": float(loss_sum[lo:hi].sum() / n)})
    if not n_docs:
        raise UserError("no document with at least 2 tokens to measure perplexity on")
    total = float(loss_sum.sum() / count.sum())
    return {"length": length, "documents": n_docs, "tokens": int(count.sum()), "loss": total,
            "second_half_loss": float(half_sum / half_n), "second_half_ppl": math.exp(half_sum / half_n),
            "buckets": rows}

# ----------------------------------------------------------------------------------------------------------------
# short-context tasks through lm-eval-harness (only when it is installed)


def lm_eval_adapter(model, tok, LM):
    """An lm_eval `LM` over our model and tokenizer: loglikelihood, rolling loglikelihood and generate_until."""
    device, window = model.head_weight.device, model.config.max_position_embeddings

    @torch.no_grad()
    def logprobs(ctx_ids, cont_ids):
        ids = (ctx_ids + cont_ids)[-(window + 1):]
        logits = model(torch.tensor(ids[:-1], device=device)).float().log_softmax(-1)[-len(cont_ids):]
        target = torch.tensor(cont_ids, device=device)
        return float(logits.gather(-1, target[:, None]).sum()), bool((logits.argmax(-1) == target).all())

    class ProLongLM(LM):
        def loglikelihood(self, requests):
            out = []
            for r in requests:
                ctx, cont = r.args
                spaces = len(ctx) - len(ctx.rstrip())  # lm-eval's convention: context whitespace goes with the
                ctx, cont = ctx[:len(ctx) - spaces], ctx[len(ctx) - spaces:] + cont  # continuation
                bos = bos_ids(tok) or ([] if ctx else [tok.prefix_id])  # no BOS: lm-eval's prefix for no context
                ctx_ids = bos + tok.encode(ctx)
                whole = bos + tok.encode(ctx + cont)
                out.append(logprobs(ctx_ids, whole[len(ctx_ids):]))
            return out

        def loglikelihood_rolling(self, requests):
            out = []
            for r in requests:
                ids = [tok.prefix_id] + tok.encode(r.args[0])  # lm-eval's prefix_token_id: BOS, else eos_token
                total = 0.0
                for s in range(1, len(ids), window - 1):  # lm-eval's disjoint windows with one token of context
                    total += logprobs(ids[s - 1:s], ids[s:s + window - 1])[0]
                out.append(total)
            return out

        def generate_until(self, requests):
            out = []
            for r in requests:
                ctx, kwargs = r.args
                ids = (bos_ids(tok) + tok.encode(ctx))[-window:]
                new = model.generate(ids, max_new_tokens=kwargs.get("max_gen_toks", 256),
                                     stop_tokens=stop_tokens(tok, model, False))
                text = tok.decode(new)
                for s in kwargs.get("until", []) or []:
                    text = text.split(s)[0]
                out.append(text)
            return out

    return ProLongLM()


def lm_eval_tasks(tasks, include=None):
    """lm-eval's TaskManager once the task names are known to it, before any model is loaded (an unknown name must
    not wait for the whole HELMET run); None, with a note, when lm-eval is not installed."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        log(f"lm-eval-harness is not installed, so the short-context tasks {tasks} will be skipped "
            f"(pip install lm-eval to run them)")
        return None
    if include and not os.path.isdir(include):
        raise UserError(f"--lm-eval-include {include}: no such directory (a folder of lm-eval task YAMLs)")
    manager = TaskManager(include_path=include) if include else TaskManager()
    unknown = [t for t in tasks if t not in set(manager.all_tasks)]
    if unknown:
        import difflib
        near = sorted({m for t in unknown for m in difflib.get_close_matches(t, manager.all_tasks, 3)})
        raise UserError(f"--lm-eval: no lm-eval task {', '.join(unknown)}" + (f" (close: {', '.join(near)})"
                                                                             if near else ""))
    return manager


def run_lm_eval(model, tok, tasks, limit=None, include=None, manager=None):
    """lm-eval-harness tasks by name; `include` is a folder of task YAMLs of one's own (lm-eval's include_path)."""
    try:
        import lm_eval
        from lm_eval.api.model import LM
    except ImportError:
        log(f"lm-eval-harness is not installed, so the short-context tasks {tasks} are skipped "
            f"(pip install lm-eval to run them)")
        return None
    if manager is None and include:
        from lm_eval.tasks import TaskManager
        manager = TaskManager(include_path=include)
    res = lm_eval.simple_evaluate(model=lm_eval_adapter(model, tok, LM), tasks=tasks, limit=limit,
                                  task_manager=manager)
    return res["results"]


# ----------------------------------------------------------------------------------------------------------------
# output: table, heatmap


def format_table(scores, averages, lengths, first="task", title=None):
    """Scores by length, then one row per category average, and which tasks each average is made of."""
    lines = ([title] if title else []) + [f"{first:<22}" + "".join(f"{L:>10}" for L in lengths)]
    for name, row in list(scores.items()) + [(f"{c} (avg)", {L: v["score"] for L, v in r.items()})
                                             for c, r in averages.items()]:
        lines.append(f"{name:<22}" + "".join(f"{row[L]:>10.1f}" if L in row else f"{'-':>10}" for L in lengths))
    for c, r in averages.items():
        used = sorted({t for v in r.values() for t in v["tasks"]})
        lines.append(f"  {c} = mean of {', '.join(used)}" +
                     ("" if all(v["complete"] for v in r.values()) else " (only these ran: a partial average)"))
    return "\n".join(lines)


def heatmap(results, path):
    """JSON KV accuracy by depth (rows) and length (columns) as a PNG, when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no JSON KV heatmap (pip install matplotlib)")
        return None
    lengths = sorted(results, key=int)
    depths = sorted({d for L in lengths for d in results[L]["by_depth"]}, key=float)
    grid = np.array([[results[L]["by_depth"].get(d, np.nan) for L in lengths] for d in depths])
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2, 0.5 * len(depths) + 1.5))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
    ax.set_yticks(range(len(depths)), depths)
    ax.set_xlabel("length (tokens)")
    ax.set_ylabel("depth of the gold key")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "" if np.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="SubEM")
    ax.set_title("JSON KV")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:  # never a half-written picture
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path

# ----------------------------------------------------------------------------------------------------------------
# the command line


def parser():
    import argparse
    p = ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint directory or hub id (HF-format Llama)")
    p.add_argument("--tokenizer", default=None, help="tokenizer spec when the checkpoint has none (data.py)")
    p.add_argument("--tasks", default=None, help=f"comma list from {', '.join(TASKS)}, or ruler (RULER's 13 "
                   "tasks), or none; default: the synthetic recall tasks, plus every task whose files --helmet-data "
                   "holds")
    p.add_argument("--lengths", default=None, help="comma list of token lengths, 8k = 8192 (default: HELMET's "
                   "8k-128k, then powers of two, up to the checkpoint's max_position_embeddings, else that)")
    p.add_argument("--samples", type=number(int, 1), default=None, help="samples per task and length (HELMET: 100; "
                   "ICL 500)")
    p.add_argument("--seed", type=number(int, 0), default=42)
    p.add_argument("--helmet-data", default=None, help="HELMET's data/ folder: read the published files")
    p.add_argument("--ruler-qa", default=None, help="RULER's scripts/data/synthetic/json/ folder (squad.json, "
                   "hotpotqa.json from its download_qa_dataset.sh): generate ruler_qa_1/2 offline")
    p.add_argument("--helmet-version", choices=list(VERSIONS), default="4526dfb", help="HELMET's commit to "
                   "follow: 4526dfb (its published numbers' code) or 985b73b (2024-10-04, its first public commit, "
                   "the closest to the ProLong paper's evaluation: ICL on 100 unbalanced samples, no length filters "
                   "for NarrativeQA / InfBench / Multi-LexSum, niah_mv's singular template, HotpotQA's _dep6 files)")
    p.add_argument("--stop-newline", action="store_true", help="stop RAG, re-rank and ICL at a newline as HELMET's "
                   "configs ask and its later refactor does; by default generate the full budget, as HELMET's "
                   "code at 4526dfb did (its --stop_newline flag never received the configs' stop_new_line), which "
                   "is what the published HELMET and ProLong numbers used")
    p.add_argument("--chat", choices=["auto", "on", "off"], default="auto", help="chat template for LongQA and "
                   "Summ, as HELMET does for instruct models (auto: when the checkpoint stops at <|eot_id|>)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible endpoint for HELMET's judged scores "
                   "(NarrativeQA, Summ), e.g. https://api.openai.com/v1; key from $OPENAI_API_KEY")
    p.add_argument("--judge-model", default="gpt-4o-2024-05-13", help="judge model (HELMET's: gpt-4o-2024-05-13)")
    p.add_argument("--judge-timeout", type=number(float, 0, above=True), default=120.0, help="seconds one judge "
                   "request may take, all of it (a silent or trickling endpoint fails then; default 120); a prompt's "
                   "retries stop at 3x this")
    p.add_argument("--length-tokenizer", default=None, help="tokenizer that sizes LongQA/Summ documents before "
                   "the model's own cut (HELMET: Llama-2's); default: the checkpoint's")
    p.add_argument("--ppl", default=None, help="token domain directory (data.py) or text file for perplexity")
    p.add_argument("--ppl-length", type=number(int, 2), default=None, help="tokens per document (default: the "
                   "longest length)")
    p.add_argument("--ppl-docs", type=number(int, 1), default=16)
    p.add_argument("--lm-eval", default=None, help="comma list of lm-eval-harness tasks (needs lm_eval)")
    p.add_argument("--lm-eval-limit", type=number(int, 1), default=None)
    p.add_argument("--lm-eval-include", default=None, help="folder of one's own lm-eval task YAMLs")
    p.add_argument("--prefill-chunk", type=number(int, 1), default=4096, help="prompt tokens per forward pass")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--out", default=None, help="results JSON (default: CKPT/eval_results.json for a local "
                   "checkpoint, else runs/eval/NAME.json); per-sample records go to OUT_samples.jsonl")
    return p


def main(argv=None):
    """The command's one exception boundary: every error a user can cause ends in one `error:` line."""
    args = parser().parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # imports are done: Ctrl-C unwinds from here
    with one_line_errors():
        try:
            return run(args)
        except (ValueError, DataError) as e:  # model.py's refusal of a config value, a damaged token file
            raise UserError(e) from None


def parse_lengths(text):
    """'8192,16k' -> [8192, 16384] (k = 1024 tokens)."""
    bad = [x for x in text.split(",") if not re.fullmatch(r"0*[1-9][0-9]*[kK]?", x.strip())]
    if bad:
        raise UserError(f"--lengths {text}: {bad[0]!r} is not a length; give positive token counts as 8192 or 8k "
                        f"(= 8192), comma-separated, e.g. 8k,16k,32768")
    return [int(x.strip().rstrip("kK")) * (1024 if x.strip()[-1] in "kK" else 1) for x in text.split(",")]


def default_lengths(window):
    """HELMET's 8K-128K, then longer powers of two, up to the checkpoint's max_position_embeddings; else that."""
    return [2**k for k in range(13, 64) if 2**k <= window] or [window]


def choose_tasks(args):
    """The tasks to run: --tasks, else the synthetic ones plus every task whose files --helmet-data holds."""
    use_version(args.helmet_version)  # first: the registry as that HELMET commit defines its tasks
    if args.tasks:
        tasks = [] if args.tasks == "none" else [x for t in args.tasks.split(",") for x in
                                                 (RULER if t == "ruler" else [t])]
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise UserError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
        need_files = [t for t in tasks if t not in GENERATED]
        if need_files and not args.helmet_data:
            raise UserError(f"{','.join(need_files)}: these tasks read HELMET's data files: pass --helmet-data DIR")
        return tasks
    if not args.helmet_data:
        return list(SYNTHETIC)
    check_helmet_data(args.helmet_data, list(TASKS), None)
    return [t for t in TASKS if TASKS[t].available(args.helmet_data)]


def run(args):
    tasks = choose_tasks(args)
    lengths = parse_lengths(args.lengths) if args.lengths else None
    check_helmet_data(args.helmet_data, tasks, lengths)  # before loading the model
    if args.ppl and not os.path.exists(args.ppl):
        raise UserError(f"--ppl {args.ppl}: no such file or directory (a token domain directory or a text file)")
    if args.ppl and not os.path.isdir(args.ppl):
        read_text(args.ppl)  # not UTF-8: fail now, not after the whole run
    manager = lm_eval_tasks(args.lm_eval.split(","), args.lm_eval_include) if args.lm_eval else None
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    model, tok = load_checkpoint(args.ckpt, args.tokenizer, args.device, dtype)
    length_tok = load_length_tokenizer(args.length_tokenizer, tok)
    window = model.config.max_position_embeddings
    if lengths is None:
        lengths = default_lengths(window)
        import memory  # the longest default length's KV cache may not fit beside the weights (512K: 64 GiB)
        lengths = memory.eval_lengths_that_fit(lengths, model, log)
        log(f"lengths {','.join(map(str, lengths))}: " + (
            f"HELMET's (8192 to 131072, then powers of two) up to the checkpoint's max_position_embeddings {window}"
            if window >= 8192 else "the checkpoint's max_position_embeddings, under HELMET's main 8192")
            + "; choose others with --lengths")
        check_helmet_data(args.helmet_data, tasks, lengths)
    for task in [] if args.helmet_data else tasks:  # generated tasks: a length too short fails before anything runs
        TASKS[task].check_length(min(lengths), tok)
    if max(lengths) > window and tasks:
        log(f"note: lengths above the model's max_position_embeddings ({window}) test extrapolation")
    chat = args.chat == "on" or (args.chat == "auto" and is_instruct(model, tok))
    judge = None
    if args.judge_url:
        judge = Judge(args.judge_url, args.judge_model, cache_path=None, timeout=args.judge_timeout)
    out = args.out or (os.path.join(args.ckpt, "eval_results.json") if os.path.isdir(args.ckpt)
                       else os.path.join("runs", "eval", args.ckpt.replace("/", "__") + ".json"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    stem = os.path.splitext(out)[0]
    samples_path = stem + "_samples.jsonl"
    if judge is not None:  # the judge's answers are cached next to the results: a rerun does not pay twice
        judge.cache_path = stem + "_judge_cache.jsonl"
    # A run writes beside the previous run's files and replaces them only when it has finished: one that fails or
    # is interrupted leaves them as they were, and what it measured in the .partial files.
    partial, samples_partial = stem + ".partial.json", stem + "_samples.partial.jsonl"
    samples_file = open(samples_partial, "w", encoding="utf-8")

    def write_sample(result):
        samples_file.write(json.dumps(result, default=lambda x: x.item() if hasattr(x, "item") else str(x)) + "\n")
        samples_file.flush()

    def save(path=partial):  # after every task and length, so a long run that dies keeps what it measured
        with atomic_open(path) as f:  # never a half-written results file
            json.dump(report, f, indent=1)

    protocol = {"helmet": f"princeton-nlp/HELMET at {args.helmet_version} " + (
                    "(April 2025: the code behind HELMET's published numbers)" if args.helmet_version == "4526dfb"
                    else "(2024-10-04, its first public commit: the closest to the ProLong paper's evaluation)"),
                "helmet_version": args.helmet_version,
                "stop_newline": "on (as HELMET's configs ask; its later refactor)" if args.stop_newline else
                "off (HELMET 4526dfb: full generation budget)",
                "chat_template": "on for LongQA and Summ" if chat else "off", "bos": getattr(tok, "add_bos", True),
                "judge": f"{args.judge_model} at {args.judge_url}" if judge else None,
                "length_tokenizer": getattr(length_tok or tok, "name", None)}
    report = {"ckpt": args.ckpt, "tokenizer": getattr(tok, "name", None), "args": vars(args), "lengths": lengths,
              "protocol": protocol, "samples_file": samples_partial, "tasks": {}, "skipped": [], "warnings": []}
    try:
        measure(args, model, tok, length_tok, tasks, lengths, chat, judge, manager, report, write_sample, save, stem)
    except BaseException:
        samples_file.close()
        if not os.path.getsize(samples_partial):
            os.remove(samples_partial)
        kept = [f for f in (partial, samples_partial) if os.path.exists(f)]
        log(f"{out} and {samples_path} are as they were" + (f"; what this run measured is in {' and '.join(kept)}"
                                                            if kept else ""))
        raise
    samples_file.close()
    os.replace(samples_partial, samples_path)
    report["samples_file"] = samples_path
    save(out)
    os.remove(partial)
    log(f"results written to {out}; per-sample outputs in {samples_path}")
    return report


def measure(args, model, tok, length_tok, tasks, lengths, chat, judge, manager, report, write_sample, save, stem):
    """Every task at every length, the tables, perplexity and lm-eval, into `report`."""
    scores = {}
    for task in tasks:
        spec = TASKS[task]
        setup = Run(args.helmet_data, args.samples or spec.samples, args.seed, tok, length_tok,  # HELMET's samples
                    judged=judge is not None, ruler_qa=args.ruler_qa, helmet_version=args.helmet_version)
        for length in lengths:
            records, source = spec.records(length, setup)
            if records is None:
                log(f"skip {source}")
                report["skipped"].append(source)
                continue
            if not records:  # never a NaN score in the averages
                raise UserError(f"{task} @ {length}: no sample to score in {source}")
            if spec.count(records) < setup.samples:  # HELMET runs what there is; say so, and keep it in the results
                short = f"{task} @ {length}: {spec.count(records)} samples, fewer than the {setup.samples} asked " \
                        f"({source} holds no more)"
                log(f"warning: {short}")
                report["warnings"].append(short)
            start = time.time()
            opts = {"chat": chat, "stop_newline": args.stop_newline, "judge": judge,
                    "prefill_chunk": args.prefill_chunk}
            results = run_task(model, tok, task, records, length, opts, write_sample)
            summary = summarize(results, spec.metric)
            report["tasks"].setdefault(task, {})[length] = {**summary, "source": source, "samples_asked": setup.samples,
                                                            "seconds": time.time() - start}
            if "missing" not in summary:  # a judged task without its judge stays out of the category averages
                scores.setdefault(task, {})[length] = summary["score"]
            if task in RULER:  # RULER's own score of the same outputs, for RULER's table
                report["tasks"][task][length]["ruler_score"] = ruler_scores(task, results)
            save()
    report["averages"] = category_averages(scores)
    report["paper_averages"] = category_averages(scores, PAPER_CATEGORIES)
    ruler = {t: {L: r["ruler_score"] for L, r in by_len.items()} for t, by_len in report["tasks"].items()
             if t in RULER}
    report["ruler_average"] = category_averages(ruler, RULER_CATEGORIES)
    table = {t: {L: r["score"] for L, r in by_len.items()} for t, by_len in report["tasks"].items()}
    if table:
        print(format_table(table, report["averages"], lengths, title="HELMET's categories"))
        print()
        print(format_table({}, report["paper_averages"], lengths, title="the ProLong paper's categories (Table 13)"))
        if ruler:
            print()
            print(format_table(ruler, report["ruler_average"], lengths, title="RULER's own scores (string_match_all;"
                               " _part for QA) and its average (the paper's Table 27)"))
        unjudged = sorted({f"{t} ({r['metric']} shown; {r['missing']} needs --judge-url)"
                           for t, by_len in report["tasks"].items() for r in by_len.values() if "missing" in r})
        if unjudged:
            print("not judged, so not averaged: " + "; ".join(unjudged))
    kv_depths = {L: r for L, r in report["tasks"].get("json_kv", {}).items() if r["by_depth"]}
    if kv_depths:
        print("\njson_kv SubEM by depth of the gold key")
        print(format_table({f"depth {d}": {L: r["by_depth"][d] for L, r in kv_depths.items() if d in r["by_depth"]}
                            for d in next(iter(kv_depths.values()))["by_depth"]}, {}, lengths, first="depth"))

    if args.ppl:
        length = args.ppl_length or max(lengths)
        ppl = perplexity_by_position(model, read_documents(args.ppl, tok, args.ppl_docs, length), length)
        report["perplexity"] = {"path": args.ppl, **ppl}
        print(f"\nloss by position on {args.ppl} ({ppl['documents']} documents, first {length} tokens)")
        for row in ppl["buckets"]:
            print(f"{row['positions'][0]:>8}-{row['positions'][1]:<8} loss {row['loss']:.4f}  "
                  f"ppl {math.exp(row['loss']):.2f}")
        print(f"second half of each document: loss {ppl['second_half_loss']:.4f}  ppl {ppl['second_half_ppl']:.2f}")
    if args.lm_eval:
        report["lm_eval"] = run_lm_eval(model, tok, args.lm_eval.split(","), args.lm_eval_limit,
                                        args.lm_eval_include, manager)
    if kv_depths:
        report["heatmap"] = heatmap(kv_depths, stem + "_json_kv.png")


def load_length_tokenizer(spec, tok):
    """The tokenizer that sizes LongQA/Summ documents (HELMET: Llama-2's); None: the checkpoint's own."""
    if spec is None:
        return None
    return load_tokenizer(spec)


if __name__ == "__main__":
    main()
