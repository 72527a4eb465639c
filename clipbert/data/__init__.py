"""The data side: the frame store, clips, tokenizer, clip sampling, annotation files and the training batches."""
