"""The ClipBERT network, its losses, optimiser, checkpoints and the scoring of text-video pairs (no Ray)."""
