# CPU demo, stage 2 (`make demo` runs it after demo_2k.py): the stage hand-off of ProLong's 64K -> 512K, in
# small. Starts from stage 1's weights *and* optimizer state, restarts the learning-rate schedule, raises the
# RoPE base from 500,000 to 8e6 and trains on 8K-token sequences: long documents as single-document 8K chunks,
# short ones packed. Hardware: any CPU; a few minutes on 2 cores.
out_dir = "runs/demo-8k"
init_from = "runs/demo-2k/step_0000060"
load_optimizer = True
rope_theta = 8e6

data_root = "demo_data"
seq_len = 8192
mixture = [
    dict(path="code", proportion=0.4, length=8192, mode="chunk"),
    dict(path="books", proportion=0.4, length=8192, mode="chunk"),
    dict(path="docs", proportion=0.2, length=8192, mode="pack"),
]
val_mixture = [dict(path="heldout", proportion=1.0, length=8192, mode="pack")]
val_sequences = 2

tokens_per_step = 8192
max_steps = 12
lr = 3e-3
min_lr = 3e-4
compute_dtype = "float32"
activation_checkpointing = False
eval_interval = 6
