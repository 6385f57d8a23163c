"""Named training recipes: "micro" (the offline demo model) and "test" (tiny, for the test suite)."""
from __future__ import annotations

from ..configs import custom_config
from .data import DataConfig
from .losses import LossWeights
from .trainer import Recipe

MICRO_CONFIG = custom_config(
    "sam2.1_micro",
    embed_dim=16,  # Hiera widths 16, 32, 64, 128; blocks per stage 1, 1, 2, 1
    image_size=192,  # 12×12 stride-16 grid, 48×48 low-res masks
    d_model=64,
    memory_dim=16,
    decoder_heads=4,
    decoder_mlp_dim=256,
    memory_attention_layers=2,
    memory_attention_ff_dim=256,
    dropout=0.0,  # an hour of training underfits: no dropout
)
"""The micro demo model: SAM 2.1's architecture at about a million parameters (≈4 MB checkpoint)."""

TEST_CONFIG = custom_config(
    "sam2.1_train_test", embed_dim=8, image_size=64, d_model=32, memory_dim=8, decoder_heads=2, decoder_mlp_dim=32,
    memory_attention_layers=1, memory_attention_ff_dim=32, num_maskmem=3,
)

RECIPES: dict[str, Recipe] = {
    # The best 60-minute CPU recipe so far (README.md, "Training": it does not track well enough yet): the memory
    # path opened at initialisation and kept open by the memory readout, memory attention supervised to read each
    # cell's own object, image features asked to tell the objects apart (identity term), the image embedding kept
    # small, less focal loss than SAM 2's 20 : 1 (which keeps a from-scratch decoder predicting near-empty masks),
    # the decoder's attention initialised to find the prompt, image steps drawn from 8 videos, 80% of the steps on
    # images, presence weighted 5 (the model otherwise never answers "absent"), and an exponential moving average
    # of the weights as the written model.
    "micro": Recipe(model=MICRO_CONFIG, data=DataConfig(image_videos=8), lr=2e-3, warmup_steps=100, p_image=0.8,
                    memory_attention_bias=2.0, mask_memory_gain=10.0, prompt_attention_gain=3.0, ema_decay=0.999,
                    loss=LossWeights(focal=0.5, presence=5.0, embedding=0.01, memory_readout=3.0, identity=1.0,
                                     memory_attention=1.0)),
    "test": Recipe(
        model=TEST_CONFIG,
        data=DataConfig(num_frames=4, source_frames=12, side_range=(1.0, 1.25), max_objects=2),
        lr=3e-3, warmup_steps=1, max_correction_frames=1, max_corrections=1,
    ),
}
