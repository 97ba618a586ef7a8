"""Supervised fine-tuning: tokenizer step, chat encoding with assistant-only labels, packing,
the training recipe (run under `accelerate launch`) and the `train` step that launches it."""
