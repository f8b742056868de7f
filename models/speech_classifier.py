"""The audio-only toxicity classifier (paper §3.2, §3.4): speech encoder -> projection -> masked
mean pooling -> linear head with one sigmoid output per class.

The projection maps the encoder's width onto the text embedding's, so the pooled vector of the
last layer is both what the head classifies and the `x` that text injection pulls towards the
transcript's embedding. Injecting at an earlier layer `i` adds its own projection of `ℓ_i(s)`.

Mean pooling and an affine projection commute (mean(W h + b) = W mean(h) + b), so the model
pools first and projects the pooled vector: the same function, at a fraction of the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from voxtox.models.whisper_encoder import SpeechEncoder


@dataclass
class ClassifierOutput:
    """`logits` (batch, classes); `injected` (batch, text_dim): x = MeanPool(h_proj(ℓ_i(s)))."""

    logits: Tensor
    injected: Tensor


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over positions where `mask` (batch, positions) is True; hidden (batch, positions, d)."""
    weights = mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class SpeechToxicityClassifier(nn.Module):
    def __init__(self, encoder: SpeechEncoder, num_classes: int, text_dim: int, inject_layer: int = -1) -> None:
        super().__init__()
        self.encoder = encoder
        self.inject_layer = encoder.resolve_layer(inject_layer)
        width = encoder.config.d_model
        self.projection = nn.Linear(width, text_dim)
        self.head = nn.Linear(text_dim, num_classes)
        last = len(encoder.layers)
        self.injection_projection = nn.Linear(width, text_dim) if self.inject_layer != last else None

    def forward(self, features: Tensor, frame_lengths: Tensor) -> ClassifierOutput:
        layers = (-1,) if self.injection_projection is None else (-1, self.inject_layer)
        encoded = self.encoder(features, frame_lengths, layers=layers)
        pooled = self.projection(masked_mean(encoded.hidden_states[0], encoded.mask))
        if self.injection_projection is None:
            injected = pooled
        else:
            injected = self.injection_projection(masked_mean(encoded.hidden_states[1], encoded.mask))
        return ClassifierOutput(self.head(pooled), injected)

    @torch.no_grad()
    def predict_proba(self, features: Tensor, frame_lengths: Tensor) -> Tensor:
        return torch.sigmoid(self(features, frame_lengths).logits)
