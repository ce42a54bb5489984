"""Data for training and evaluation, all in the VQA v2 layout.

- `shapes`: the synthetic ShapesVQA task of `shared/specs/shapes-vqa.md` (scenes, balanced
  questions, rendering, an on-the-fly stream, a data-set writer and its CLI);
- `vqa`: `load_vqa` / `VQADataset` for any VQA v2-layout folder (ours, easy-vqa, real VQA);
- `easy_vqa`: converts the public easy-vqa data set to that layout (CLI).

Import from the submodules: re-exporting them here would import `shapes` before
`python -m mmchat.data.shapes` runs it, which Python warns about.
"""
