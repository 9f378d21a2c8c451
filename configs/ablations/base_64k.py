# Ablation base setting (paper appendix B.4), and the reference arm of every ablation here: continued training
# of Llama-3-8B *base* at 64K for 5B tokens (1,280 steps x 4M tokens), the recipe's optimiser, RoPE base 8e6,
# no textbooks, long data 60% (code repositories 30%, books 30%) and ShortMix 40% as in the paper's Table 5.
# This one run is the "1:1 books:repos" arm of Table 4, the 60% point of Figure 3, the ShortMix arm of Table
# 6, the 8e6 arm of Table 18, document masking on (Table 20), Base initialisation (Table 21) and reordering on
# (Table 15). The paper judges every arm after SFT on UltraChat (configs/sft_ultrachat.py, from this run's
# last checkpoint).
#
# Hardware: as configs/prolong_64k.py, 8 GPUs with 80 GB or more (H100/H200/A100-80GB), bf16; any GPU count
# that divides the 64 sequences of a step. Time, scaled from that file's estimate (not measured): ~2.1 minutes
# a step on 8 H100s at 40% MFU, so ~45 hours for the 1,280 steps.
#   torchrun --nproc_per_node 8 train.py configs/ablations/base_64k.py
#   torchrun --nproc_per_node 8 sft.py configs/sft_ultrachat.py \
#       --init_from=runs/ablations/base_64k/step_0001280 --out_dir=runs/ablations/base_64k-sft
# Every arm runs the same way, from any directory: its file name in place of base_64k. Data:
# princeton-nlp/prolong-data-64K imported per domain into data/prolong-64K (`python data.py import-mds`).

# The recipe's 64K stage (optimiser, schedule shape, precision, RoPE base 8e6, 64K sequences, data root); what
# follows is all that the ablation base changes: the init, the data mixture, the length of the run, and the
# paper's own micro-batch ordering (no balanced steps), so that no_reorder.py measures what Table 15 measured.
include("../prolong_64k.py")
include("_mixture.py")  # the ablations' long/short split and ShortMix, shared with base_512k.py
_gpus = 8  # the GPU count this arm is checked for (tests/test_ablations.py)

out_dir = "runs/ablations/base_64k"
init_from = "meta-llama/Meta-Llama-3-8B"  # the base model, not the recipe's Instruct
mixture = _mixture(_long, _short, _books_repos, _shortmix)

max_steps = 1280  # 5B tokens of 4M
balance_steps = False  # each rank its own sequences, micro-batches sorted (sort_microbatches), as the paper
checkpoint_interval = 320
keep_checkpoints = 2
