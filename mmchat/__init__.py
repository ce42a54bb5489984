"""mmchat: visual question answering chat with a gated cross-attention fusion model.

Four wings, arrows pointing down (docs/architecture.md):

- `mmchat.modeling`: the model itself (config, fusion blocks, model, processor); travels with checkpoints;
- `mmchat.serving`: upload checks, loading, family adapters, the chat engine and the Gradio UI;
- `mmchat.training`: the trainer and its aids (conversations, tokenizer, presets);
- `mmchat.evaluation`: the evaluation CLI, the official VQA metric and the probes;
- `mmchat.data`: ShapesVQA, VQA v2-layout loading, easy-vqa.

Importing this package imports no torch or transformers; `import mmchat.modeling` registers the
model with transformers' Auto classes.
"""

__version__ = "0.2.0"
