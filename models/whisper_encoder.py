"""Whisper's speech encoder for training: any input length up to 30 s, masked batches, two sources.

transformers' `WhisperEncoder` insists on 3000 log-mel frames (30 s); a 15 s training clip padded
to 30 s costs twice the work, and the padding changes every frame's output because attention is
bidirectional. `SpeechEncoder` keeps transformers' modules (so checkpoints load unchanged) and
replaces the forward pass: position embeddings are sliced to the input length, and a key mask
makes a padded item in a bucketed batch see exactly what it would see alone.

Weights come from a transformers checkpoint (hub name or local dir) or from a faster-whisper
CTranslate2 directory, whose `model.bin` is parsed directly (../shared/DESIGN.md §6), so the offline
whisper-base from the model store trains without a hub.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor, nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from voxtox.audio import SAMPLE_RATE

HOP_LENGTH = 160
N_FFT = 400
#: Whisper's maximum input: 30 s of audio, 3000 mel frames, 1500 encoder positions.
MAX_FRAMES = 3000
CT2_BINARY_VERSION = 6
#: CTranslate2's DataType ids (the order of its C++ enum).
CT2_DTYPES: dict[int, torch.dtype] = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}


@dataclass
class EncoderOutput:
    """Hidden states of the requested layers, each (batch, positions, d_model), and the
    (batch, positions) boolean mask of real (not padded) positions they share."""

    hidden_states: list[Tensor]
    mask: Tensor


def positions_for_frames(frames: Tensor) -> Tensor:
    """Encoder positions a clip of `frames` mel frames occupies (conv2 has stride 2)."""
    return torch.div(frames + 1, 2, rounding_mode="floor")


def length_mask(lengths: Tensor, size: int) -> Tensor:
    """(batch, size) boolean mask, True where index < length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class SpeechEncoder(WhisperEncoder):
    """transformers' WhisperEncoder with a variable-length, masked forward pass.

    Layer numbering for `forward(layers=...)`: 0 is the input to the first block (convolutions
    plus positions), k in 1..L the output of block k, where block L's output goes through the
    final layer norm (it is the encoder's output, what the classifier sees); negative numbers
    count from the end, -1 being the encoder's output.
    """

    def resolve_layer(self, layer: int) -> int:
        count = len(self.layers)
        resolved = layer + count + 1 if layer < 0 else layer
        if not 0 <= resolved <= count:
            raise ValueError(f"layer {layer} does not exist: this encoder has layers 0..{count}")
        return resolved

    def freeze(self, conv_frontend: bool = False, first_layers: int = 0) -> None:
        """Stop training the convolutional front end and/or the first N transformer blocks."""
        if first_layers > len(self.layers):
            raise ValueError(f"cannot freeze {first_layers} of {len(self.layers)} layers")
        frozen: list[nn.Module] = [self.conv1, self.conv2] if conv_frontend else []
        frozen += list(self.layers[:first_layers])
        for module in frozen:
            module.requires_grad_(False)

    def forward(  # type: ignore[override]
        self,
        input_features: Tensor,
        frame_lengths: Tensor | None = None,
        layers: Sequence[int] = (-1,),
    ) -> EncoderOutput:
        """Encode (batch, n_mels, frames) log-mel features, frames <= 3000, right-padded.

        `frame_lengths` (batch,) gives each item's real frame count (None: all full length).
        """
        batch, _, frames = input_features.shape
        if frames > MAX_FRAMES:
            raise ValueError(f"at most {MAX_FRAMES} frames (30 s) per input, got {frames}")
        if frame_lengths is None:
            frame_lengths = torch.full((batch,), frames, device=input_features.device)
        wanted = sorted({self.resolve_layer(layer) for layer in layers})
        frame_mask = length_mask(frame_lengths, frames)[:, None, :]
        # conv2 reads conv1's output one frame past an odd-length item's end: zero it there, as
        # conv2's own zero padding does when the item is encoded alone.
        hidden = nn.functional.gelu(self.conv1(input_features)) * frame_mask
        hidden = nn.functional.gelu(self.conv2(hidden)).permute(0, 2, 1)
        positions = hidden.shape[1]
        mask = length_mask(positions_for_frames(frame_lengths), positions)
        hidden = hidden + self.embed_positions.weight[:positions]
        hidden = nn.functional.dropout(hidden, p=self.dropout, training=self.training)
        attention_mask = self._attention_bias(mask, hidden.dtype)
        outputs = {0: hidden}
        for index, layer in enumerate(self.layers[: wanted[-1]], start=1):
            hidden = layer(hidden, attention_mask)
            outputs[index] = self.layer_norm(hidden) if index == len(self.layers) else hidden
        return EncoderOutput([outputs[self.resolve_layer(layer)] for layer in layers], mask)

    @staticmethod
    def _attention_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
        """(batch, 1, 1, positions) additive bias: padded keys get the dtype's most negative value."""
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return bias.masked_fill(~mask, torch.finfo(dtype).min)[:, None, None, :]


def mel_filters(n_mels: int) -> Tensor:
    """Whisper's Slaney-scale mel filter bank, (n_mels, N_FFT // 2 + 1)."""
    from faster_whisper.feature_extractor import FeatureExtractor

    return torch.from_numpy(FeatureExtractor.get_mel_filters(SAMPLE_RATE, N_FFT, n_mels).astype(np.float32))


def log_mel(samples: np.ndarray | Tensor, filters: Tensor) -> Tensor:
    """Whisper's normalised log-mel features of 16 kHz mono audio, (n_mels, len // 160) frames.

    The same computation as whisper's `log_mel_spectrogram` and faster-whisper's FeatureExtractor
    (with no extra padding), so features of a clip do not depend on what it is batched with.
    """
    audio = torch.as_tensor(samples, dtype=torch.float32)
    window = torch.hann_window(N_FFT)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    log_spec = torch.clamp(filters @ power, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


# --- loading ---------------------------------------------------------------------------------


def load_speech_encoder(name_or_dir: str) -> SpeechEncoder:
    """Load from a local directory (CTranslate2 if it holds `model.bin`, else transformers) or,
    where a hub is reachable, a hub repository of either kind."""
    directory = Path(name_or_dir).expanduser()
    if not directory.is_dir():
        from huggingface_hub import snapshot_download

        directory = Path(
            snapshot_download(name_or_dir, allow_patterns=["config.json", "model.bin", "*.safetensors"])
        )
    if (directory / "model.bin").is_file():
        return from_ctranslate2(directory)
    return from_transformers(str(directory))


def from_transformers(name_or_dir: str) -> SpeechEncoder:
    """The encoder half of a transformers Whisper checkpoint."""
    from transformers import WhisperModel

    whisper = WhisperModel.from_pretrained(name_or_dir)
    encoder = SpeechEncoder(whisper.config)
    encoder.load_state_dict(whisper.get_encoder().state_dict())
    return encoder


def from_ctranslate2(directory: Path) -> SpeechEncoder:
    """The encoder of a faster-whisper CTranslate2 model, in float32."""
    variables = read_ct2_variables(directory / "model.bin", prefix="encoder/")
    config = ct2_encoder_config(variables)
    encoder = SpeechEncoder(config)
    encoder.load_state_dict(ct2_encoder_state_dict(variables, config.encoder_layers))
    return encoder


def _read_string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<H", handle.read(2))
    return handle.read(length)[:-1].decode()  # stored with its NUL terminator


def read_ct2_variables(path: Path, prefix: str = "") -> dict[str, Tensor]:
    """Variables of a CTranslate2 `model.bin` (binary version 6) whose names start with `prefix`.

    Layout: version, spec name, spec revision, variable count, then per variable its name, rank,
    dims (uint32 each), dtype id (uint8), byte count (uint32) and raw little-endian bytes.
    """
    variables: dict[str, Tensor] = {}
    with path.open("rb") as handle:
        (version,) = struct.unpack("<I", handle.read(4))
        if version != CT2_BINARY_VERSION:
            raise ValueError(f"{path}: CTranslate2 binary version {version}, expected {CT2_BINARY_VERSION}")
        _read_string(handle)  # spec name
        _, count = struct.unpack("<II", handle.read(8))
        for _ in range(count):
            name = _read_string(handle)
            (rank,) = struct.unpack("<B", handle.read(1))
            dims = struct.unpack(f"<{rank}I", handle.read(4 * rank))
            dtype_id, size = struct.unpack("<BI", handle.read(5))
            if not name.startswith(prefix):
                handle.seek(size, 1)
                continue
            raw = bytearray(handle.read(size))
            variables[name] = torch.frombuffer(raw, dtype=CT2_DTYPES[dtype_id]).reshape(dims)
    return variables


def ct2_encoder_config(variables: dict[str, Tensor]) -> WhisperConfig:
    """A WhisperConfig whose encoder matches the CTranslate2 weights (sizes read off shapes)."""
    if any(name.endswith("weight_scale") for name in variables):
        raise ValueError("quantized (int8) CTranslate2 weights cannot be trained; convert with float16 or float32")
    d_model, n_mels, _ = variables["encoder/conv1/weight"].shape
    n_layers = len({m.group(0) for name in variables if (m := re.match(r"encoder/layer_\d+/", name))})
    return WhisperConfig(
        num_mel_bins=int(n_mels),
        d_model=int(d_model),
        encoder_layers=n_layers,
        encoder_attention_heads=int(variables["encoder/num_heads"].item()),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
    )


def ct2_encoder_state_dict(variables: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """Map CTranslate2 encoder variable names onto transformers' WhisperEncoder, in float32."""
    v = {name: value.float() for name, value in variables.items()}
    state = {
        "conv1.weight": v["encoder/conv1/weight"],
        "conv1.bias": v["encoder/conv1/bias"],
        "conv2.weight": v["encoder/conv2/weight"],
        "conv2.bias": v["encoder/conv2/bias"],
        "embed_positions.weight": v["encoder/position_encodings/encodings"],
        "layer_norm.weight": v["encoder/layer_norm/gamma"],
        "layer_norm.bias": v["encoder/layer_norm/beta"],
    }
    for i in range(n_layers):
        ct2, hf = f"encoder/layer_{i}", f"layers.{i}"
        q, k, value = v[f"{ct2}/self_attention/linear_0/weight"].chunk(3)
        q_bias, _, v_bias = v[f"{ct2}/self_attention/linear_0/bias"].chunk(3)  # k has no bias
        state |= {
            f"{hf}.self_attn.q_proj.weight": q,
            f"{hf}.self_attn.q_proj.bias": q_bias,
            f"{hf}.self_attn.k_proj.weight": k,
            f"{hf}.self_attn.v_proj.weight": value,
            f"{hf}.self_attn.v_proj.bias": v_bias,
            f"{hf}.self_attn.out_proj.weight": v[f"{ct2}/self_attention/linear_1/weight"],
            f"{hf}.self_attn.out_proj.bias": v[f"{ct2}/self_attention/linear_1/bias"],
            f"{hf}.self_attn_layer_norm.weight": v[f"{ct2}/self_attention/layer_norm/gamma"],
            f"{hf}.self_attn_layer_norm.bias": v[f"{ct2}/self_attention/layer_norm/beta"],
            f"{hf}.fc1.weight": v[f"{ct2}/ffn/linear_0/weight"],
            f"{hf}.fc1.bias": v[f"{ct2}/ffn/linear_0/bias"],
            f"{hf}.fc2.weight": v[f"{ct2}/ffn/linear_1/weight"],
            f"{hf}.fc2.bias": v[f"{ct2}/ffn/linear_1/bias"],
            f"{hf}.final_layer_norm.weight": v[f"{ct2}/ffn/layer_norm/gamma"],
            f"{hf}.final_layer_norm.bias": v[f"{ct2}/ffn/layer_norm/beta"],
        }
    return state


def encoder_config_json(encoder: SpeechEncoder) -> str:
    """The encoder's WhisperConfig as JSON, stored beside trained weights to rebuild the model."""
    return json.dumps(encoder.config.to_dict(), sort_keys=True)


def encoder_from_config_json(text: str) -> SpeechEncoder:
    return SpeechEncoder(WhisperConfig.from_dict(json.loads(text)))
