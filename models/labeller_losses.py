"""Losses for training the text toxicity labeller (../shared/DESIGN.md §3).

- `masked_bce`: the baseline, binary cross-entropy on soft targets with per-row class masks
  (a Davidson tweet says nothing about `dating_sexting` or `other`, so those entries are left
  out of the loss rather than taught as 0).
- `TripleEntropyLoss`: β·CE + (1−β)·SoftTriple (papers/tripleentropy-softtriple.txt, Eq. 4–7),
  adapted to multi-label targets; see `soft_triple_loss` for the adaptation.
- `OrdinalSeverityLoss`: the large-margin cosine loss (CosFace) plus γ·W-RankSim
  (papers/w-ranksim-speech-assessment.txt, Eq. 1–7) for an ordinal single-label target such as
  Davidson's none < offensive < hateful.

Every function takes torch tensors and returns a scalar tensor; nothing here knows about text.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits, cross_entropy, normalize


def masked_bce(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean BCE over the labelled (row, class) entries; targets may be soft, in [0, 1].

    With no mask (or an all-true one) this is `binary_cross_entropy_with_logits`'s mean.
    """
    per_entry = binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if mask is None:
        return per_entry.mean()
    weight = mask.to(per_entry.dtype)
    return (per_entry * weight).sum() / weight.sum().clamp_min(1.0)


def relaxed_similarity(embeddings: Tensor, proxies: Tensor, gamma: float) -> Tensor:
    """SoftTriple's S'_{i,c} (Eq. 5): the similarity of each embedding to each class, a softmax
    (temperature γ) over the class's K proxies of the dot products, weighting those products.

    `embeddings` (N, d) and `proxies` (C, K, d) are L2-normalised first, as in Qian et al. (2019),
    so every similarity is a cosine in [-1, 1] and λ, δ keep the scale the paper tuned them for.
    Returns (N, C).
    """
    x = normalize(embeddings, dim=-1)
    w = normalize(proxies, dim=-1)
    dots = torch.einsum("nd,ckd->nck", x, w)
    weights = torch.softmax(dots / gamma, dim=-1)
    return (weights * dots).sum(dim=-1)


def soft_triple_loss(
    similarity: Tensor,
    targets: Tensor,
    mask: Tensor | None = None,
    *,
    lam: float = 3.3,
    delta: float = 0.3,
) -> Tensor:
    """SoftTriple (Eq. 4) on relaxed similarities (N, C), adapted to soft multi-label targets.

    Eq. 4 has one true class y_i competing with all others:
        ℓ_i = −log exp(λ(S'_{i,y} − δ)) / (exp(λ(S'_{i,y} − δ)) + Σ_{j≠y} exp(λ S'_{i,j})).
    With several true classes, making them compete with each other would push a row labelled
    profanity *and* bullying away from one of its own classes. So each positive class p gets its
    own Eq. 4 term in which the other classes j enter the denominator weighted by how negative
    they are, (1 − y_ij): other positives drop out, negatives count fully, soft labels in between.
    The row's loss is the mean of its terms weighted by y_ip. Masked (unlabelled) classes are
    neither positives nor negatives. With one-hot targets and no mask this is exactly Eq. 4.
    Rows without any labelled positive contribute nothing; the result is the mean over the rest.
    """
    labelled = torch.ones_like(targets) if mask is None else mask.to(targets.dtype)
    positive = targets * labelled  # weight of class p as the true class of term (i, p)
    negative = (1.0 - targets) * labelled  # weight of class j in the denominators
    true_logit = lam * (similarity - delta)  # (N, C): numerator of term (i, p)
    other_logit = lam * similarity
    # log Σ_{j≠p} negative_ij · exp(λ S'_ij), for every p: exclude j = p from the sum.
    weighted = other_logit.unsqueeze(1) + torch.log(negative.clamp_min(1e-30)).unsqueeze(1)
    eye = torch.eye(similarity.shape[1], dtype=torch.bool, device=similarity.device)
    weighted = weighted.masked_fill(eye.unsqueeze(0), float("-inf"))
    log_others = torch.logsumexp(weighted, dim=-1)  # (N, C)
    terms = torch.logaddexp(true_logit, log_others) - true_logit  # −log of Eq. 4's fraction
    row_weight = positive.sum(dim=1)
    has_positive = row_weight > 0
    if not has_positive.any():
        return similarity.sum() * 0.0
    row_loss = (positive * terms).sum(dim=1)[has_positive] / row_weight[has_positive]
    return row_loss.mean()


class TripleEntropyLoss(nn.Module):
    """β·CE + (1−β)·SoftTriple (Eq. 6) with K trainable proxies per class.

    Multi-label adaptation: the CE term (Eq. 7) is the cross-entropy of independent sigmoid
    outputs, i.e. `masked_bce`, since the labeller's classes are not mutually exclusive (a
    softmax would make profanity and bullying compete); SoftTriple is `soft_triple_loss`.
    As in the paper (§3.1.2) the SoftTriple term may be fed every token's embedding: pass
    `feature_rows`, the row each feature belongs to, and each token takes its row's targets.
    Paper defaults: K=2000, γ=0.1, λ=3.3, δ=0.3, β=0.9. The SoftTriple paper's proxy-merging
    regulariser is not part of Eq. 4–6 and is not included.
    """

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        proxies_per_class: int = 2000,
        *,
        gamma: float = 0.1,
        lam: float = 3.3,
        delta: float = 0.3,
        beta: float = 0.9,
        seed: int = 0,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.proxies = nn.Parameter(
            torch.randn(num_classes, proxies_per_class, feature_dim, generator=generator)
        )
        self.gamma, self.lam, self.delta, self.beta = gamma, lam, delta, beta

    def forward(
        self,
        logits: Tensor,
        features: Tensor,
        targets: Tensor,
        mask: Tensor | None = None,
        feature_rows: Tensor | None = None,
    ) -> Tensor:
        ce = masked_bce(logits, targets, mask)
        rows = torch.arange(len(features)) if feature_rows is None else feature_rows
        similarity = relaxed_similarity(features, self.proxies, self.gamma)
        triple = soft_triple_loss(
            similarity,
            targets[rows],
            None if mask is None else mask[rows],
            lam=self.lam,
            delta=self.delta,
        )
        return self.beta * ce + (1.0 - self.beta) * triple


def large_margin_cosine_loss(
    features: Tensor, weight: Tensor, labels: Tensor, s: float = 1.96, m: float = 0.15
) -> Tensor:
    """CosFace's LMCL: softmax cross-entropy on s·(cos θ_j − m·[j = y]), where cos θ_j is the
    cosine between the feature and class j's weight vector. The W-RankSim paper uses s=1.96,
    m=0.15. `features` (N, H), `weight` (C, H), `labels` (N,) class indices."""
    cosine = normalize(features, dim=-1) @ normalize(weight, dim=-1).T
    margin = m * nn.functional.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
    return cross_entropy(s * (cosine - margin), labels)


def ranks(values: Tensor) -> Tensor:
    """W-RankSim's rk (Eq. 1) along the last axis: 1 + how many entries are strictly larger.
    The largest entry gets rank 1; tied entries share a rank."""
    larger = values.unsqueeze(-2) > values.unsqueeze(-1)  # [..., i, j] = a_j > a_i
    return 1.0 + larger.sum(dim=-1).to(values.dtype)


class _BlackboxRanks(torch.autograd.Function):
    """rk with the blackbox-differentiation gradient of Vlastelica/Rolínek et al. (Eq. 7):
    dL/da = −(rk(a) − rk(a + λ·dL/drk)) / λ. The forward pass is the exact, piecewise constant
    rank; the backward pass asks which ranks a step along the incoming gradient would produce."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, values: Tensor, lam: float) -> Tensor:
        ranked = ranks(values)
        ctx.save_for_backward(values, ranked)
        ctx.lam = lam
        return ranked

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        values, ranked = ctx.saved_tensors
        perturbed = ranks(values + ctx.lam * grad)
        return -(ranked - perturbed) / ctx.lam, None


def label_similarity(levels: Tensor) -> Tensor:
    """S^c (Eq. 3): the negative absolute distance between every pair of ordinal levels."""
    return -(levels.unsqueeze(0) - levels.unsqueeze(1)).abs()


def rank_similarity_loss(similarity: Tensor, levels: Tensor, lam: float = 2.0) -> Tensor:
    """Eq. 4 on a given weight-similarity matrix S^w (C, C): Σ_i MSE(rk(S^c_i), rk(S^w_i))."""
    target = ranks(label_similarity(levels.to(similarity.dtype)))
    predicted = _BlackboxRanks.apply(similarity, lam)
    return ((predicted - target) ** 2).mean(dim=-1).sum()


def w_ranksim(weight: Tensor, levels: Tensor, lam: float = 2.0) -> Tensor:
    """W-RankSim: rank similarity between the class weight vectors' cosines (Eq. 2) and the
    ordinal levels' closeness (Eq. 3). `weight` (C, H); `levels` (C,) each class's level."""
    unit = normalize(weight, dim=-1)
    return rank_similarity_loss(unit @ unit.T, levels, lam)


class OrdinalSeverityLoss(nn.Module):
    """L = LMCL + γ·W-RankSim (Eq. 5) for an ordinal single-label target, owning the output
    layer's class weight vectors W (C, H) that both terms act on. Paper: λ=2, γ=1.5, s=1.96,
    m=0.15. Class c has ordinal level c (e.g. 0 none, 1 offensive, 2 hateful)."""

    def __init__(
        self,
        feature_dim: int,
        num_levels: int,
        *,
        lam: float = 2.0,
        gamma: float = 1.5,
        s: float = 1.96,
        m: float = 0.15,
        seed: int = 0,
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(num_levels, feature_dim, generator=generator))
        self.register_buffer("levels", torch.arange(num_levels, dtype=torch.float32))
        self.lam, self.gamma, self.s, self.m = lam, gamma, s, m

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        main = large_margin_cosine_loss(features, self.weight, labels, self.s, self.m)
        return main + self.gamma * w_ranksim(self.weight, self.levels, self.lam)

    def logits(self, features: Tensor) -> Tensor:
        """Scores at inference: s·cos θ_j (no margin)."""
        return self.s * normalize(features, dim=-1) @ normalize(self.weight, dim=-1).T
