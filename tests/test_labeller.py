"""The labeller wrapper: a real fine-tuned checkpoint, label maps, thresholds, odd input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification

from conftest import head_only_labeller
from voxtox.labels import CLASSES
from voxtox.models.labeller import LABELLER_CONFIG, LabelMap, TextLabeller


@pytest.fixture(scope="module")
def labeller(tiny_labeller: Path) -> TextLabeller:
    return TextLabeller(str(tiny_labeller))


def test_checkpoint_opens_with_plain_transformers(tiny_labeller: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_labeller)
    assert [model.config.id2label[i] for i in range(len(CLASSES))] == list(CLASSES)
    assert (tiny_labeller / "model.safetensors").exists() and (tiny_labeller / LABELLER_CONFIG).exists()


def test_fine_tuning_learned_the_classes(labeller: TextLabeller) -> None:
    probs = labeller.predict_proba(["what the fuck man", "good game everyone", "send me nudes babe"])
    profanity, dating = CLASSES.index("profanity"), CLASSES.index("dating_sexting")
    assert probs[0, profanity] > probs[1, profanity]
    assert probs[2, dating] > probs[1, dating]
    assert probs[1, CLASSES.index("no_violation")] > probs[0, CLASSES.index("no_violation")]


def test_odd_input_gets_a_defined_output(labeller: TextLabeller) -> None:
    odd = ["", "   ", "x" * 10_000, b"caf\xe9 \xff bytes", "🎮🔥💀", "ok"]
    probs = labeller.predict_proba(odd)
    assert probs.shape == (len(odd), len(CLASSES)) and np.isfinite(probs).all()
    assert ((probs >= 0) & (probs <= 1)).all()
    empty = np.zeros(len(CLASSES))
    empty[CLASSES.index("no_violation")] = 1.0
    np.testing.assert_array_equal(probs[0], empty)
    np.testing.assert_array_equal(probs[1], empty)


def test_label_map_folds_checkpoint_labels_onto_voxtox_classes(tiny_labeller: Path, tmp_path: Path) -> None:
    plain = TextLabeller(str(tiny_labeller)).predict_proba(["you are worthless trash"])[0]
    remapped_dir = tmp_path / "remapped"
    shutil.copytree(tiny_labeller, remapped_dir)
    # Pretend the checkpoint's "profanity" and "bullying" outputs both mean bullying, and say
    # nothing about no_violation: it must become 1 - max(toxic).
    LabelMap({"profanity": ["bullying"], "bullying": ["bullying"], "racism": ["racism"]}).save(remapped_dir)
    remapped = TextLabeller(str(remapped_dir)).predict_proba(["you are worthless trash"])[0]
    bullying = CLASSES.index("bullying")
    assert remapped[bullying] == pytest.approx(max(plain[CLASSES.index("profanity")], plain[bullying]), abs=1e-6)
    assert remapped[CLASSES.index("profanity")] == 0.0
    toxic = np.delete(remapped, CLASSES.index("no_violation"))
    assert remapped[CLASSES.index("no_violation")] == pytest.approx(1 - toxic.max(), abs=1e-6)


def test_thresholds_decide_per_class(tiny_labeller: Path, tmp_path: Path) -> None:
    strict_dir = tmp_path / "strict"
    shutil.copytree(tiny_labeller, strict_dir)
    config = json.loads((strict_dir / LABELLER_CONFIG).read_text())
    config["thresholds"] = {name: 1.01 for name in CLASSES} | {"no_violation": 0.0}
    (strict_dir / LABELLER_CONFIG).write_text(json.dumps(config))
    strict = TextLabeller(str(strict_dir))
    decisions = strict.decide(strict.predict_proba(["what the fuck man"]))
    assert decisions.tolist() == [[False] * 5 + [True]]


def test_unknown_target_class_is_a_clear_error(tiny_labeller: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_labeller, broken)
    (broken / LABELLER_CONFIG).write_text(json.dumps({"label_map": {"toxic": ["harassment"]}}))
    with pytest.raises(ValueError, match="harassment"):
        TextLabeller(str(broken))


def test_a_head_only_labeller_and_the_text_encoder_share_one_use_model(tmp_path: Path) -> None:
    """A frozen-encoder labeller (`usem3-head`) embeds with the pipeline's USE: a run loads it once
    (a second copy cost ~1.3 s a run). The shipped default is adapted since 2026-12-07 session 12
    (`usem3-lora`): it folds its adapters into a copy of its own and leaves the shared one as it is."""
    from voxtox.models.labeller import USEM_LORA_KIND
    from voxtox.models.text_encoder import USEM3, load_text_encoder
    from voxtox.storage.model_store import SHIPPED_MODELS

    labeller = TextLabeller(str(head_only_labeller(tmp_path / "head-only")), threads=2)
    assert labeller.scorer.encoder is load_text_encoder(USEM3, USEM3)
    default = TextLabeller(str(SHIPPED_MODELS / "voxtox-labeller"), threads=2)
    assert default.label_map.kind == USEM_LORA_KIND
    assert default.scorer.encoder is not load_text_encoder(USEM3, USEM3)
