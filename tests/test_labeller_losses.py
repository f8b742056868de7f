"""The labeller's losses against their papers' formulas on small hand-computed cases, and the
direction their gradients push."""

from __future__ import annotations

import math

import pytest
import torch

from voxtox.models.labeller_losses import (
    OrdinalSeverityLoss,
    TripleEntropyLoss,
    large_margin_cosine_loss,
    masked_bce,
    rank_similarity_loss,
    ranks,
    relaxed_similarity,
    soft_triple_loss,
    w_ranksim,
)

# One 2-d embedding x = (1, 0); two classes with K = 2 proxies each; γ = 0.5.
#   class 0 proxies (1, 0), (0, 1): x·w = 1, 0 → softmax(2, 0) = (e²/(e²+1), 1/(e²+1))
#       S'_0 = e²/(e²+1) · 1 = 0.8807970780
#   class 1 proxies (0, 1), (−1, 0): x·w = 0, −1 → softmax(0, −2) = (e²/(e²+1), 1/(e²+1))
#       S'_1 = 1/(e²+1) · (−1) = −0.1192029220
# Eq. 4 with y = 0, λ = 2, δ = 0.1:
#   −log e^{λ(S'_0−δ)} / (e^{λ(S'_0−δ)} + e^{λS'_1}) = log(1 + e^{−λ(S'_0 − S'_1 − δ)})
#   = log(1 + e^{−2·0.9}) = 0.1529776105
X = torch.tensor([[1.0, 0.0]])
PROXIES = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [-1.0, 0.0]]])
S_HAND = [0.8807970780, -0.1192029220]
SOFT_TRIPLE_HAND = 0.1529776105


def test_relaxed_similarity_is_eq5() -> None:
    similarity = relaxed_similarity(X, PROXIES, gamma=0.5)
    torch.testing.assert_close(similarity, torch.tensor([S_HAND]), rtol=0, atol=1e-7)


def test_relaxed_similarity_normalises_embeddings_and_proxies() -> None:
    scaled = relaxed_similarity(3.0 * X, 5.0 * PROXIES, gamma=0.5)
    torch.testing.assert_close(scaled, torch.tensor([S_HAND]), rtol=0, atol=1e-7)


def test_soft_triple_one_hot_is_eq4() -> None:
    similarity = torch.tensor([S_HAND])
    loss = soft_triple_loss(similarity, torch.tensor([[1.0, 0.0]]), lam=2.0, delta=0.1)
    assert loss.item() == pytest.approx(SOFT_TRIPLE_HAND, abs=1e-7)


# Multi-label: S' = (0.5, 0.2, −0.1), λ = 2, δ = 0.1.
#   targets (1, 1, 0): each positive competes only with the negative class 2.
#     p = 0: log(1 + e^{2·(−0.1) − 2·(0.5 − 0.1)}) = log(1 + e^{−1.0}) = 0.3132616875
#     p = 1: log(1 + e^{2·(−0.1) − 2·(0.2 − 0.1)}) = log(1 + e^{−0.4}) = 0.5130152524
#     row = mean = 0.4131384700
#   targets (1, 0.5, 0): class 1 counts half as a negative of p = 0 and half as a positive.
#     p = 0: log((e^{0.8} + 0.5·e^{0.4} + e^{−0.2}) / e^{0.8}) = 0.5324145747
#     p = 1: class 0 has negative weight 0 → 0.5130152524
#     row = (1·0.5324145747 + 0.5·0.5130152524) / 1.5 = 0.5259481340
#   targets (1, 0, 0) with class 1 masked: only class 2 is a negative → 0.3132616875
MULTI_S = torch.tensor([[0.5, 0.2, -0.1]])


@pytest.mark.parametrize(
    ("targets", "mask", "expected"),
    [
        ([1.0, 1.0, 0.0], None, 0.4131384700),
        ([1.0, 0.5, 0.0], None, 0.5259481340),
        ([1.0, 0.0, 0.0], [True, False, True], 0.3132616875),
    ],
)
def test_soft_triple_multi_label_adaptation(
    targets: list[float], mask: list[bool] | None, expected: float
) -> None:
    loss = soft_triple_loss(
        MULTI_S,
        torch.tensor([targets]),
        None if mask is None else torch.tensor([mask]),
        lam=2.0,
        delta=0.1,
    )
    assert loss.item() == pytest.approx(expected, abs=1e-7)


def test_soft_triple_ignores_rows_without_a_positive() -> None:
    similarity = torch.cat([MULTI_S, MULTI_S])
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    loss = soft_triple_loss(similarity, targets, lam=2.0, delta=0.1)
    assert loss.item() == pytest.approx(0.4131384700, abs=1e-7)


# BCE: logits (2, −1), targets (1, 0): (log(1+e^{−2}) + log(1+e^{−1})) / 2 = 0.2200948493
def test_masked_bce_hand_case_and_mask() -> None:
    logits = torch.tensor([[2.0, -1.0, 9.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False]])  # the third entry would add a large loss
    assert masked_bce(logits[:, :2], targets[:, :2]).item() == pytest.approx(0.2200948493, abs=1e-7)
    assert masked_bce(logits, targets, mask).item() == pytest.approx(0.2200948493, abs=1e-7)


def test_triple_entropy_is_beta_mix_of_eq7_and_eq4() -> None:
    loss_fn = TripleEntropyLoss(2, 2, proxies_per_class=2, gamma=0.5, lam=2.0, delta=0.1, beta=0.9)
    with torch.no_grad():
        loss_fn.proxies.copy_(PROXIES)
    loss = loss_fn(torch.tensor([[2.0, -1.0]]), X, torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(0.9 * 0.2200948493 + 0.1 * SOFT_TRIPLE_HAND, abs=1e-7)


def test_triple_entropy_token_features_take_their_rows_targets() -> None:
    loss_fn = TripleEntropyLoss(2, 2, proxies_per_class=2, gamma=0.5, lam=2.0, delta=0.1, beta=0.0)
    with torch.no_grad():
        loss_fn.proxies.copy_(PROXIES)
    tokens = torch.cat([X, X, X])  # three tokens of row 0; row 1 has no token
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = loss_fn(torch.zeros(2, 2), tokens, targets, feature_rows=torch.tensor([0, 0, 0]))
    assert loss.item() == pytest.approx(SOFT_TRIPLE_HAND, abs=1e-7)


def test_soft_triple_gradient_pulls_towards_the_true_class() -> None:
    x = X.clone().requires_grad_(True)
    proxies = PROXIES.clone().requires_grad_(True)
    soft_triple_loss(
        relaxed_similarity(x, proxies, 0.5), torch.tensor([[0.0, 1.0]]), lam=2.0, delta=0.1
    ).backward()
    before = relaxed_similarity(X, PROXIES, 0.5)[0]
    after = relaxed_similarity(X - 0.1 * x.grad, PROXIES, 0.5)[0]
    assert after[1] > before[1] and after[0] < before[0]  # a descent step on x: nearer class 1
    # The true class's proxy (0, 1) is moved towards x: −grad · x > 0.
    assert -proxies.grad[1, 0] @ X[0] > 0


# LMCL: feature (3, 4) → (0.6, 0.8); weights (1, 0), (0, 2), (−1, 0) → cos = (0.6, 0.8, −0.6).
#   y = 0, s = 1.96, m = 0.15: logits s·(0.45, 0.8, −0.6) = (0.882, 1.568, −1.176)
#   loss = log(e^{0.882} + e^{1.568} + e^{−1.176}) − 0.882 = 1.1357364892
def test_large_margin_cosine_loss_hand_case() -> None:
    features = torch.tensor([[3.0, 4.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    loss = large_margin_cosine_loss(features, weight, torch.tensor([0]), s=1.96, m=0.15)
    assert loss.item() == pytest.approx(1.1357364892, abs=1e-7)


def test_large_margin_cosine_loss_gradient_pulls_feature_to_its_class() -> None:
    features = torch.tensor([[3.0, 4.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    large_margin_cosine_loss(features, weight, torch.tensor([0])).backward()
    assert -features.grad[0] @ torch.tensor([1.0, 0.0]) > 0  # towards class 0's weight
    assert -features.grad[0] @ torch.tensor([0.0, 1.0]) < 0  # away from class 1's


def test_ranks_are_eq1() -> None:
    torch.testing.assert_close(ranks(torch.tensor([0.0, -1.0, -1.0, 2.0])), torch.tensor([2.0, 3.0, 3.0, 1.0]))


# W-RankSim, 3 ordinal levels 0 < 1 < 2. S^c = −|i − j|; rk(S^c) rows: (1,2,3), (2,1,2), (3,2,1).
# Weights w0 = (1, 0), w1 = (0, 1), w2 = (cos 60°, sin 60°): class 0 is nearer class 2 than 1.
#   S^w = [[1, 0, .5], [0, 1, .866], [.5, .866, 1]]; rk rows: (1,3,2), (3,1,2), (3,2,1)
#   Eq. 4 with MSE: row 0: (0+1+1)/3, row 1: (1+0+0)/3, row 2: 0 → L = 1
# Blackbox gradient (Eq. 7), λ = 2, dL/drk = 2(rk_w − rk_c)/3:
#   row 0: dL/drk = (0, 2/3, −2/3); a_λ = (1, 4/3, −5/6) → rk (2, 1, 3);
#          dL/da = −(1/2)((1,3,2) − (2,1,3)) = (0.5, −1, 0.5)
#   row 1: dL/drk = (2/3, 0, 0); a_λ = (4/3, 1, .866) → rk (1, 2, 3);
#          dL/da = −(1/2)((3,1,2) − (1,2,3)) = (−1, 0.5, 0.5)
#   row 2: ranks already agree → 0
SIN60 = math.sqrt(3) / 2
WRONG_ORDER = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, SIN60]])
LEVELS = torch.tensor([0.0, 1.0, 2.0])


def test_w_ranksim_hand_case_and_blackbox_gradient() -> None:
    similarity = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, SIN60], [0.5, SIN60, 1.0]], requires_grad=True)
    loss = rank_similarity_loss(similarity, LEVELS, lam=2.0)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    expected = torch.tensor([[0.5, -1.0, 0.5], [-1.0, 0.5, 0.5], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(similarity.grad, expected)
    assert w_ranksim(WRONG_ORDER, LEVELS, lam=2.0).item() == pytest.approx(1.0)


def test_w_ranksim_gradient_moves_level_1_towards_level_0() -> None:
    weight = WRONG_ORDER.clone().requires_grad_(True)
    w_ranksim(weight, LEVELS, lam=2.0).backward()

    def margins(w: torch.Tensor) -> torch.Tensor:
        """How much nearer level 0 is to 1 than to 2, and level 1 to 0 than to 2 (both < 0 now)."""
        unit = torch.nn.functional.normalize(w, dim=-1)
        s = unit @ unit.T
        return torch.stack([s[0, 1] - s[0, 2], s[1, 0] - s[1, 2]])

    assert (margins(weight.detach() - 0.1 * weight.grad) > margins(WRONG_ORDER)).all()
    assert (margins(weight.detach() - 0.5 * weight.grad) > 0).all()  # a larger step fixes the order
    assert w_ranksim(weight.detach() - 0.5 * weight.grad, LEVELS).item() < 1.0
    # Level 1 half-way between 0 and 2 (equal cosines, tied as in rk(S^c)): nothing to fix.
    assert w_ranksim(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), LEVELS).item() == 0.0


def test_ordinal_severity_loss_is_lmcl_plus_gamma_w_ranksim() -> None:
    loss_fn = OrdinalSeverityLoss(2, 3, lam=2.0, gamma=1.5, s=1.96, m=0.15)
    with torch.no_grad():
        loss_fn.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]))
    features, labels = torch.tensor([[3.0, 4.0]]), torch.tensor([0])
    # Those weights' cosines: (0,1) 0, (0,2) −1, (1,2) 0 → rk rows (1,2,3), (2,1,2), (3,2,1): W-RankSim 0.
    assert loss_fn(features, labels).item() == pytest.approx(1.1357364892, abs=1e-7)
    assert loss_fn.logits(features).argmax().item() == 1
