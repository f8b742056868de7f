"""`voxtox stream serve` and `voxtox stream send`: live voice scored while people speak
(models/stream_server.py, docs/streaming.md)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from voxtox.flows.cli_common import default_model, errors, user_errors
from voxtox.settings import load_settings

stream_app = typer.Typer(help="Score live voice channels over WebSockets.", no_args_is_help=True)


@stream_app.command("serve")
def serve(
    model: Annotated[str | None, typer.Option(help="run dir (followed: a newly promoted model is loaded), model dir "
                                                   "or exported .onnx/.pt [default: ./runs/current, else the "
                                                   "nightly's <runs_dir>/current]")] = None,
    host: Annotated[str | None, typer.Option(help="bind address [default: stream.host, 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="[default: stream.port, 8765]")] = None,
    hop_s: Annotated[float | None, typer.Option(help="score the last window every this many seconds of speech [default 5]")] = None,
    max_batch: Annotated[int | None, typer.Option(help="windows of all streams per pass [default: 1 on a CPU, 16 on a GPU]")] = None,
    max_wait_ms: Annotated[float | None, typer.Option(help="how long a window may wait for a batch [default 50]")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for scoring (torch / onnxruntime)")] = None,
    backend: Annotated[str | None, typer.Option(help="pytorch, or onnx-int8: score through the run's ONNX Runtime "
                                                     "int8 export, made once per model [default: pytorch]")] = None,
    device: Annotated[Literal["cpu", "cuda", "auto"] | None, typer.Option(
        help="cpu, cuda (refused without a usable GPU) or auto: cuda where available [default: auto]")] = None,
) -> None:
    """Serve the audio-only classifier to live streams: one WebSocket per channel or speaker,
    16-bit PCM in, JSON window events out. Needs VOXTOX_STREAM__TOKEN."""
    # Before torch loads its OpenMP runtime: threads that finish an operator sleep instead of
    # spinning for the next. On a shared CPU, spinning threads took 3-5x the CPU per window and
    # made one window 4x slower in wall time (docs/benchmarks.md, streaming).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from voxtox.models.stream import model_identity
    from voxtox.models.stream_server import StreamServer, listening_socket

    options = dict(host=host, port=port, hop_s=hop_s, max_batch=max_batch, max_wait_ms=max_wait_ms, threads=threads,
                   backend=backend, device=device)
    with user_errors():
        settings = load_settings(stream=options)
        spec = default_model(model)
        server = StreamServer(settings.stream, spec, settings.vad)
        model_identity(spec)  # a missing model is one line now, not a failed start-up later
    if settings.stream.threads:
        import torch

        torch.set_num_threads(settings.stream.threads)
    chosen = settings.stream
    errors.print(f"voxtox stream: model {spec}; ws://{chosen.host}:{chosen.port}/v1/stream (backend {chosen.backend} "
                 f"on {server.device}{' (auto)' if chosen.device == 'auto' else ''}, batches of up to {server.max_batch}, "
                 f"waiting at most {chosen.max_wait_ms:g} ms)", soft_wrap=True)
    with user_errors():
        try:
            sock = listening_socket(chosen.host, chosen.port, chosen.send_buffer_kb)
        except OSError as error:
            raise ValueError(f"cannot listen on {chosen.host}:{chosen.port}: {error.strerror or error}") from None
    config = uvicorn.Config(server.app(), log_level="warning", access_log=False,
                            ws_max_size=2 * server.max_frame_bytes + 4096)
    uvicorn.Server(config).run(sockets=[sock])


@stream_app.command("send")
def send(
    files: Annotated[list[Path], typer.Argument(help="audio files, each sent as its own stream, all at once")],
    url: Annotated[str, typer.Option(help="the server's stream endpoint")] = "ws://127.0.0.1:8765/v1/stream",
    speed: Annotated[float, typer.Option(help="1: real time; 4: four times faster; 0: as fast as it goes")] = 1.0,
    encoding: Annotated[str, typer.Option(help="pcm_s16le (16-bit PCM, 100 ms frames) or opus (20 ms Opus packets, "
                                               "about a tenth of the bytes)")] = "pcm_s16le",
    stream_id: Annotated[str | None, typer.Option(help="stream id (one file only) [default: the file name]")] = None,
) -> None:
    """Replay files to a `voxtox stream serve` server as live streams and print every event as one
    JSON object per line. Reads the token from VOXTOX_STREAM__TOKEN; exits 1 when the server
    refuses or closes a stream for a fault."""
    from voxtox.audio import RejectedInput, load_audio
    from voxtox.models.stream_client import replay

    with user_errors():
        token = load_settings().stream.token
        if token is None:
            raise ValueError("no token: set VOXTOX_STREAM__TOKEN to the server's token")
        if encoding not in ("pcm_s16le", "opus"):
            raise ValueError(f"--encoding {encoding!r}: use pcm_s16le or opus")
        if stream_id is not None and len(files) > 1:
            raise ValueError("--stream-id names one stream; give one file with it")
        streams = {}
        for index, path in enumerate(files):
            try:
                samples = load_audio(str(path)).samples
            except RejectedInput as rejected:
                raise ValueError(f"{path}: {rejected.reason} ({rejected.detail})") from None
            name = stream_id or (path.name if path.name not in streams else f"{path.name}#{index}")
            streams[name] = samples

    def print_event(event: dict) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    async def send_all() -> list:
        return await asyncio.gather(*(replay(url, token.get_secret_value(), samples, name, speed, print_event,
                                             encoding=encoding)
                                      for name, samples in streams.items()))

    results = asyncio.run(send_all())
    faults = [r for r in results if r.fault]
    for result in faults:
        errors.print(f"[red]error:[/red] stream {result.stream_id}: {result.fault}", soft_wrap=True)
    if faults:
        raise typer.Exit(1)
