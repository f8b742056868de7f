"""The speech encoder: CTranslate2 weights give CTranslate2's outputs, transformers checkpoints
load unchanged, variable-length masked batches equal items encoded alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperModel

from conftest import SHARED_AUDIO
from voxtox.models.whisper_encoder import (
    MAX_FRAMES,
    SpeechEncoder,
    from_ctranslate2,
    load_speech_encoder,
    log_mel,
    mel_filters,
)
from voxtox.audio import load_audio

TINY = dict(
    d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
    decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=64,
    num_mel_bins=80, max_source_positions=1500, max_target_positions=32,
    pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
)


@pytest.fixture(scope="module")
def jfk_features() -> torch.Tensor:
    """Log-mel features of 11 s of real English speech."""
    return log_mel(load_audio(str(SHARED_AUDIO / "jfk.flac")).samples, mel_filters(80))


def tiny_encoder(seed: int = 0) -> SpeechEncoder:
    torch.manual_seed(seed)
    return SpeechEncoder(WhisperConfig(**TINY)).eval()


def test_ctranslate2_base_converts_and_matches_ctranslate2_encode(whisper_dir: str, jfk_features: torch.Tensor) -> None:
    import ctranslate2

    encoder = from_ctranslate2(Path(whisper_dir)).eval()
    assert sum(p.numel() for p in encoder.parameters()) == 20_590_592  # 20.6 M (../shared/DESIGN.md §6)
    reference = ctranslate2.models.Whisper(whisper_dir, compute_type="float32", intra_threads=2)
    # 10 s of speech, unpadded: CTranslate2 slices its position encodings as we do.
    features = jfk_features[None, :, :1000].contiguous()
    expected = np.asarray(reference.encode(ctranslate2.StorageView.from_array(features.numpy()), to_cpu=True))
    with torch.no_grad():
        ours = encoder(features).hidden_states[0].numpy()
    assert ours.shape == expected.shape == (1, 500, 512)
    # Both run the same float16 weights in float32; only summation order differs
    # (outputs reach |24|; at 30 s the largest difference seen was 1.7e-3).
    np.testing.assert_allclose(ours, expected, atol=5e-3, rtol=0)
    assert np.abs(ours - expected).mean() < 1e-4


def test_log_mel_equals_faster_whispers_features() -> None:
    from faster_whisper.feature_extractor import FeatureExtractor

    samples = load_audio(str(SHARED_AUDIO / "jfk.flac")).samples[: 3 * 16_000 + 77]
    expected = FeatureExtractor(feature_size=80)(samples, padding=0)
    ours = log_mel(samples, mel_filters(80)).numpy()
    assert ours.shape == expected.shape == (80, 300)
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_transformers_checkpoint_loads_and_matches_transformers_on_30s(tmp_path: Path) -> None:
    torch.manual_seed(1)
    whisper = WhisperModel(WhisperConfig(**TINY)).eval()
    whisper.save_pretrained(tmp_path / "tiny-whisper")
    encoder = load_speech_encoder(str(tmp_path / "tiny-whisper")).eval()
    features = torch.randn(2, 80, MAX_FRAMES)
    with torch.no_grad():
        expected = whisper.get_encoder()(features).last_hidden_state
        ours = encoder(features).hidden_states[0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("short_frames", [401, 400])  # odd: conv2 reads one frame past the end
def test_a_padded_item_in_a_batch_equals_the_item_alone(short_frames: int) -> None:
    encoder = tiny_encoder()
    features = torch.randn(2, 80, 1000)
    features[0, :, short_frames:] = 0.0  # right padding, as the collate function makes it
    lengths = torch.tensor([short_frames, 1000])
    with torch.no_grad():
        batch = encoder(features, lengths, layers=(1, -1))
        alone = encoder(features[:1, :, :short_frames], layers=(1, -1))
        long_alone = encoder(features[1:], layers=(1, -1))
    positions = (short_frames + 1) // 2
    assert batch.mask[0].sum() == positions and batch.mask[1].all()
    for in_batch, by_itself, long_by_itself in zip(batch.hidden_states, alone.hidden_states, long_alone.hidden_states, strict=True):
        torch.testing.assert_close(in_batch[0, :positions], by_itself[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(in_batch[1], long_by_itself[0], atol=1e-5, rtol=1e-5)


def test_layers_are_numbered_from_the_input_and_from_the_end() -> None:
    encoder = tiny_encoder()
    features = torch.randn(1, 80, 200)
    with torch.no_grad():
        out = encoder(features, layers=(0, 1, 2, -1, -3))
    assert len(out.hidden_states) == 5
    torch.testing.assert_close(out.hidden_states[2], out.hidden_states[3])  # 2 of 2 is -1
    torch.testing.assert_close(out.hidden_states[0], out.hidden_states[4])  # -3 is the input
    with pytest.raises(ValueError, match="layers 0..2"):
        encoder.resolve_layer(3)
    with pytest.raises(ValueError, match="at most 3000 frames"):
        encoder(torch.randn(1, 80, MAX_FRAMES + 2))


def test_freezing_the_front_end_and_first_layers() -> None:
    encoder = tiny_encoder()
    encoder.freeze(conv_frontend=True, first_layers=1)
    frozen = {name for name, p in encoder.named_parameters() if not p.requires_grad}
    assert {"conv1.weight", "conv2.bias", "layers.0.fc1.weight", "embed_positions.weight"} <= frozen
    assert not any(name.startswith("layers.1.") for name in frozen)
    with pytest.raises(ValueError, match="cannot freeze 3"):
        encoder.freeze(first_layers=3)
