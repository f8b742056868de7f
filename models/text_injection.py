"""Text injection losses (paper §3.4; ../shared/DESIGN.md §3) and their exact use over a large batch.

Every loss takes `x` (batch, d), the speech side x = MeanPool(h_proj(ℓ_i(s))), and `y` (batch, d),
the frozen text encoder's embedding of each clip's transcript, and returns a mean over the
batch's anchors (the paper writes sums; a mean keeps α's balance independent of batch size).

Contrastive losses depend on the batch they are computed over, and the paper trains with
per-device batches of 8 accumulated 4 times on 8 GPUs. `text_loss_gradients` computes the loss
over the whole optimizer step's batch (every micro-batch, every rank) and returns d(loss)/dx
for this process's rows, so a trainer can backpropagate each micro-batch on its own and still
get the exact gradient of the full-batch loss (the "gradient cache" technique). The text
embeddings are constants, so only the speech embeddings have to travel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

TextLossName = Literal["mse", "contrastive", "ntxent-am", "asymmetric-proxy", "mse-normalised"]
TEXT_LOSSES: tuple[str, ...] = ("mse", "contrastive", "ntxent-am", "asymmetric-proxy", "mse-normalised")
#: A text loss as the trainer calls it: speech x, text y, and each row's multi-hot labels.
TextLoss = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TextLossParams:
    """Hyper-parameters of the text losses; each loss reads the ones it names."""

    temperature: float = 1.0  # contrastive and ntxent-am (the paper's τ, not tuned there)
    margin: float = 0.1  # ntxent-am's additive margin on the positive pair's cosine
    proxy_alpha: float = 2.0  # asymmetric-proxy's α, β and λ (its paper's values)
    proxy_beta: float = 50.0
    proxy_margin: float = 0.5


def mse_loss(x: Tensor, y: Tensor) -> Tensor:
    """||x − y||² (squared distance summed over dimensions), averaged over the batch."""
    return (x - y).pow(2).sum(dim=1).mean()


def mse_normalised_loss(x: Tensor, y: Tensor) -> Tensor:
    """||x/|x| − y/|y|||² = 2 − 2·cos(x, y), averaged over the batch: a variant the paper lacks.

    The paper's ||x − y||² of raw embeddings starts near 25 here against BCE's 0.7 and swamps
    the classification loss (docs/results.md); on unit vectors it lies in [0, 4], and it pulls
    only the direction of x, as the contrastive loss does, without the batch's negatives."""
    return (F.normalize(x, dim=1) - F.normalize(y, dim=1)).pow(2).sum(dim=1).mean()


def cosine_matrix(x: Tensor, y: Tensor) -> Tensor:
    """S[i, j] = cos(x_i, y_j)."""
    return F.normalize(x, dim=1) @ F.normalize(y, dim=1).T


def contrastive_loss(x: Tensor, y: Tensor, temperature: float = 1.0) -> Tensor:
    """The paper's Eq. 5 (N-pair / InfoNCE): each speech clip picks its own transcript among the
    batch's, −log softmax_j(cos(x_i, y_j)/τ) at j = i."""
    logits = cosine_matrix(x, y) / temperature
    return F.cross_entropy(logits, torch.arange(len(x), device=x.device))


def ntxent_am_loss(x: Tensor, y: Tensor, temperature: float = 1.0, margin: float = 0.1) -> Tensor:
    """NT-Xent-AM, symmetric: the positive pair's cosine is lowered by `margin` before scaling,
    and the speech→text and text→speech cross-entropies are averaged."""
    similarity = cosine_matrix(x, y)
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    logits = (similarity - margin * eye) / temperature
    targets = torch.arange(len(x), device=x.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def asymmetric_proxy_loss(
    x: Tensor,
    y: Tensor,
    positives: Tensor,
    alpha: float = 2.0,
    beta: float = 50.0,
    margin: float = 0.5,
) -> Tensor:
    """Asymmetric-Proxy loss (its paper's Eq. 11), the text embeddings being the proxies:

        mean_i [ (1/α) log(1 + Σ_{j∈P_i} exp(α(λ − S^A_ij)))
                 + (1/|N_i|) Σ_{k∈N_i} log(1 + exp(β(S^{P/N}_ik − λ))) ]

    with S^A_ij = cos(y_i, x_j) (proxy as anchor) and S^{P/N}_ik = cos(x_i, y_k) (proxy as
    positive/negative). `positives` (batch, batch) bool says which pairs are positive; the
    diagonal must be True (a clip and its own transcript). A row without negatives has no
    second term.
    """
    if not bool(positives.diagonal().all()):
        raise ValueError("every clip must be a positive of its own transcript")
    speech_anchor = cosine_matrix(x, y)  # S^{P/N}
    proxy_anchor = speech_anchor.T  # S^A[i, j] = cos(y_i, x_j)
    positive_terms = torch.where(positives, alpha * (margin - proxy_anchor), -torch.inf)
    zero = torch.zeros(len(x), 1, dtype=x.dtype, device=x.device)
    extended_lse = torch.logsumexp(torch.cat([zero, positive_terms], dim=1), dim=1) / alpha
    negatives = ~positives
    softplus = F.softplus(beta * (speech_anchor - margin)) * negatives
    mean_softplus = softplus.sum(dim=1) / negatives.sum(dim=1).clamp(min=1)
    return (extended_lse + mean_softplus).mean()


def same_label_set(labels: Tensor) -> Tensor:
    """(batch, batch) bool: rows whose multi-hot label sets are identical (asymmetric-proxy's
    positives: a clip, its own transcript, and every clip labelled exactly alike)."""
    return (labels[:, None, :] == labels[None, :, :]).all(dim=2)


def make_text_loss(name: TextLossName, params: TextLossParams) -> TextLoss:
    """The loss `name` as a function of (x, y, labels); only asymmetric-proxy reads the labels."""
    if name == "mse":
        return lambda x, y, labels: mse_loss(x, y)
    if name == "mse-normalised":
        return lambda x, y, labels: mse_normalised_loss(x, y)
    if name == "contrastive":
        return lambda x, y, labels: contrastive_loss(x, y, params.temperature)
    if name == "ntxent-am":
        return lambda x, y, labels: ntxent_am_loss(x, y, params.temperature, params.margin)
    if name == "asymmetric-proxy":
        return lambda x, y, labels: asymmetric_proxy_loss(
            x, y, same_label_set(labels), params.proxy_alpha, params.proxy_beta, params.proxy_margin
        )
    raise ValueError(f"unknown text loss {name!r}; choose one of {', '.join(TEXT_LOSSES)}")


def combined_loss(bce: Tensor, text: Tensor, alpha: float) -> Tensor:
    """The paper's Eq. 1: α·L_BCE + (1 − α)·L_text; α = 1 is the baseline without text."""
    return alpha * bce + (1.0 - alpha) * text


# --- the whole optimizer step's batch, across micro-batches and ranks -------------------------


def gather_rows(local: Tensor) -> Tensor:
    """Concatenate every rank's rows (rank order; row counts may differ); no gradient flows.
    Without a process group this is the identity, so one process takes the same code path."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(local)], device=local.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(size.item())] for part, size in zip(parts, sizes, strict=True)])


@dataclass
class CachedTextGradient:
    """The full-batch text loss's value and its gradient with respect to this rank's x rows."""

    loss: Tensor
    grad: Tensor


def text_loss_gradients(loss_fn: TextLoss, x: Tensor, y: Tensor, labels: Tensor) -> CachedTextGradient:
    """Loss over every rank's rows (x detached, as computed without gradient) and d(loss)/dx for
    this rank's rows, in the order given.

    A trainer then adds `(x_m * grad_m).sum()` for each micro-batch m, recomputed with gradient,
    to its loss: the parameters get exactly the full-batch loss's gradient.
    """
    rank_offset = 0
    if dist.is_available() and dist.is_initialized():
        counts = gather_rows(torch.tensor([len(x)], device=x.device))
        rank_offset = int(counts[: dist.get_rank()].sum().item())
    every_x = gather_rows(x.detach()).requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(every_x, gather_rows(y), gather_rows(labels))
        (grad,) = torch.autograd.grad(loss, every_x)
    return CachedTextGradient(loss.detach(), grad[rank_offset : rank_offset + len(x)])
