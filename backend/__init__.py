"""Label Studio ML backend for SAM 2: the Label Studio side, kept free of tensors.

The backend talks to the model only through numpy masks (bool, H x W) and plain prompts
(pixel points, pixel boxes, masks, 0-based frame indices). This package converts between those
and Label Studio's JSON:

- `labelconfig`: what kind of project a label config describes (video, image sequence, image),
  which tags carry the media, the prompts and the output.
- `regions`: the schema every region of a request is checked against before use (bad ones: 400 or left out).
- `prompts`: Label Studio regions (interactive context, drafts, annotations) -> `ObjectPrompts`.
- `results`: model output (per-frame boxes or masks) -> Label Studio results
  (videorectangle keyframes, brush RLE, bitmask PNG).

The server around them (`gunicorn --config config/gunicorn.conf.py backend.wsgi:app`):

- `app` (factory `create_app`), `protocol` (routes, basic auth, JSON errors), `errors` (exception -> status);
- `model` (`SAM2Backend`: setup / predict / fit, the lazily loaded model, time budgets);
- `predict` (one task -> one prediction for each project kind), `tracking` (resumable propagation of a
  video session), `sessions` (per-task state with TTL and byte budget), `media` (task media -> cached files).
"""
