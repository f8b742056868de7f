"""Training the labeller: data sources and masks, thresholds, the USE+head and HF kinds, odd
input on the new path, evaluation with intervals, and the Prefect flows end to end (small)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel
from typer.testing import CliRunner

from tests.conftest import LABELLER_TRAINING
from voxtox.corpus.seed import normalise_text
from voxtox.labels import CLASSES
from voxtox.models.labeller import HF_KIND, LABELLER_CONFIG, USEM_HEAD_KIND, TextLabeller, UsemHead
from voxtox.models.labeller_data import LabelledTexts, load_held_out, load_splits, subsample
from voxtox.models.labeller_eval import compare, evaluate
from voxtox.models.labeller_training import (
    TRAINING_RECORD,
    HeadNet,
    TrainingLoss,
    choose_thresholds,
    precision_threshold,
    row_means,
    severity_levels,
    train_labeller,
)
from voxtox.models.labeller_losses import masked_bce
from voxtox.models.metrics import f1_at_threshold
from voxtox.settings import LabellerTrainSettings, Settings
from voxtox.storage.model_store import resolve_model

PROFANITY, NO_VIOLATION = CLASSES.index("profanity"), CLASSES.index("no_violation")


def _tiny_corpus() -> LabelledTexts:
    texts, targets = [], []
    for name, sentences in LABELLER_TRAINING.items():
        for sentence in sentences:
            texts.append(sentence)
            targets.append([float(c == name) for c in CLASSES])
    n = len(texts)
    return LabelledTexts(texts, np.array(targets, np.float32), np.ones((n, 6), bool), ["t"] * n, ["en"] * n)


def _write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_file_data_masks_missing_and_empty_labels(tmp_path: Path) -> None:
    rows = [
        {"text": "fuck this", "profanity": 1, "bullying": "", "split": "train"},
        {"text": "nice shot", "profanity": 0, "bullying": 0.0, "split": "test"},
        {"text": "you suck loser", "profanity": 0.4, "bullying": 1, "split": "test"},
    ]
    path = _write_csv(tmp_path / "data.csv", rows)
    splits = load_splits(str(path))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1, 0, 2]
    train = splits["train"]
    assert train.mask[0].tolist() == [True, False, False, False, False, False]
    test = load_held_out(str(path))
    assert test.texts == ["nice shot", "you suck loser"]
    assert test.binary_targets()[1, :2].tolist() == [False, True]  # 0.4 is a negative


def test_file_without_split_column_splits_duplicates_together(tmp_path: Path) -> None:
    variants = ["Nice shot!!", "nice shot", "NICE, shot"]
    rows = [{"text": t, "no_violation": 1} for t in variants * 5 + [f"line {i}" for i in range(60)]]
    splits = load_splits(str(_write_csv(tmp_path / "data.csv", rows)))
    holding = [s for s, data in splits.items() if "nice shot" in {normalise_text(t) for t in data.texts}]
    assert len(holding) == 1
    assert sum(len(d) for d in splits.values()) == len(rows)
    assert len(load_held_out(str(tmp_path / "data.csv"))) == len(rows)  # no split column: all held out


def test_bad_data_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="built-in source"):
        load_splits(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="label column"):
        load_splits(str(_write_csv(tmp_path / "a.csv", [{"text": "x", "toxic": 1}])))


def test_builtin_splits_are_disjoint_and_mask_davidsons_unlabelled_classes() -> None:
    splits = load_splits("builtin")
    keys = {s: {normalise_text(t) for t in d.texts} for s, d in splits.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"]
    assert not keys["val"] & keys["test"]
    test = splits["test"]
    davidson = np.asarray(test.source) == "davidson"
    unlabelled = [CLASSES.index("dating_sexting"), CLASSES.index("other")]
    assert not test.mask[davidson][:, unlabelled].any() and test.mask[~davidson].all()
    assert set(test.lang) == {"en", "es", "fr", "de", "pt"}
    small = subsample(splits["train"], 1000, seed=0)
    assert abs(len(small) - 1000) <= 3 and set(small.source) == {"seed", "davidson", "functional"}


# Scores (desc) 0.9 0.8 0.7 0.6 0.5 with y 1 1 0 1 0: precision at each threshold
#   0.9: 1/1, 0.8: 2/2, 0.7: 2/3, 0.6: 3/4, 0.5: 3/5
def test_precision_threshold_takes_most_recall_at_target() -> None:
    y = np.array([1, 1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    assert precision_threshold(y, scores, 0.75) == 0.6
    assert precision_threshold(y, scores, 0.8) == 0.8
    assert precision_threshold(np.array([0, 1]), np.array([0.9, 0.1]), 0.9) == 0.1  # unreachable


def test_thresholds_use_only_labelled_rows() -> None:
    data = _tiny_corpus()
    probs = data.targets * 0.8 + 0.1
    data.mask[:, CLASSES.index("other")] = False
    thresholds = choose_thresholds(data, probs, "f1")
    assert "other" not in thresholds and thresholds["profanity"] == pytest.approx(0.9)
    assert choose_thresholds(data, probs, "precision", 0.99)["racism"] == pytest.approx(0.9)


def test_severity_levels_follow_none_offensive_hateful() -> None:
    names = ["no_violation", "profanity", "racism", "bullying", "dating_sexting"]
    targets = torch.tensor([[1.0 if c == n else 0.0 for c in CLASSES] for n in names])
    mask = torch.ones_like(targets, dtype=torch.bool)
    assert severity_levels(targets, mask).tolist() == [0, 1, 2, 2, -1]  # dating is off the scale
    targets[1, CLASSES.index("racism")] = 0.6  # profane and racist: the most severe level wins
    assert severity_levels(targets, mask)[1] == 2
    mask[0, CLASSES.index("racism")] = False  # unknown whether it is hateful: left out
    assert severity_levels(targets, mask)[0] == -1


def test_wranksim_option_trains_the_severity_weights_on_rows_of_the_scale() -> None:
    data = _tiny_corpus()
    torch.manual_seed(0)
    net = HeadNet(UsemHead(8, 4))
    loss_fn = TrainingLoss(LabellerTrainSettings(loss="wranksim"), 4)
    targets, mask = torch.tensor(data.targets), torch.tensor(data.mask)
    out = net.forward_rows(torch.randn(len(data), 8), torch.arange(len(data)))
    total = loss_fn(out, targets, mask)
    assert total > masked_bce(out.logits, targets, mask)  # the severity term is added
    total.backward()
    assert loss_fn.severity.weight.grad.abs().sum() > 0
    assert net.head.classifier.bias.grad.abs().sum() > 0
    # a batch with no row on the scale is plain BCE
    off_scale = torch.zeros_like(targets)
    off_scale[:, CLASSES.index("dating_sexting")] = 1.0
    out = net.forward_rows(torch.randn(len(data), 8), torch.arange(len(data)))
    assert loss_fn(out, off_scale, mask) == masked_bce(out.logits, off_scale, mask)


def test_row_means_average_token_features_per_row() -> None:
    features = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    assert row_means(features, torch.tensor([0, 0, 1]), 2).tolist() == [[2.0, 1.0], [5.0, 5.0]]


@pytest.mark.parametrize("loss", ["bce", "tripleentropy", "wranksim"])
def test_masked_classes_get_no_gradient(loss: str) -> None:
    data = _tiny_corpus()
    data.mask[:, CLASSES.index("other")] = False
    torch.manual_seed(0)
    net = HeadNet(UsemHead(8, 4))
    loss_fn = TrainingLoss(LabellerTrainSettings(loss=loss, proxies_per_class=3), 4)
    rows = torch.arange(len(data))
    out = net.forward_rows(torch.randn(len(data), 8), rows)
    loss_fn(out, torch.tensor(data.targets), torch.tensor(data.mask)).backward()
    grad = net.head.classifier.bias.grad
    assert grad[CLASSES.index("other")] == 0 and grad[PROFANITY] != 0
    if loss == "tripleentropy":
        proxy_grad = loss_fn.triple.proxies.grad.abs().sum(dim=(1, 2))
        assert proxy_grad[CLASSES.index("other")] < 1e-12 < proxy_grad[PROFANITY]


@pytest.fixture(scope="module")
def usem_labeller(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = _tiny_corpus()
    config = LabellerTrainSettings(loss="tripleentropy", epochs=15, learning_rate=1e-2, proxies_per_class=4)
    out = tmp_path_factory.mktemp("usem") / "usem-labeller"
    return train_labeller({"train": data, "val": data}, out, config, backbone_path="")


def test_usem_head_checkpoint_round_trips(usem_labeller: Path) -> None:
    config = json.loads((usem_labeller / LABELLER_CONFIG).read_text())
    assert config["kind"] == USEM_HEAD_KIND and set(config["thresholds"]) == set(CLASSES)
    record = json.loads((usem_labeller / TRAINING_RECORD).read_text())
    assert record["settings"]["loss"] == "tripleentropy" and len(record["epochs"]) == 15
    labeller = TextLabeller(str(usem_labeller))
    probs = labeller.predict_proba(["what the fuck man", "good game everyone"])
    assert probs[0, PROFANITY] > probs[1, PROFANITY]
    assert probs[1, NO_VIOLATION] > probs[0, NO_VIOLATION]


def test_usem_head_odd_input_gets_a_defined_output(usem_labeller: Path) -> None:
    labeller = TextLabeller(str(usem_labeller))
    odd: list[str | bytes] = ["", "   ", "x" * 10_000, "fuck " * 2_000, b"caf\xe9 \xff bytes", "🎮🔥💀"]
    probs = labeller.predict_proba(odd)
    assert probs.shape == (len(odd), len(CLASSES)) and np.isfinite(probs).all()
    assert ((probs >= 0) & (probs <= 1)).all()
    expected_empty = np.eye(len(CLASSES))[NO_VIOLATION]
    np.testing.assert_array_equal(probs[:2], [expected_empty, expected_empty])
    assert labeller.decide(probs).shape == probs.shape


def _tiny_bert(directory: Path, model_cache: Path) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer: the HF path in seconds."""
    AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2", model_cache)).save_pretrained(directory)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(directory)  # no classifier: training adds a 6-way one
    return directory


def test_hf_backbone_with_triple_entropy_on_tokens(tmp_path: Path, model_cache: Path) -> None:
    backbone = _tiny_bert(tmp_path / "bert", model_cache)
    data = _tiny_corpus()
    config = LabellerTrainSettings(
        backbone=str(backbone), loss="tripleentropy", epochs=2, learning_rate=1e-3, proxies_per_class=3,
        threshold="precision",
    )
    out = train_labeller({"train": data, "val": data}, tmp_path / "out", config, str(backbone))
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert [model.config.id2label[i] for i in range(len(CLASSES))] == list(CLASSES)
    assert json.loads((out / LABELLER_CONFIG).read_text())["kind"] == HF_KIND
    probs = TextLabeller(str(out)).predict_proba(["hello", ""])
    assert np.isfinite(probs).all()


def _two_group_data() -> tuple[LabelledTexts, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 120
    targets = (rng.random((n, 6)) < 0.3).astype(np.float32)
    mask = np.ones((n, 6), bool)
    mask[60:, CLASSES.index("dating_sexting")] = False  # the second source never labels it
    source = ["seed"] * 60 + ["davidson"] * 60
    lang = ["en"] * 30 + ["es"] * 30 + ["en"] * 60
    probs = np.clip(targets * 0.5 + rng.random((n, 6)) * 0.6, 0, 1)
    return LabelledTexts([f"t{i}" for i in range(n)], targets, mask, source, lang), probs


def test_evaluation_groups_classes_and_intervals() -> None:
    data, probs = _two_group_data()
    thresholds = {c: 0.5 for c in CLASSES}
    results = {r.group: r for r in evaluate(data, probs, thresholds, n_resamples=200)}
    assert set(results) == {"davidson", "seed/en", "seed/es", "seed/all"}
    assert "dating_sexting" not in results["davidson"].ap and "dating_sexting" in results["seed/all"].ap
    seed_all = results["seed/all"]
    rows = slice(0, 60)
    expected = f1_at_threshold(data.binary_targets()[rows], probs[rows], np.full(6, 0.5))
    for k, c in enumerate(CLASSES):
        ci = seed_all.f1[c]
        assert ci.point == pytest.approx(expected[k]) and ci.low <= ci.point <= ci.high
    assert seed_all.ap["mAP"].low <= seed_all.ap["mAP"].point <= seed_all.ap["mAP"].high


def test_comparison_of_a_labeller_with_itself_is_zero() -> None:
    data, probs = _two_group_data()
    differences = compare(data, probs, probs, n_resamples=100)
    assert all(ci.point == 0 and not ci.excludes_zero for d in differences.values() for ci in d.values())


def test_train_and_eval_flows(tmp_path: Path, prefect_harness: None) -> None:
    from voxtox.flows.labeller import labeller_eval_flow, labeller_train_flow

    data = _tiny_corpus()
    rows = [
        {"text": f"{t} {suffix}", **dict(zip(CLASSES, row.tolist())), "split": s, "lang": "en"}
        for t, row in zip(data.texts, data.targets)
        for s, suffix in (("train", ""), ("val", "now"), ("test", "again"))
    ]
    path = _write_csv(tmp_path / "data.csv", rows)
    settings = LabellerTrainSettings(epochs=3, learning_rate=1e-2)
    from voxtox.settings import Settings

    full = Settings(data_dir=tmp_path, labeller_train=settings)
    out = labeller_train_flow(data=str(path), out=str(tmp_path / "lab"), settings=full)
    report = labeller_eval_flow(checkpoint=out, data=str(path), settings=full, baseline=out)
    assert "| file |" in report and "AP(lab) − AP(lab)" in report


def test_distilbert_backbone_trains_from_the_cli_and_labels_through_voxtox_label(
    tmp_path: Path, model_cache: Path, prefect_harness: None
) -> None:
    """`voxtox labeller train --backbone DIR` on a tiny randomly initialised DistilBERT (a real
    model, really trained), then `voxtox label` with the result as its labeller."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertModel

    from tests.conftest import spoken, write_audio
    from voxtox.flows.cli import app
    from voxtox.storage.catalog import Catalog
    from voxtox.corpus.speech_synth import Utterance

    backbone = tmp_path / "distilbert"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("all-MiniLM-L6-v2", model_cache))
    tokenizer.save_pretrained(backbone)
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=2, hidden_dim=128,
        dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0,  # 28 sentences: fit them
    )
    torch.manual_seed(0)
    DistilBertModel(config).save_pretrained(backbone)
    data = _tiny_corpus()
    rows = [
        {"text": f"{t}{suffix}", **dict(zip(CLASSES, row.tolist())), "split": split}
        for t, row in zip(data.texts, data.targets)
        for split, suffix in (("train", ""), ("val", " now"))
    ]
    runner = CliRunner()
    out = tmp_path / "distilbert-labeller"
    trained = runner.invoke(app, [
        "labeller", "train", "--data", str(_write_csv(tmp_path / "data.csv", rows)), "--backbone", str(backbone),
        "--epochs", "12", "--learning-rate", "3e-3", "--batch-size", "8", "--out", str(out),
    ])
    assert trained.exit_code == 0, trained.output
    assert isinstance(AutoModelForSequenceClassification.from_pretrained(out), DistilBertForSequenceClassification)
    epochs = json.loads((out / TRAINING_RECORD).read_text())["epochs"]
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]  # it learned: chance mAP is ~0.2
    assert max(e["val_map"] for e in epochs) > 0.5

    inbox = tmp_path / "inbox"
    write_audio(inbox / "chat.wav", spoken(Utterance("what the fuck man, this lag is killing me", "en")))
    labelled = runner.invoke(app, ["label", str(inbox), "--labeller", str(out), "--data-dir", str(tmp_path / "data")])
    assert labelled.exit_code == 0, labelled.output
    clips = Catalog.from_settings(Settings(data_dir=tmp_path / "data")).query(
        "SELECT transcript, labeller_model, " + ", ".join(f"prob_{c}" for c in CLASSES) + " FROM clips"
    ).to_pylist()
    assert clips and all(clip["labeller_model"] == str(out) for clip in clips)
    expected = TextLabeller(str(out)).predict_proba([clip["transcript"] for clip in clips])
    got = np.array([[clip[f"prob_{c}"] for c in CLASSES] for clip in clips])
    np.testing.assert_allclose(got, expected, atol=1e-5)
