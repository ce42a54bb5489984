"""Data for training and evaluation, all in the VQA v2 layout. It imports nothing of the other wings.

- `shapes`: the synthetic ShapesVQA task of `shared/specs/shapes-vqa.md` (scenes, balanced
  questions, rendering, a data-set writer and its CLI);
- `vqa`: `load_vqa` for any VQA v2-layout folder (ours, easy-vqa, real VQA);
- `easy_vqa`: converts the public easy-vqa data set to that layout (CLI).

Import from the submodules: re-exporting them here would import `shapes` before
`python -m mmchat shapes` runs it, which Python warns about.
"""
