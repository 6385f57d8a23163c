"""SAM 2's training objective for one decoder output: focal + dice on the best mask, L1 on IoU predictions,
binary cross-entropy on object presence.

For each object the decoder proposes M candidate masks (M = 3 with multimask output, else 1). As in SAM 2, only
the candidate with the lowest mask loss (weighted focal + dice) is supervised on its mask, while the IoU head is
supervised on every candidate against that candidate's actual IoU with the ground truth. Mask and IoU terms count
only for objects present in the ground truth; the presence term counts for all. Terms are averaged over objects.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms; SAM 2 trains with focal:dice:iou:class = 20:1:1:1 and no embedding term.

    embedding: weight of the mean square of the stride-16 image embedding, once per step (not in SAM 2, which
    starts from a pretrained encoder). Trained from scratch, the embedding grows without bound (RMS 0.5 at
    initialisation, 90 after an hour) and drowns the mask that the memory encoder adds to it.
    memory_readout: weight of `memory_readout_loss` on tracked frames (not in SAM 2; a training-only probe that
    keeps the mask flowing through memory attention, see the README's Training section).
    absent: weight of an absent object's presence term relative to a present object's (1 in SAM 2). Absent
    objects are rare in training clips (about 8% of tracked frames, none in image steps).
    identity: weight of `identity_loss` on video steps (not in SAM 2, whose encoder comes pretrained with
    features that tell objects apart; from scratch, the stride-16 features tell them apart no better than at
    initialisation, README "Training").
    memory_attention: weight of `memory_attention_loss` on tracked frames (not in SAM 2): memory cross-attention
    asked to put its mass on memory cells of the query cell's own object, i.e. to read the memory by content."""

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    presence: float = 1.0
    absent: float = 1.0
    embedding: float = 0.0
    memory_readout: float = 0.0
    identity: float = 0.0
    memory_attention: float = 0.0


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (Lin et al. 2017) per mask: B×M×H×W logits, B×1×H×W (or B×M×H×W) {0,1} target -> B×M,
    the mean over pixels."""
    target = target.expand_as(logits)
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_true) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.flatten(2).mean(-1)


def dice_loss(logits: Tensor, target: Tensor, smooth: float = 1.0) -> Tensor:
    """1 - soft Dice coefficient per mask: B×M×H×W logits, B×1×H×W target -> B×M."""
    prob = torch.sigmoid(logits).flatten(2)
    target = target.expand_as(logits).flatten(2)
    inter = (prob * target).sum(-1)
    return 1 - (2 * inter + smooth) / (prob.sum(-1) + target.sum(-1) + smooth)


def mask_iou(logits: Tensor, target: Tensor) -> Tensor:
    """Actual IoU of each binarized candidate (logit > 0) with the target: B×M×H×W, B×1×H×W -> B×M
    (1 where both are empty)."""
    pred = (logits > 0).flatten(2)
    gt = (target > 0.5).expand_as(logits).flatten(2)
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def coverage(target: Tensor, size: tuple[int, int]) -> Tensor:
    """Each cell's covered share of a B×C×H×W {0, 1} target on an h×w grid (H, W multiples of h, w): B×C×h×w
    (the target itself when the grid is its own size).

    SAM 2 computes the mask losses at the input size; scored against the coverage of a coarser grid (S/2, the
    logits upsampled to it), they keep the sub-cell boundary supervision of the 4× upsampling on a quarter of the
    pixels (train/README.md, "Steps decide": 23% faster image steps)."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.adaptive_avg_pool2d(target if target.is_floating_point() else target.float(), size)


def mask_prediction_loss(
    multimasks: Tensor,
    ious: Tensor,
    object_score: Tensor,
    target: Tensor,
    weights: LossWeights = LossWeights(),
) -> dict[str, Tensor]:
    """Loss of one decoder output for B objects.

    multimasks: B×M×H×W candidate logits at the target's resolution; ious: B×M predicted IoUs;
    object_score: B×1 presence logit; target: B×1×H×W ground truth in [0, 1] (soft: a `coverage`; an all-zero
    mask is an absent object).
    -> {"loss": weighted total, "focal", "dice", "iou", "presence": per-term means, "best": B candidate index}.
    """
    target = target.to(multimasks.dtype)
    present = (target.flatten(1) > 0).any(dim=1).to(multimasks.dtype)  # B
    focal = focal_loss(multimasks, target)
    dice = dice_loss(multimasks, target)
    best = (weights.focal * focal + weights.dice * dice).argmin(dim=1)  # B
    rows = torch.arange(multimasks.shape[0], device=multimasks.device)
    focal, dice = focal[rows, best], dice[rows, best]
    iou_l1 = (ious.float() - mask_iou(multimasks.detach(), target)).abs().mean(dim=1)
    presence = F.binary_cross_entropy_with_logits(object_score.float().reshape(-1), present, reduction="none")
    presence = presence * (present + weights.absent * (1 - present))
    terms = {
        "focal": (focal * present).mean(),
        "dice": (dice * present).mean(),
        "iou": (iou_l1 * present).mean(),
        "presence": presence.mean(),
    }
    total = (weights.focal * terms["focal"] + weights.dice * terms["dice"] + weights.iou * terms["iou"]
             + weights.presence * terms["presence"])
    return {"loss": total, **terms, "best": best}


def memory_readout_loss(readout_logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of a coarse mask read out of memory-conditioned features against the target's
    coverage of each cell: B×1×h×w logits, B×1×H×W {0,1} target (H, W multiples of h, w) -> scalar."""
    cells = coverage(target.to(readout_logits.dtype), readout_logits.shape[-2:])
    return F.binary_cross_entropy_with_logits(readout_logits, cells)


def cell_classes(masks: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    """Which class covers each stride cell: masks T×K×H×W {0, 1} (H, W multiples of h, w) -> cover T×(K+1)×P
    (P = h·w; class K is the rest), label T×P (the class that covers the cell most), share T×P (its coverage)."""
    cover = F.adaptive_avg_pool2d(masks.float(), (h, w)).flatten(2)  # T×K×P
    cover = torch.cat([cover, (1 - cover.sum(1, keepdim=True)).clamp(min=0)], dim=1)
    share, label = cover.max(dim=1)
    return cover, label, share


def identity_logits(embedding: Tensor, masks: Tensor, temperature: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Classify one clip's later-frame cells against its first frame's objects by their features.

    The first frame gives one prototype per object and one for the rest (the mean of the L2-normalised features,
    weighted by each class's coverage of the cells); each cell of frames 1..T-1 gets cosine similarity /
    temperature to every prototype. embedding: T×D×h×w; masks: T×K×H×W {0, 1} (H, W multiples of h, w).
    -> logits (T-1)×(K+1)×P (P = h·w, class K is the rest), label (T-1)×P (the class that covers the cell most),
    keep (T-1)×P bool (that class covers more than half of the cell).
    """
    t_count, d, h, w = embedding.shape
    feats = F.normalize(embedding, dim=1).reshape(t_count, d, h * w)
    cover, label, share = cell_classes(masks, h, w)
    protos = F.normalize(cover[0].to(feats.dtype) @ feats[0].T, dim=-1)  # (K+1)×D
    logits = torch.einsum("kd,tdp->tkp", protos, feats[1:]) / temperature
    return logits, label[1:], share[1:] > 0.5


def identity_loss(embedding: Tensor, masks: Tensor, clip_index: Tensor, temperature: float = 0.1) -> Tensor:
    """Contrastive identity term on the stride-16 image features of training clips: the cross-entropy of
    `identity_logits`, so that a cell of object k resembles object k of the clip's first frame more than the
    other objects and the background, wherever it has moved. Object cells and background cells weigh equally
    (each clip's two means are averaged): the background covers most cells and would otherwise dominate.

    embedding: (T·N)×D×h×w frame-major (row t·N + n); masks: T×B×H×W {0, 1}; clip_index: B, the clip of each
    object. -> scalar (0 when no cell qualifies).
    """
    t_count = masks.shape[0]
    clips = embedding.shape[0] // t_count
    frames = embedding.reshape(t_count, clips, *embedding.shape[1:])
    losses = []
    for clip in range(clips):
        objects = clip_index == clip
        rest = int(objects.sum())  # the background's class index, after the clip's objects
        logits, label, keep = identity_logits(frames[:, clip], masks[:, objects], temperature)
        ce = F.cross_entropy(logits, label, reduction="none")
        for cells in (keep & (label < rest), keep & (label == rest)):
            if cells.any():
                losses.append(ce[cells].mean())
    return torch.stack(losses).mean() if losses else embedding.sum() * 0


UNLABELLED, BACKGROUND = -1, -2
"""`object_cell_labels` values of a cell no class covers by more than half, and of a background cell."""


def object_cell_labels(masks: Tensor, clip_index: Tensor, h: int, w: int) -> Tensor:
    """Who covers each stride cell, per tracked object: masks T×B×H×W {0, 1} of the B objects of a batch, clip_index:
    B -> T×B×P long (P = h·w): the batch index of the object of the row's clip that covers the cell by more than
    half, BACKGROUND when no object of the clip does but the background does, UNLABELLED otherwise. Rows of one
    clip get the same labels."""
    labels = torch.full((masks.shape[0], masks.shape[1], h * w), UNLABELLED, dtype=torch.long, device=masks.device)
    for clip in clip_index.unique():
        rows = torch.nonzero(clip_index == clip).flatten()
        _, label, share = cell_classes(masks[:, rows], h, w)
        ids = torch.cat([rows, rows.new_tensor([BACKGROUND])])[label]  # class k -> batch row, class K -> BACKGROUND
        labels[:, rows] = torch.where(share > 0.5, ids, UNLABELLED)[:, None]
    return labels


def memory_attention_loss(attention: list[Tensor], query_labels: Tensor, memory_labels: Tensor
                          ) -> tuple[Tensor, Tensor]:
    """How much memory cross-attention each query cell puts on memory cells of its own object (or of the
    background, for a background cell): the attention that reading by content needs, the ground truth says where.

    attention: one B×h×Nq×Nk matrix per layer, the Ns spatial memory keys first (then object pointers);
    query_labels: B×Nq, memory_labels: B×Ns (`object_cell_labels` of the query frame and of the memory frames).
    -> (loss: mean -log(attention mass on the cell's own label), mass: its mean), scalars. Query cells that are
    unlabelled or whose label no memory cell has are left out; object and background cells weigh equally.
    """
    ns = memory_labels.shape[1]
    same = (query_labels[:, :, None] == memory_labels[:, None, :]) & (query_labels[:, :, None] != UNLABELLED)
    valid = same.any(-1)  # B×Nq
    groups = [valid & (query_labels >= 0), valid & (query_labels == BACKGROUND)]
    losses, masses = [], []
    for weights in attention:
        mass = (weights[..., :ns] * same[:, None].to(weights.dtype)).sum(-1).mean(1)  # B×Nq, mean over heads
        nll = -mass.clamp_min(1e-6).log()
        for cells in groups:
            if cells.any():
                losses.append(nll[cells].mean())
                masses.append(mass[cells].mean())
    if not losses:
        zero = sum(w.sum() for w in attention) * 0
        return zero, zero.detach()
    return torch.stack(losses).mean(), torch.stack(masses).mean().detach()
