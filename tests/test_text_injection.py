"""Text injection losses against hand-computed cases, their gradient directions, and the exact
full-batch gradient across micro-batches and (gloo) ranks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from voxtox.models.text_injection import (
    TextLossParams,
    asymmetric_proxy_loss,
    combined_loss,
    contrastive_loss,
    cosine_matrix,
    make_text_loss,
    mse_loss,
    mse_normalised_loss,
    ntxent_am_loss,
    same_label_set,
    text_loss_gradients,
)

R = 1 / math.sqrt(2)
# x1 = (1, 0), x2 = (0, 1); y1 = (1, 0), y2 = (1, 1): cos = [[1, 1/√2], [0, 1/√2]].
X = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
Y = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)


def test_cosine_matrix() -> None:
    torch.testing.assert_close(cosine_matrix(X, Y), torch.tensor([[1.0, R], [0.0, R]], dtype=torch.float64))


def test_mse_by_hand() -> None:
    # ||x1 − y1||² = 0, ||x2 − y2||² = (0 − 1)² + (1 − 1)² = 1; mean 0.5
    assert mse_loss(X, Y).item() == pytest.approx(0.5)


def test_mse_normalised_by_hand() -> None:
    # unit vectors: x1 = y1 → 0; x2 = (0, 1), y2/|y2| = (R, R): (0 − R)² + (1 − R)² = 2 − 2R; mean 1 − R
    assert mse_normalised_loss(X, Y).item() == pytest.approx(1 - R)
    assert mse_normalised_loss(100 * X, Y).item() == pytest.approx(1 - R)  # the scale of x does not matter
    assert make_text_loss("mse-normalised", TextLossParams())(X, Y, torch.zeros(2, 1)).item() == pytest.approx(1 - R)


def test_contrastive_by_hand() -> None:
    # τ = 1: row 1: −log(e^1 / (e^1 + e^{1/√2})) = log(1 + e^{1/√2 − 1}) = 0.557398
    #        row 2: −log(e^{1/√2} / (e^0 + e^{1/√2})) = log(1 + e^{−1/√2}) = 0.400821
    assert contrastive_loss(X, Y, 1.0).item() == pytest.approx(0.4791096452, abs=1e-9)
    # τ = 0.5: log(1 + e^{(1/√2 − 1)/0.5}) and log(1 + e^{−(1/√2)/0.5}), mean
    assert contrastive_loss(X, Y, 0.5).item() == pytest.approx(0.3300846501, abs=1e-9)


def test_ntxent_am_by_hand() -> None:
    # m = 0.1, τ = 1: logits [[0.9, 1/√2], [0, 1/√2 − 0.1]]
    # rows (speech→text):  −0.9 + log(e^0.9 + e^{1/√2}),   −0.6071 + log(e^0 + e^0.6071)
    # cols (text→speech):  −0.9 + log(e^0.9 + e^0),        −0.6071 + log(e^{1/√2} + e^0.6071)
    # loss = ½ (mean rows + mean cols) = 0.530468
    assert ntxent_am_loss(X, Y, 1.0, 0.1).item() == pytest.approx(0.5304675921, abs=1e-9)
    # Without a margin the speech→text half is the paper's contrastive loss.
    logits = cosine_matrix(X, Y)
    text_to_speech = torch.nn.functional.cross_entropy(logits.T, torch.arange(2))
    expected = 0.5 * (contrastive_loss(X, Y, 1.0) + text_to_speech)
    torch.testing.assert_close(ntxent_am_loss(X, Y, 1.0, 0.0), expected)


def test_asymmetric_proxy_by_hand_two_rows() -> None:
    # α=2, β=50, λ=0.5; different label sets, so P_i = {i}, N_i = {the other}.
    # row 1: ½ log(1 + e^{2(0.5 − cos(y1,x1)=1)}) + softplus(50 (cos(x1,y2)=1/√2 − 0.5))
    # row 2: ½ log(1 + e^{2(0.5 − cos(y2,x2)=1/√2)}) + softplus(50 (cos(x2,y1)=0 − 0.5))
    positives = torch.eye(2, dtype=torch.bool)
    assert asymmetric_proxy_loss(X, Y, positives).item() == pytest.approx(5.3828347177, abs=1e-8)


def test_asymmetric_proxy_by_hand_shared_label_set() -> None:
    # x3 = (1, 1), y3 = (0, 1), labelled like row 1: P_1 = P_3 = {1, 3}, P_2 = {2}.
    # S[i, j] = cos(x_i, y_j) = [[1, 1/√2, 0], [0, 1/√2, 1], [1/√2, 1, 1/√2]]; S^A[i, j] = S[j, i]
    # row i: ½ log(1 + Σ_{j∈P_i} e^{2(0.5 − S[j, i])}) + mean_{k∈N_i} softplus(50 (S[i, k] − 0.5))
    x = torch.cat([X, torch.tensor([[1.0, 1.0]], dtype=torch.float64)])
    y = torch.cat([Y, torch.tensor([[0.0, 1.0]], dtype=torch.float64)])
    labels = torch.tensor([[1, 0], [0, 1], [1, 0]])
    positives = same_label_set(labels)
    assert positives.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    assert asymmetric_proxy_loss(x, y, positives).item() == pytest.approx(16.4003907419, abs=1e-7)


def test_asymmetric_proxy_needs_the_own_transcript_as_positive() -> None:
    with pytest.raises(ValueError, match="own transcript"):
        asymmetric_proxy_loss(X, Y, torch.zeros(2, 2, dtype=torch.bool))


def test_combined_loss_is_the_papers_eq1() -> None:
    bce, text = torch.tensor(2.0), torch.tensor(10.0)
    assert combined_loss(bce, text, 1.0).item() == 2.0  # the baseline ignores text
    assert combined_loss(bce, text, 0.1).item() == pytest.approx(0.1 * 2.0 + 0.9 * 10.0)


def test_unknown_loss_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown text loss"):
        make_text_loss("cosine", TextLossParams())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["mse", "contrastive", "ntxent-am", "asymmetric-proxy", "mse-normalised"])
def test_a_gradient_step_pulls_speech_towards_its_own_transcript(name: str) -> None:
    """One small step against the gradient lowers the loss, raises each clip's cosine with its
    own transcript, and (contrastive losses) lowers the mean cosine with the other ones."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 8, generator=generator, dtype=torch.float64)
    labels = torch.eye(6)[:, :3]  # rows 3..5 share the empty label set
    loss_fn = make_text_loss(name, TextLossParams())  # type: ignore[arg-type]
    loss = loss_fn(x, y, labels)
    (grad,) = torch.autograd.grad(loss, x)
    stepped = (x - 1e-3 * grad / grad.norm()).detach()
    before, after = cosine_matrix(x.detach(), y), cosine_matrix(stepped, y)
    assert loss_fn(stepped, y, labels) < loss
    assert (after.diagonal() > before.diagonal()).all()
    if name in ("contrastive", "ntxent-am"):
        off_diagonal = ~torch.eye(6, dtype=torch.bool)
        assert after[off_diagonal].mean() < before[off_diagonal].mean()


@pytest.mark.parametrize("name", ["contrastive", "ntxent-am", "asymmetric-proxy"])
def test_micro_batches_with_cached_gradients_give_the_full_batch_gradient(name: str) -> None:
    """Four micro-batches, each backpropagated alone through a linear 'encoder', get the same
    parameter gradient as the loss over the whole batch (negatives span micro-batches)."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(5, 4).double()
    inputs, y = torch.randn(12, 5, dtype=torch.float64), torch.randn(12, 4, dtype=torch.float64)
    labels = (torch.rand(12, 3) > 0.5).long()
    loss_fn = make_text_loss(name, TextLossParams())  # type: ignore[arg-type]

    full = loss_fn(encoder(inputs), y, labels)
    expected = torch.autograd.grad(full, encoder.weight)[0]

    with torch.no_grad():
        cached = text_loss_gradients(loss_fn, encoder(inputs), y, labels)
    encoder.zero_grad()
    for rows in torch.arange(12).chunk(4):
        (encoder(inputs[rows]) * cached.grad[rows]).sum().backward()
    torch.testing.assert_close(cached.loss, full.detach())
    torch.testing.assert_close(encoder.weight.grad, expected)


def _two_rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    labels = torch.zeros(7, 2)
    rows = slice(0, 3) if rank == 0 else slice(3, 7)  # unequal row counts per rank
    loss_fn = make_text_loss("ntxent-am", TextLossParams())
    cached = text_loss_gradients(loss_fn, x[rows], y[rows], labels[rows])
    torch.save({"loss": cached.loss, "grad": cached.grad}, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_ranks_see_every_ranks_negatives(tmp_path: Path) -> None:
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 4, dtype=torch.float64)
    full = ntxent_am_loss(x, y)
    (grad,) = torch.autograd.grad(full, x)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for result in results:
        torch.testing.assert_close(result["loss"], full.detach())
    torch.testing.assert_close(torch.cat([r["grad"] for r in results]), grad)
