"""Label Studio ML backend for SAM 2: the Label Studio side, kept free of tensors.

The backend talks to the model only through numpy masks (bool, H x W) and plain prompts
(pixel points, pixel boxes, masks, 0-based frame indices). This package converts between those
and Label Studio's JSON:

- `labelconfig`: what kind of project a label config describes (video, image sequence, image),
  which tags carry the media, the prompts and the output.
- `prompts`: Label Studio regions (interactive context, drafts, annotations) -> `ObjectPrompts`.
- `results`: model output (per-frame boxes or masks) -> Label Studio results
  (videorectangle keyframes, brush RLE, bitmask PNG).
"""
