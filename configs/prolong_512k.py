# ProLong stage 2: from the 64K checkpoint (weights and optimizer state; the LR schedule restarts) to
# 512K-token sequences with 8-way Ulysses sequence parallelism (paper: 2,500 steps x 8M tokens, about 20B
# tokens), RoPE base 1.28e8, and a length curriculum: part of the long data at 512K, part still at 64K (eight
# 64K pieces packed into one 512K sequence, each its own document).
#
# Hardware: a multiple of 8 GPUs with 80 GB or more (each 512K sequence is spread over an SP group of 8 GPUs,
# 64K tokens each); the data-parallel size (GPUs / 8) must divide the 16 sequences of a step. Time, estimated
# from throughput.step_flops for this mixture (not measured): ~1.5 EFLOP per step (attention over 512K documents
# dominates), ~8 minutes a step on 8 H100s at 40% MFU (~14 days), so plan on 64 GPUs (~1 minute a step, ~1.7
# days).
#   torchrun --nnodes 8 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 train.py \
#       configs/prolong_512k.py
#
# Data: princeton-nlp/prolong-data-512K imported per domain with `python data.py import-mds`.

out_dir = "runs/prolong-512k"
init_from = "runs/prolong-64k/step_0005000"
load_optimizer = True
rope_theta = 1.28e8
sp_size = 8

data_root = "data/prolong-512K"
seq_len = 524288
mixture = [
    dict(path="thestackv1_concat_by_repo-524288", proportion=0.15, length=524288, mode="chunk"),
    dict(path="thestackv1_concat_by_repo-65536", proportion=0.15, length=65536, mode="chunk"),
    dict(path="book-524288", proportion=0.05, length=524288, mode="chunk"),
    dict(path="book-65536", proportion=0.25, length=65536, mode="chunk"),
    dict(path="textbooks", proportion=0.03, length=524288, mode="chunk"),
    # ShortMix, unchanged: short documents packed into 64K pieces
    dict(path="fineweb-edu", proportion=0.10, length=65536, mode="pack"),
    dict(path="fineweb-2023-50", proportion=0.10, length=65536, mode="pack"),
    dict(path="stackexchange", proportion=0.04, length=65536, mode="pack"),
    dict(path="dolmawiki", proportion=0.04, length=65536, mode="pack"),
    dict(path="tuluv2", proportion=0.03, length=65536, mode="pack"),
    dict(path="arxiv", proportion=0.03, length=65536, mode="pack"),
    dict(path="openwebmath", proportion=0.03, length=65536, mode="pack"),
]

tokens_per_step = 8 * 1024 * 1024  # 16 sequences
max_steps = 2500
checkpoint_interval = 250
keep_checkpoints = 3

# Optimiser, schedule and precision: settings.DEFAULTS, which are the paper's (AdamW, lr 1e-5 warmed up over
# 10% of the steps then cosine-decayed to 1e-6, weight decay 0.1, betas 0.9/0.95, gradient clipping 1.0, bf16
# compute over fp32 master weights, activation checkpointing, one sequence per micro-batch). Its released
# script used lr 5e-6 for this stage.
