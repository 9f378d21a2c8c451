# Ablation, initialisation (paper Table 21): Llama-3-8B-Instruct (the recipe's choice for ProLong) instead of
# the base model (the base arm). Both are gated on the Hugging Face hub: accept the licence, then
# huggingface-cli login. Hardware: as base_64k.py (8 GPUs with 80 GB or more, ~45 hours estimated, not
# measured).
#   torchrun --nproc_per_node 8 train.py configs/ablations/init_instruct.py

include("base_64k.py")  # the shared base
out_dir = "runs/ablations/init_instruct"
init_from = "meta-llama/Meta-Llama-3-8B-Instruct"
