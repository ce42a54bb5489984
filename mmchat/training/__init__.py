"""Training: `python -m mmchat train` (`train`), its conversations and batches (`conversations`),
the optional alignment stage (`align`) and object-centre loss (`centres`), the tokenizer trainer
(`tokenizer`) and the model presets and factory (`factory`)."""
