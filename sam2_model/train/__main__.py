"""Train a SAM 2 model on synthetic videos.

    python -m sam2_model.train --config micro --out demo/sam2_micro.pt --minutes 60 --seed 0

Writes the model to --out (official layout with the config inside, loadable by `load_model`), the resumable
state to --state (default: OUT with suffix .state.pt) and the loss log to --log (default: OUT with suffix
.log.jsonl). --resume continues from the state file; --minutes and --steps count over resumed runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

from .recipes import RECIPES
from .trainer import Trainer


def main(argv: list[str] | None = None) -> Trainer:
    parser = argparse.ArgumentParser(prog="python -m sam2_model.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="micro", choices=sorted(RECIPES), help="training recipe")
    parser.add_argument("--out", required=True, help="model checkpoint to write")
    parser.add_argument("--minutes", type=float, help="training time budget (lr schedule follows time)")
    parser.add_argument("--steps", type=int, help="step budget (lr schedule follows steps; reproducible)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the state file if it exists")
    parser.add_argument("--state", help="resumable state file")
    parser.add_argument("--log", help="JSONL loss log")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--batch-clips", type=int, help="clips per step (recipe default otherwise)")
    parser.add_argument("--lr", type=float, help="peak learning rate (recipe default otherwise)")
    parser.add_argument("--p-image", type=float, help="share of image steps (recipe default otherwise)")
    parser.add_argument("--image-warmup", type=float, help="fraction of the run with image steps only")
    parser.add_argument("--image-videos", type=int, help="videos an image step draws its frames from")
    parser.add_argument("--ema-decay", type=float, help="write an exponential moving average of the weights")
    parser.add_argument("--freeze-image-encoder", action="store_true")
    parser.add_argument("--memory-attention-bias", type=float, help="init_memory_path's attention bias")
    parser.add_argument("--mask-memory-gain", type=float, help="init_memory_path's mask gain")
    parser.add_argument("--prompt-attention-gain", type=float, help="init_prompt_attention's gain")
    parser.add_argument("--loss-size", type=int, help="side of the grid the mask losses are computed on")
    parser.add_argument("--focal-weight", type=float, help="LossWeights.focal")
    parser.add_argument("--dice-weight", type=float, help="LossWeights.dice")
    parser.add_argument("--presence-weight", type=float, help="LossWeights.presence")
    parser.add_argument("--embedding-penalty", type=float, help="LossWeights.embedding")
    parser.add_argument("--memory-readout", type=float, help="LossWeights.memory_readout")
    parser.add_argument("--identity-weight", type=float, help="LossWeights.identity")
    parser.add_argument("--memory-attention-weight", type=float, help="LossWeights.memory_attention")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--prefetch", action="store_true",
                        help="draw each next step's data in a second process (for a run with a core to spare)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.minutes is None and args.steps is None:
        parser.error("give --minutes, --steps, or both")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = RECIPES[args.config]
    changes = {"batch_clips": args.batch_clips, "lr": args.lr, "p_image": args.p_image,
               "image_warmup": args.image_warmup, "memory_attention_bias": args.memory_attention_bias,
               "mask_memory_gain": args.mask_memory_gain, "ema_decay": args.ema_decay,
               "prompt_attention_gain": args.prompt_attention_gain, "loss_size": args.loss_size}
    recipe = recipe.replace(**{k: v for k, v in changes.items() if v is not None})
    if args.image_videos is not None:
        recipe = recipe.replace(data=dataclasses.replace(recipe.data, image_videos=args.image_videos))
    loss_changes = {"focal": args.focal_weight, "dice": args.dice_weight, "presence": args.presence_weight,
                    "embedding": args.embedding_penalty, "memory_readout": args.memory_readout,
                    "identity": args.identity_weight, "memory_attention": args.memory_attention_weight}
    loss_changes = {k: v for k, v in loss_changes.items() if v is not None}
    if loss_changes:
        recipe = recipe.replace(loss=dataclasses.replace(recipe.loss, **loss_changes))
    if args.freeze_image_encoder:
        recipe = recipe.replace(freeze_image_encoder=True)
    stem = os.path.splitext(args.out)[0]
    state = args.state or stem + ".state.pt"
    log = args.log or stem + ".log.jsonl"
    if args.resume and os.path.exists(state):
        trainer = Trainer.load(state, recipe, device=args.device)
        print(f"resumed {state} at step {trainer.step} ({trainer.elapsed / 60:.1f} min)", file=sys.stderr)
    else:
        if os.path.exists(log):
            os.unlink(log)  # a fresh run starts a fresh log
        trainer = Trainer(recipe, seed=args.seed, device=args.device)
    trainer.fit(args.out, minutes=args.minutes, steps=args.steps, state_path=state, log_path=log,
                log_every=args.log_every, checkpoint_minutes=args.checkpoint_minutes, progress=not args.no_progress,
                prefetch=args.prefetch)
    print(f"step {trainer.step}, {trainer.elapsed / 60:.1f} min: model {args.out}, state {state}, log {log}",
          file=sys.stderr)
    return trainer


if __name__ == "__main__":
    main()
