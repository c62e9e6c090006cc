"""Pretraining data: self-generated corpora, tokenizer building, packing."""
