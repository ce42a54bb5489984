"""Serving: an upload becomes an answer.

`images` checks uploads, `loading` loads any supported checkpoint (quantized or not) as its
family's adapter (`families/`), `engine` turns (image, question, history, settings) into a
streamed answer, `overlay` draws where the model looked, and `ui` is the Gradio app around the
engine. Arrows point down: ui -> engine -> families -> `mmchat.modeling`.
"""
