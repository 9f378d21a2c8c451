# ProLong stage 1: continue training Llama-3-8B-Instruct on 64K-token sequences (paper: 5,000 steps x 4M
# tokens, about 20B tokens), RoPE base raised from 500,000 to 8e6.
#
# Hardware: NVIDIA GPUs with 80 GB or more (H100/H200/A100-80GB), bf16, one node or several through torchrun's
# rendezvous; any GPU count that divides the 64 sequences of a step (each GPU runs 64 / N micro-batches of one
# 64K sequence). Memory per GPU on 8 GPUs: ~16 GB of sharded weights, gradients and Adam state, ~16 GB of
# per-block activation checkpoints, ~14 GiB of recomputation. Time, estimated from throughput.step_flops (not
# measured): ~405 PFLOP per step (attention over 64K documents is half of it), so ~2.1 minutes a step on 8
# H100s at 40% MFU, ~7.5 days for the run; ~1 day on 64 GPUs.
#   torchrun --nproc_per_node 8 train.py configs/prolong_64k.py
#   torchrun --nnodes 8 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py \
#       configs/prolong_64k.py
#
# Data: princeton-nlp/prolong-data-64K imported per domain with `python data.py import-mds SRC/NAME
# data_root/NAME` (or your own domains tokenised with data.py; a long domain tokenised once may appear at
# several lengths).

out_dir = "runs/prolong-64k"
init_from = "meta-llama/Meta-Llama-3-8B-Instruct"
rope_theta = 8e6

data_root = "data/prolong-64K"
seq_len = 65536
mixture = [
    # long data: documents of at least 64K tokens, cut into single-document 64K chunks
    # code repositories, one document each (all files of a repository concatenated)
    dict(path="thestackv1_concat_by_repo-65536", proportion=0.30, length=65536, mode="chunk"),
    dict(path="book-65536", proportion=0.30, length=65536, mode="chunk"),
    dict(path="textbooks", proportion=0.03, length=65536, mode="chunk"),
    # ShortMix (37%): short documents packed into 64K
    dict(path="fineweb-edu", proportion=0.10, length=65536, mode="pack"),
    dict(path="fineweb-2023-50", proportion=0.10, length=65536, mode="pack"),
    dict(path="stackexchange", proportion=0.04, length=65536, mode="pack"),
    dict(path="dolmawiki", proportion=0.04, length=65536, mode="pack"),
    dict(path="tuluv2", proportion=0.03, length=65536, mode="pack"),
    dict(path="arxiv", proportion=0.03, length=65536, mode="pack"),
    dict(path="openwebmath", proportion=0.03, length=65536, mode="pack"),
]

tokens_per_step = 4 * 1024 * 1024  # 64 sequences
max_steps = 5000
checkpoint_interval = 500
keep_checkpoints = 3

# Optimiser, schedule and precision: settings.DEFAULTS, which are the paper's (AdamW, lr 1e-5 warmed up over
# 10% of the steps then cosine-decayed to 1e-6, weight decay 0.1, betas 0.9/0.95, gradient clipping 1.0, bf16
# compute over fp32 master weights, activation checkpointing, one sequence per micro-batch).
