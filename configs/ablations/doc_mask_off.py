# Ablation, document masking (paper Table 20): masks off, as the paper's code did it: attention spans the
# documents of a 64K sequence, positions run on through it, and each document's last token is trained to
# predict the next document's first (cross_document_labels follows cross_document; set it to False to keep
# labels within documents). The base arm has masks on. Hardware: as base_64k.py (8 GPUs with 80 GB or more,
# ~45 hours estimated, not measured).
#   torchrun --nproc_per_node 8 train.py configs/ablations/doc_mask_off.py

include("base_64k.py")  # the shared base
out_dir = "runs/ablations/doc_mask_off"
cross_document = True
