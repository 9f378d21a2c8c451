# Ablation base setting (paper appendix B.4), and the reference arm of every ablation here: continued training of
# Llama-3-8B *base* at 64K for 5B tokens (1,280 steps x 4M tokens), the recipe's optimiser, RoPE base 8e6, no
# textbooks, long data 60% (code repositories 30%, books 30%) and ShortMix 40% as in the paper's Table 5. This one
# run is the "1:1 books:repos" arm of Table 4, the 60% point of Figure 3, the ShortMix arm of Table 6, the 8e6 arm of
# Table 18, document masking on (Table 20), Base initialisation (Table 21) and reordering on (Table 15). The paper
# judges every arm after SFT on UltraChat (configs/sft_ultrachat.py, from this run's last checkpoint).
#
# Hardware: as configs/prolong_64k.py, 8 GPUs with 80 GB or more (H100/H200/A100-80GB), bf16; any GPU count that
# divides the 64 sequences of a step. Time, scaled from that file's estimate (not measured): ~2.1 minutes a step on
# 8 H100s at 40% MFU, so ~45 hours for the 1,280 steps.
#   torchrun --nproc_per_node 8 train.py configs/ablations/base_64k.py
#   torchrun --nproc_per_node 8 sft.py configs/sft_ultrachat.py --init_from=runs/ablations/base_64k/step_0001280 \
#       --out_dir=runs/ablations/base_64k-sft
# Every arm runs the same way: its file name in place of base_64k (arms exec this file, so run from the repository
# root). Data: princeton-nlp/prolong-data-64K imported per domain into data/prolong-64K (`python data.py import-mds`).

# The recipe's 64K stage (optimiser, schedule shape, precision, RoPE base 8e6, 64K sequences, data root); what
# follows is all that the ablation base changes: the init, the data mixture and the length of the run.
exec(open("configs/prolong_64k.py").read())
_gpus = 8  # the GPU count this arm is checked for (tests/test_ablations.py)

out_dir = "runs/ablations/base_64k"
init_from = "meta-llama/Meta-Llama-3-8B"  # the base model, not the recipe's Instruct
_long, _short = 0.6, 0.4  # arms that change the long share rescale these, keeping the proportions within each
_books_repos = (0.5, 0.5)
_shortmix = {"fineweb-edu": 0.25, "fineweb-2023-50": 0.25, "dolmawiki": 0.1, "tuluv2": 0.1, "stackexchange": 0.1,
             "arxiv": 0.1, "openwebmath": 0.1}  # Table 5, as shares of the short data (0.10 / 0.04 of all tokens)


def _mixture(long, short, books_repos, shortmix):
    out = [dict(path=p, proportion=long * x, length=65536, mode="chunk")
           for p, x in zip(("book-65536", "thestackv1_concat_by_repo-65536"), books_repos) if x]
    return out + [dict(path=p, proportion=short * x, length=65536, mode="pack") for p, x in shortmix.items() if x]


mixture = _mixture(_long, _short, _books_repos, _shortmix)

max_steps = 1280  # 5B tokens of 4M
checkpoint_interval = 320
keep_checkpoints = 2
