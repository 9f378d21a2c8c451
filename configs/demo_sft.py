# CPU demo, stage 3 (`make demo` runs it after demo_8k.py): supervised fine-tuning in small, like ProLong's
# SFT of the 512K base. Starts from stage 2's weights (a fresh optimizer, the RoPE base of the checkpoint) and
# trains on the demo chat set, loss on assistant tokens only. Prepared by
#   python sft.py prepare demo_data/sft_tokens demo_data/sft/chat.jsonl --holdout 100
# which holds out 100 conversations (demo_data/sft_tokens-heldout) for the held-out assistant-token loss,
# printed at step 0 and at the end. Hardware: any CPU; a few minutes on 2 cores.
out_dir = "runs/demo-sft"
init_from = "runs/demo-8k/step_0000012"

data_root = "demo_data"
seq_len = 2048
mixture = [dict(path="sft_tokens", proportion=1.0, length=2048, mode="sft")]  # ~11 conversations per sequence
val_mixture = [dict(path="sft_tokens-heldout", proportion=1.0, length=2048, mode="sft")]
val_sequences = 6  # the held-out conversations fill about 7 sequences
allow_repeat = True

tokens_per_step = 4096
max_steps = 30
lr = 3e-3
min_lr = 3e-4
warmup_fraction = 0.05
compute_dtype = "float32"
activation_checkpointing = False
