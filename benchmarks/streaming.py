"""Streaming service capacity: N concurrent real-time streams against `voxtox stream serve`, N = 1,
2, 4, ... until it cannot keep up, with batching across streams and without it (one forward
pass per window as it falls due: `--max-batch 1`), in the same run: the servers of `--modes`
(MODES below: batched, unbatched, through ONNX Runtime int8, with torch's threads spinning as
before) run side by side and take turns at each N, so load from other processes falls on all
alike. `--passes` times forward passes of 1-8 windows in-process instead, with torch's threads
sleeping and spinning; `--contention` the same 8 windows batched and unbatched with one or two
threads and one or two workers; `--soak-minutes` holds one mode at one load in one-minute rounds.

Per level: latency from a window's end to its event (p50 / p95 / p99, measured by the clients:
from sending the frame that holds the window's last sample to receiving its event; a speech-end
window includes the VAD's 0.5 s merge gap it waits to be sure the turn ended), windows scored and
dropped, mean batch size, the server's CPU (percent of one core) and resident memory per stream
(peak during the level less the idle server's, over N). A level keeps up when its p95 is under
1 s and no window was dropped; a mode goes on doubling N until a level drops windows or its p95
passes --give-up-s (the server no longer keeps pace at all), so the throughput side of batching
shows even where a loaded machine misses the 1 s target.

Streams replay benchmarks/_audio.py's voice-chat-like lobbies (about 45 % speech, turns 2.5-8 s
apart) at real-time pace in 100 ms frames, each from its own offset, starting spread over one hop
so their hops do not line up. The model is the default `voxtox train` encoder (whisper-base from
the offline store) with a freshly initialised head: cost does not depend on the trained weights.
The server runs in its own process with `--threads` threads; the clients in this one.

    python benchmarks/streaming.py                         # 40 s per level, batched and unbatched
    python benchmarks/streaming.py --seconds 20 --max-streams 8 --modes batched   # quick
    python benchmarks/streaming.py --modes batched,unbatched,unbatched-int8 --encoder whisper-tiny.en
    python benchmarks/streaming.py --passes --encoder whisper-tiny.en
    python benchmarks/streaming.py --contention 4 --encoder whisper-tiny.en   # batched vs unbatched, threads, workers
    python benchmarks/streaming.py --max-streams 0 --modes unbatched --soak-minutes 10 --soak-streams 16  # soak
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _audio import build_audio  # noqa: E402

from voxtox.audio import SAMPLE_RATE, load_audio  # noqa: E402
from voxtox.labels import CLASSES  # noqa: E402
from voxtox.models.speech_classifier import SpeechToxicityClassifier  # noqa: E402
from voxtox.models.stream_client import replay  # noqa: E402
from voxtox.models.trainer import save_model  # noqa: E402
from voxtox.models.whisper_encoder import load_speech_encoder  # noqa: E402
from voxtox.settings import Settings  # noqa: E402
from voxtox.storage.model_store import resolve_model  # noqa: E402

HERE = Path(__file__).resolve().parent
TOKEN = "benchmark"
TEXT_DIM = 512
# name: (max_batch, max_wait_ms, OMP_WAIT_POLICY, backend). `voxtox stream serve` sets PASSIVE
# unless told otherwise; "" gives libgomp's own default (threads spin between operators; libgomp
# says once that the value is invalid), which is what the server ran with before.
MODES = {"batched": (16, 50.0, "PASSIVE", "pytorch"), "unbatched": (1, 0.0, "PASSIVE", "pytorch"),
         "batched-4": (4, 20.0, "PASSIVE", "pytorch"),
         "batched-spin": (16, 50.0, "", "pytorch"), "unbatched-spin": (1, 0.0, "", "pytorch"),
         "batched-int8": (16, 50.0, "PASSIVE", "onnx-int8"), "unbatched-int8": (1, 0.0, "PASSIVE", "onnx-int8"),
         "batched-t1": (16, 50.0, "PASSIVE", "pytorch"), "unbatched-t1": (1, 0.0, "PASSIVE", "pytorch")}
#: Modes whose server scores with this many threads whatever --threads says.
MODE_THREADS = {"batched-t1": 1, "unbatched-t1": 1}

@dataclass
class Level:
    mode: str
    streams: int
    windows: int
    dropped: int
    p50: float
    p95: float
    p99: float
    mean_batch: float
    cpu_percent: float
    mb_per_stream: float
    load: float  # the machine's 1-minute load average at the level's end
    pass_s: float  # mean wall time of one forward pass in the server

    @property
    def keeps_up(self) -> bool:
        return self.p95 < 1.0 and self.dropped == 0


class Server:
    """`voxtox stream serve` in its own process."""

    def __init__(self, model: Path, max_batch: int, max_wait_ms: float, wait_policy: str, backend: str,
                 threads: int, hop_s: float) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = os.environ | {"VOXTOX_STREAM__TOKEN": TOKEN, "VOXTOX_STREAM__MAX_BATCH": str(max_batch),
                            "VOXTOX_STREAM__MAX_WAIT_MS": str(max_wait_ms), "VOXTOX_STREAM__THREADS": str(threads),
                            "VOXTOX_STREAM__HOP_S": str(hop_s), "VOXTOX_STREAM__MAX_STREAMS": "1024",
                            "OMP_WAIT_POLICY": wait_policy, "VOXTOX_STREAM__BACKEND": backend}
        self.process = subprocess.Popen([sys.executable, "-m", "voxtox.flows.cli", "stream", "serve", "--model",
                                         str(model), "--port", str(self.port)], env=env)
        self.url = f"ws://127.0.0.1:{self.port}/v1/stream"
        self.http = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            raise RuntimeError("server not ready in 300 s")
        self.ps = psutil.Process(self.process.pid)

    def pass_seconds(self) -> tuple[float, float]:
        """The server's forward passes so far: (count, total seconds), from /metrics."""
        values = {}
        for line in httpx.get(f"{self.http}/metrics", timeout=10).text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("voxtox_stream_batch_seconds_count", "voxtox_stream_batch_seconds_sum"):
                values[name] = float(value)
        return values["voxtox_stream_batch_seconds_count"], values["voxtox_stream_batch_seconds_sum"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


class PeakMemory:
    """The server's peak resident memory, sampled every 0.2 s while the level runs."""

    def __init__(self, process: psutil.Process) -> None:
        self.process, self.peak, self._stop = process, process.memory_info().rss, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _streams(url: str, clips: list[np.ndarray], seconds: float, hop_s: float, n: int, seed: int) -> list:
    rng = random.Random(seed)
    length = int(seconds * SAMPLE_RATE)

    async def one(index: int) -> object:
        clip = clips[index % len(clips)]
        offset = rng.randrange(0, max(1, len(clip) - length))
        await asyncio.sleep(rng.uniform(0, hop_s))
        return await replay(url, TOKEN, clip[offset : offset + length], f"bench-{index}", speed=1.0)

    return await asyncio.gather(*(one(i) for i in range(n)))


def run_level(server: Server, mode: str, clips: list[np.ndarray], seconds: float, hop_s: float, n: int) -> Level:
    idle_rss = server.ps.memory_info().rss
    passes_before = server.pass_seconds()
    cpu_before = sum(server.ps.cpu_times()[:2])
    began = time.monotonic()
    with PeakMemory(server.ps) as memory:
        results = asyncio.run(_streams(server.url, clips, seconds, hop_s, n, seed=n))
    wall = time.monotonic() - began
    cpu = sum(server.ps.cpu_times()[:2]) - cpu_before
    passes = np.subtract(server.pass_seconds(), passes_before)
    faults = [r.fault for r in results if r.fault]
    if faults:
        raise RuntimeError(f"{len(faults)} streams failed: {faults[0]}")
    latencies = np.array([x for r in results for x in r.latencies_s]) if results else np.zeros(0)
    windows = [e for r in results for e in r.events if e["type"] == "window"]
    dropped = sum(r.summary["dropped_windows"] for r in results if r.summary)
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if latencies.size else (np.nan,) * 3
    return Level(mode, n, len(windows), dropped, float(p50), float(p95), float(p99),
                 float(np.mean([w["batch_size"] for w in windows])) if windows else 0.0,
                 100 * cpu / wall, (memory.peak - idle_rss) / 2**20 / n, os.getloadavg()[0],
                 float(passes[1] / passes[0]) if passes[0] else float("nan"))


def print_table(levels: list[Level]) -> None:
    print(f"\n{'mode':<10} {'N':>4} {'windows':>7} {'dropped':>7} {'p50 s':>6} {'p95 s':>6} {'p99 s':>6} "
          f"{'batch':>5} {'pass s':>6} {'CPU %':>6} {'MB/str':>6} {'load':>5}  keeps up")
    for x in levels:
        print(f"{x.mode:<10} {x.streams:>4} {x.windows:>7} {x.dropped:>7} {x.p50:>6.2f} {x.p95:>6.2f} {x.p99:>6.2f} "
              f"{x.mean_batch:>5.1f} {x.pass_s:>6.2f} {x.cpu_percent:>6.0f} {x.mb_per_stream:>6.1f} {x.load:>5.1f}  {'yes' if x.keeps_up else 'no'}")
    best = {}
    for x in levels:
        if x.keeps_up:
            best[x.mode] = max(best.get(x.mode, 0), x.streams)
    print("\nmost streams at real time with p95 < 1 s: " + ", ".join(f"{m} {n}" for m, n in best.items()))
    for mode in best:
        twin = "unbatched" + mode[len("batched"):] if mode.startswith("batched") else None  # batched-t1: unbatched-t1
        for base in dict.fromkeys(b for b in (twin, "unbatched") if b and b != mode and best.get(b)):
            print(f"{mode} / {base}: {best[mode] / best[base]:.2f}x")


def save_benchmark_model(directory: Path, encoder: str) -> Path:
    torch.manual_seed(0)
    model = SpeechToxicityClassifier(load_speech_encoder(resolve_model(encoder, Settings().model_cache_dir)),
                                     len(CLASSES), TEXT_DIM).eval()
    save_model(model, directory / "best")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="audio each stream sends per level")
    parser.add_argument("--max-streams", type=int, default=64)
    parser.add_argument("--modes", default="batched,unbatched")
    parser.add_argument("--encoder", default="whisper-base")
    parser.add_argument("--threads", type=int, default=2, help="the server's scoring threads")
    parser.add_argument("--hop-s", type=float, default=5.0)
    parser.add_argument("--give-up-s", type=float, default=5.0, help="stop a mode once p95 passes this")
    parser.add_argument("--soak-minutes", type=float, default=0.0, help="then hold --soak-streams this long")
    parser.add_argument("--soak-streams", type=int, default=4)
    parser.add_argument("--soak-mode", default="unbatched", help="which of --modes to soak")
    parser.add_argument("--passes", action="store_true", help="only time forward passes of 1-8 windows in-process, "
                        "with torch's threads sleeping (PASSIVE) and spinning (libgomp's default), and stop")
    parser.add_argument("--passes-policy", help=argparse.SUPPRESS)  # the child process that times one policy
    parser.add_argument("--contention", type=int, default=0, metavar="ROUNDS",
                        help="only time 8 windows scored batched and unbatched, with 1 or 2 torch threads and 1 or 2 "
                        "workers at once, over ROUNDS interleaved rounds, and stop")
    parser.add_argument("--contention-lengths", default="15", help="window lengths, s, cycled over the 8 (e.g. 15,3)")
    args = parser.parse_args()
    if args.passes_policy is not None:
        return time_passes(args.encoder, args.threads, args.passes_policy)
    if args.contention:
        # In a child: OpenMP read OMP_WAIT_POLICY when torch was imported here, and the server's is PASSIVE.
        if os.environ.get("_VOXTOX_CONTENTION_CHILD") is None:
            env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "_VOXTOX_CONTENTION_CHILD": "1"}
            subprocess.run([sys.executable, *sys.argv], env=env, check=True)
            return None
        return time_contention(args.encoder, args.contention,
                               tuple(float(x) for x in args.contention_lengths.split(",")))
    if args.passes:
        for policy in ("PASSIVE", ""):
            subprocess.run([sys.executable, __file__, "--encoder", args.encoder, "--threads", str(args.threads),
                            "--passes-policy", policy], env=os.environ | {"OMP_WAIT_POLICY": policy}, check=True)
        return

    audio = build_audio(HERE / ".cache" / "stream-audio", minutes=8, files=4)
    clips = [load_audio(str(p)).samples for p in audio.paths]
    print(f"audio: {len(clips)} lobbies, {audio.duration_s / 60:.1f} min, {100 * audio.speech_s / audio.duration_s:.0f}% "
          f"speech; encoder {args.encoder}; server threads {args.threads}; hop {args.hop_s:g} s; "
          f"{args.seconds:g} s per level; {psutil.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    levels: list[Level] = []
    with tempfile.TemporaryDirectory(prefix="voxtox-stream-bench-") as scratch:
        model = save_benchmark_model(Path(scratch) / "run", args.encoder)
        servers = {mode: Server(model, *MODES[mode], MODE_THREADS.get(mode, args.threads), args.hop_s)
                   for mode in args.modes.split(",")}
        try:
            for mode, server in servers.items():
                run_level(server, mode, clips, 10, args.hop_s, 1)  # warm up
            run_levels(servers, clips, args, levels)
            if args.soak_minutes > 0:
                soak(servers[args.soak_mode], clips, args)
        finally:
            for server in servers.values():
                server.stop()
    print_table(levels)


def time_passes(encoder: str, threads: int, policy: str) -> None:
    """Wall and CPU seconds per 15 s window in forward passes of 1, 2, 4 and 8 windows."""
    from voxtox.models.inference import WindowScorer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SpeechToxicityClassifier(load_speech_encoder(resolve_model(encoder, Settings().model_cache_dir)),
                                     len(CLASSES), TEXT_DIM).eval()
    scorer, rng = WindowScorer(model, batch_size=64), np.random.default_rng(0)
    scorer.score_many([(0.1 * rng.standard_normal(15 * SAMPLE_RATE)).astype(np.float32)])  # warm up
    for size in (1, 2, 4, 8):
        clips = [(0.1 * rng.standard_normal(15 * SAMPLE_RATE)).astype(np.float32) for _ in range(size)]
        wall, cpu = time.monotonic(), time.process_time()
        for _ in range(3):
            scorer.score_many(clips)
        print(f"{encoder} threads {threads} OMP_WAIT_POLICY={policy or '(unset: spin)'} batch {size}: per window "
              f"{(time.monotonic() - wall) / 3 / size:.3f} s wall, {(time.process_time() - cpu) / 3 / size:.3f} s CPU; "
              f"load {os.getloadavg()[0]:.1f}", flush=True)


# --contention: where does batching lose on this CPU? name: (windows per pass, torch threads per
# pass, concurrent workers). The same 8 windows each time; "x2" runs two passes at once in two
# Python threads (inter-op parallelism: torch releases the GIL inside operators).
CONTENTION = {"unbatched t2": (1, 2, 1), "batched-8 t2": (8, 2, 1), "unbatched t1": (1, 1, 1),
              "batched-8 t1": (8, 1, 1), "unbatched t1 x2": (1, 1, 2), "batched-4 t1 x2": (4, 1, 2)}


def _contention_round(scorer: object, clips: list[np.ndarray], batch: int, threads: int, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds (all threads) to score `clips` in passes of `batch` by `workers` threads."""
    passes = [clips[i : i + batch] for i in range(0, len(clips), batch)]
    shares = [passes[w::workers] for w in range(workers)]

    def work(share: list[list[np.ndarray]]) -> None:
        torch.set_num_threads(threads)  # OpenMP's thread count is per calling thread
        for group in share:
            scorer.score_many(group)  # type: ignore[attr-defined]

    torch.set_num_threads(threads)
    wall, cpu = time.monotonic(), time.process_time()
    if workers == 1:
        work(shares[0])
    else:
        pool = [threading.Thread(target=work, args=(share,)) for share in shares]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    return time.monotonic() - wall, time.process_time() - cpu


def time_contention(encoder: str, rounds: int, lengths_s: tuple[float, ...]) -> None:
    """Per window, the median over `rounds` interleaved rounds of each CONTENTION setting (so
    the machine's load falls on all alike), and each one's ratio to the unbatched server's."""
    from voxtox.models.inference import WindowScorer

    torch.manual_seed(0)
    model = SpeechToxicityClassifier(load_speech_encoder(resolve_model(encoder, Settings().model_cache_dir)),
                                     len(CLASSES), TEXT_DIM).eval()
    scorer, rng = WindowScorer(model, batch_size=64), np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(int(lengths_s[i % len(lengths_s)] * SAMPLE_RATE))).astype(np.float32)
             for i in range(8)]
    scorer.score_many(clips[:2])  # warm up
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in CONTENTION}
    for _ in range(rounds):
        for name, setting in CONTENTION.items():
            times[name].append(_contention_round(scorer, clips, *setting))
    base_wall, base_cpu = (float(np.median([t[k] for t in times["unbatched t2"]])) for k in (0, 1))
    print(f"\n{encoder}, 8 windows of {'/'.join(f'{x:g}' for x in lengths_s)} s, {rounds} rounds, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: spin)')}, load {os.getloadavg()[0]:.1f}")
    print(f"{'setting':<18} {'wall s/window':>13} {'CPU s/window':>12} {'throughput vs unbatched t2':>27}")
    for name, runs in times.items():
        wall, cpu = (float(np.median([t[k] for t in runs])) for k in (0, 1))
        print(f"{name:<18} {wall / 8:>13.3f} {cpu / 8:>12.3f} {base_wall / wall:>26.2f}x", flush=True)


def run_levels(servers: dict[str, Server], clips: list[np.ndarray], args: argparse.Namespace, levels: list[Level]) -> None:
    """N = 1, 2, 4, ...; at each N every mode in turn (so load from elsewhere falls on both alike),
    a mode leaving once it drops windows or its p95 passes --give-up-s."""
    going = dict(servers)
    n = 1
    while going and n <= args.max_streams:
        for mode, server in list(going.items()):
            level = run_level(server, mode, clips, args.seconds, args.hop_s, n)
            levels.append(level)
            print_table([level])
            if level.dropped or not level.p95 < args.give_up_s:
                del going[mode]
        n *= 2


def soak(server: Server, clips: list[np.ndarray], args: argparse.Namespace) -> None:
    """--soak-streams streams for --soak-minutes, in one-minute rounds: memory and p95 per round."""
    print(f"\nsoak: {args.soak_streams} streams for {args.soak_minutes:g} min")
    for minute in range(int(args.soak_minutes)):
        level = run_level(server, "soak", clips, 60, args.hop_s, args.soak_streams)
        print(f"minute {minute + 1}: rss {server.ps.memory_info().rss / 2**20:.0f} MB, windows {level.windows}, "
              f"p50 {level.p50:.2f} s, p95 {level.p95:.2f} s, p99 {level.p99:.2f} s, dropped {level.dropped}, "
              f"CPU {level.cpu_percent:.0f}%, load {level.load:.1f}", flush=True)


if __name__ == "__main__":
    main()
