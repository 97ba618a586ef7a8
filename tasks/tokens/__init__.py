"""Tokens: the chat format (`chat`: ChatML, encoding with trained-token labels, reasoning and
tool rendering), the `tokenizer` step, and fast token counting (`count`). Prepare (mix),
training and evaluation all use them; this package imports neither."""
