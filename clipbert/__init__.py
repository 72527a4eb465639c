"""ClipBERT: sparse-sampling video-and-language models, library side (no Ray in model, sampling, metrics)."""
