"""A client of the streaming server (models/stream_server.py): replays audio as a live stream at
real-time pace (or faster), collects the server's events and how long each window's event took to
come back. `voxtox stream send` and benchmarks/streaming.py use it."""

from __future__ import annotations

import asyncio
import bisect
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from voxtox.audio import SAMPLE_RATE

#: Audio per frame the client sends (WebRTC and Discord send 20 ms; 100 ms keeps Python's
#: per-message cost small without adding noticeable delay to a 15 s window).
FRAME_S = 0.1


@dataclass
class StreamResult:
    stream_id: str
    events: list[dict] = field(default_factory=list)
    fault: str | None = None  # why the server refused or closed the stream; None: it ended well
    latencies_s: list[float] = field(default_factory=list)  # window end sent -> its event received

    @property
    def summary(self) -> dict | None:
        return next((e for e in self.events if e.get("type") == "summary"), None)


class SendClock:
    """When the frame holding each stream sample was sent (wall time, the loop's clock)."""

    def __init__(self) -> None:
        self.sample_ends: list[int] = []
        self.sent_at: list[float] = []

    def record(self, sample_end: int, at: float) -> None:
        self.sample_ends.append(sample_end)
        self.sent_at.append(at)

    def sent(self, sample: int) -> float | None:
        index = bisect.bisect_left(self.sample_ends, sample)
        return self.sent_at[index] if index < len(self.sent_at) else None


def to_pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


async def replay(
    url: str,
    token: str,
    samples: np.ndarray,
    stream_id: str,
    speed: float = 1.0,
    on_event: Callable[[dict], None] | None = None,
    frame_s: float = FRAME_S,
    encoding: str = "pcm_s16le",
) -> StreamResult:
    """Stream 16 kHz mono `samples` to the server, a frame as soon as its audio has been spoken
    at `speed`× real time (0: as fast as the connection takes them), then end the stream.
    `encoding` "opus": 20 ms Opus packets (models/opus.py) instead of `frame_s` of 16-bit PCM."""
    result = StreamResult(stream_id)
    clock = SendClock()
    try:
        async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=60,
                           max_size=2**20) as websocket:
            await websocket.send(json.dumps({"type": "start", "stream_id": stream_id, "sample_rate": SAMPLE_RATE,
                                             "encoding": encoding}))
            receiver = asyncio.create_task(_receive(websocket, result, clock, on_event))
            try:
                await _send_audio(websocket, _frames(samples, encoding, frame_s), speed, clock)
                await websocket.send(json.dumps({"type": "end"}))
            except ConnectionClosed:
                pass  # the server closed the stream early: the receiver has its reason
            await receiver
            if websocket.close_code != 1000:
                result.fault = result.fault or f"closed {websocket.close_code}: {websocket.close_reason or 'no reason'}"
    except InvalidStatus as error:
        result.fault = f"server refused the connection: HTTP {error.response.status_code}"
    except (InvalidHandshake, InvalidURI, OSError, TimeoutError) as error:
        result.fault = f"cannot connect to {url}: {error}"
    return result


def _frames(samples: np.ndarray, encoding: str, frame_s: float) -> list[tuple[bytes, int]]:
    """The messages to send, each with the stream sample its audio reaches."""
    if encoding == "opus":
        from voxtox.models.opus import encode_opus

        return encode_opus(samples)
    pcm, size = to_pcm16(samples), 2 * int(frame_s * SAMPLE_RATE)
    return [(pcm[offset : offset + size], min(offset + size, len(pcm)) // 2) for offset in range(0, len(pcm), size)]


async def _send_audio(websocket, frames: list[tuple[bytes, int]], speed: float, clock: SendClock) -> None:  # noqa: ANN001
    loop = asyncio.get_running_loop()
    began = loop.time()
    for payload, sample_end in frames:
        if speed > 0:
            delay = began + sample_end / SAMPLE_RATE / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await websocket.send(payload)
        clock.record(sample_end, loop.time())


async def _receive(websocket, result: StreamResult, clock: SendClock,  # noqa: ANN001
                   on_event: Callable[[dict], None] | None) -> None:
    loop = asyncio.get_running_loop()
    try:
        async for message in websocket:
            event = json.loads(message)
            result.events.append(event)
            if event.get("type") == "window":
                sent = clock.sent(round(event["end_s"] * SAMPLE_RATE))
                if sent is not None:
                    result.latencies_s.append(loop.time() - sent)
            elif event.get("type") == "error":
                result.fault = event.get("message")
            if on_event:
                on_event(event)
    except ConnectionClosed:
        pass
