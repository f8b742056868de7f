"""Opus frames for the streaming service (docs/streaming.md): what voice chat sends (WebRTC,
Discord), a tenth of 16-bit PCM's bytes. The client encodes with libopus through PyAV, one packet
per WebSocket message; the server decodes each packet as it arrives to 16 kHz mono 16-bit PCM.
Prefect-free."""

from __future__ import annotations

import av
import av.error
import numpy as np

from voxtox.audio import SAMPLE_RATE

#: Audio per packet the client encodes: 20 ms, as WebRTC and Discord send.
PACKET_S = 0.02
#: Input rates an Opus encoder takes; a stream's `sample_rate` names the rate it was encoded at.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


class OpusDecoder:
    """One stream's Opus packets, in order, to 16 kHz mono int16 samples (libopus decodes at
    48 kHz; the resampler brings it to 16 kHz and mixes stereo packets down)."""

    def __init__(self) -> None:
        self._codec = av.CodecContext.create("libopus", "r")
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self.packets = 0

    def decode(self, packet: bytes) -> np.ndarray:
        """The samples of one packet; ValueError when it is not an Opus packet."""
        self.packets += 1
        if not packet:
            raise ValueError(f"Opus packet {self.packets} is empty")
        try:
            frames = self._codec.decode(av.Packet(packet))
            out = [resampled.to_ndarray().reshape(-1) for frame in frames
                   for resampled in self._resampler.resample(frame)]
        except av.error.FFmpegError as error:
            raise ValueError(f"Opus packet {self.packets} ({len(packet)} bytes) cannot be decoded: {error}") from None
        return np.concatenate(out).astype("<i2", copy=False) if out else np.zeros(0, dtype="<i2")


def encode_opus(samples: np.ndarray, packet_s: float = PACKET_S, bitrate: int = 32_000) -> list[tuple[bytes, int]]:
    """16 kHz mono float `samples` as Opus packets of `packet_s`, each with the sample its audio
    reaches (for pacing a replay and timing its windows)."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate, codec.layout, codec.format, codec.bit_rate = SAMPLE_RATE, "mono", "s16", bitrate
    codec.options = {"frame_duration": str(int(packet_s * 1000))}
    codec.open()
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    size = codec.frame_size or int(packet_s * SAMPLE_RATE)
    packets: list[tuple[bytes, int]] = []
    for start in range(0, len(pcm), size):
        chunk = pcm[start : start + size]
        if len(chunk) < size:  # the encoder takes whole frames: pad the last with silence
            chunk = np.concatenate([chunk, np.zeros(size - len(chunk), dtype="<i2")])
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, start
        packets += [(bytes(p), min(start + size, len(pcm))) for p in codec.encode(frame)]
    packets += [(bytes(p), len(pcm)) for p in codec.encode(None)]
    return packets
