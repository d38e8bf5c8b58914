"""The BEHRT encoder and its training: tokenizer, batches, model, pretraining, checkpoints."""
