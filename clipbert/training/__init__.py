"""Training runs on Ray Train (finetuning, image-text and CNN pretraining), their input checks and evaluation."""
