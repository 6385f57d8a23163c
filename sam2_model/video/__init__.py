"""Video engine for SAM 2: frame sources, preprocessing and H.264 output (see ``frames``)."""
