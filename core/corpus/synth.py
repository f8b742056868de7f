"""`voxtox synth`: a multilingual synthetic voice-chat corpus whose labels and timings are known.

Sessions of 20 s to 3 min in one language each: a few speakers (espeak-ng voice variants, each
with its own pitch, rate and loudness) take turns with pauses of 0.3-8 s and now and then talk
over each other. Each session may get background noise at a drawn SNR (white, pink, or babble
spoken from other lines of the corpus), a telephone band or an Opus round trip, and is written as
Ogg/Opus, WAV or FLAC, as real captures come.

What is said comes from the seed corpus (`core/corpus/seed.py`), split by family exactly as the
labeller's own data is: the `train` split speaks the labeller's held-out parts (`labeller_val`,
`labeller_test`), `val` and `test` speak the `speech_eval` families, split again by family, so
no sentence of an evaluation split is one the labeller trained on or one another split speaks.
Speaker voices (variants) are disjoint between splits too.

Written under `out/`:
- `train/`, `val/`, `test/`: the audio (`<split>-<nnnn>-<lang>.<ext>`);
- `truth/utterances-<split>.jsonl`: one row per utterance (session, audio path relative to the
  truth file, its sha256, start_s/end_s of audible speech, speaker, lang, text, labels);
- `truth/segments-<split>.jsonl`: the same per 1-60 s evaluation segment (utterances closer than
  `SEGMENT_GAP_S` joined, labels the union);
- `manifest.jsonl` (one row per session: split, lang, conditions) and `corpus.json` (settings
  and totals).
The same seed gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np
import soundfile
from scipy.signal import butter, resample_poly, sosfilt

from voxtox.corpus.seed import (
    LANGS,
    SeedSentence,
    family_split,
    generate_seed_corpus,
    normalise_text,
)
from voxtox.audio import SAMPLE_RATE, decode_audio
from voxtox.labels import CLASSES
from voxtox.corpus.speech_synth import Utterance, speak

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Hours per split in the paper's Table 1 (train 11,833.5 h, validation 1,877.4 h, test 820.9 h).
TABLE1_FRACTIONS: Mapping[str, float] = {"train": 0.8143, "val": 0.1292, "test": 0.0565}
#: Share of utterances per class when `toxic_share` is 0.25: most speech is not toxic. The toxic
#: classes keep these proportions (roughly the paper's Table 1 training hours) as the share moves.
CLASS_WEIGHTS: Mapping[str, float] = {
    "profanity": 0.09,
    "bullying": 0.05,
    "dating_sexting": 0.03,
    "racism": 0.03,
    "other": 0.05,
    "no_violation": 0.75,
}
#: espeak-ng voice variants that sound like people (robots, whispers and effects left out).
VOICE_VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
    "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty", "belinda",
    "benjamin", "boris", "caleb", "david", "Denis", "Diogo", "ed", "edward", "gustave",
    "Henrique", "Hugo", "iven", "john", "Lee", "linda", "marcelo", "Marco", "Mario", "max",
    "Michael", "michel", "miguel", "Mike", "Nguyen", "pablo", "paul", "pedro", "quincy", "rob",
    "robert", "steph", "Storm", "zac", "anika", "grandpa", "klatt",
)  # fmt: skip
#: Utterances closer than this are one evaluation segment (about the VAD's padding, hang-over
#: and merge gap together: 0.2 + 0.3 + 0.5 s).
SEGMENT_GAP_S = 1.0
MIN_SEGMENT_S, MAX_SEGMENT_S = 1.0, 60.0
FORMATS: tuple[str, ...] = ("ogg", "wav", "flac")


@dataclass(frozen=True)
class SynthConfig:
    """Everything that shapes a corpus. Same config and seed, same bytes."""

    hours: float = 0.5
    langs: tuple[str, ...] = LANGS
    seed: int = 7
    split_fractions: Mapping[str, float] = field(default_factory=lambda: dict(TABLE1_FRACTIONS))
    toxic_share: float = 0.25  # share of utterances drawn from the five toxic-or-other classes
    session_s: tuple[float, float] = (20.0, 180.0)
    speakers: tuple[int, int] = (2, 4)
    words_per_minute: tuple[int, int] = (130, 170)
    pitch: tuple[int, int] = (25, 75)
    gain_db: tuple[float, float] = (-8.0, 0.0)
    pause_s: tuple[float, float] = (0.3, 8.0)  # drawn log-uniformly: mostly short
    overlap_prob: float = 0.08  # the next speaker starts before this one has finished
    overlap_s: tuple[float, float] = (0.2, 1.0)
    noise_prob: float = 0.7
    noise_kinds: Mapping[str, float] = field(default_factory=lambda: {"white": 1.0, "pink": 1.0, "babble": 1.0})
    snr_db: tuple[float, float] = (10.0, 30.0)
    telephone_prob: float = 0.1
    opus_roundtrip_prob: float = 0.1
    formats: Mapping[str, float] = field(default_factory=lambda: {"ogg": 2.0, "wav": 1.0, "flac": 1.0})
    workers: int = 2

    def __post_init__(self) -> None:
        unknown = sorted(set(self.langs) - set(LANGS))
        if unknown or not self.langs:
            raise ValueError(f"languages must be a non-empty subset of {list(LANGS)}; unknown: {unknown}")
        if self.hours <= 0:
            raise ValueError(f"hours must be positive, got {self.hours}")
        if set(self.split_fractions) - set(SPLITS) or any(v < 0 for v in self.split_fractions.values()):
            raise ValueError(f"split fractions must be non-negative, for {SPLITS}: {dict(self.split_fractions)}")
        if sum(self.split_fractions.values()) <= 0:
            raise ValueError("at least one split needs a positive fraction")
        if not 0.0 <= self.toxic_share <= 1.0:
            raise ValueError(f"toxic_share must be in [0, 1], got {self.toxic_share}")
        if set(self.formats) - set(FORMATS) or not any(v > 0 for v in self.formats.values()):
            raise ValueError(f"formats must weigh some of {FORMATS}: {dict(self.formats)}")
        if set(self.noise_kinds) - {"white", "pink", "babble"}:
            raise ValueError(f"noise kinds are white, pink, babble: {dict(self.noise_kinds)}")
        if self.session_s[0] <= 0 or self.session_s[0] > self.session_s[1]:
            raise ValueError(f"session_s must be (min, max) seconds, got {self.session_s}")
        if self.pause_s[0] <= 0 or self.pause_s[0] > self.pause_s[1]:
            raise ValueError(f"pause_s must be (min, max) seconds, got {self.pause_s}")

    def class_weights(self) -> dict[str, float]:
        toxic = {c: w for c, w in CLASS_WEIGHTS.items() if c != "no_violation"}
        total = sum(toxic.values())
        weights = {c: self.toxic_share * w / total for c, w in toxic.items()}
        weights["no_violation"] = 1.0 - self.toxic_share
        return weights

    def to_json(self) -> dict[str, object]:
        return {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v)
                for k, v in asdict(self).items() if k != "workers"}


@dataclass(frozen=True)
class Speaker:
    name: str  # `<variant>`: one voice, used by one split only
    variant: str
    pitch: int
    words_per_minute: int
    gain_db: float


@dataclass(frozen=True)
class TruthUtterance:
    session: str
    split: str
    start_s: float
    end_s: float
    speaker: str
    lang: str
    text: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class SessionInfo:
    session: str
    split: str
    lang: str
    path: str  # relative to the corpus directory
    sha256: str
    format: str
    duration_s: float
    speech_s: float
    n_utterances: int
    n_overlaps: int
    speakers: tuple[str, ...]
    noise: str  # none, white, pink, babble
    snr_db: float | None
    channel: str  # clean, telephone, opus


@dataclass
class CorpusManifest:
    out_dir: Path
    config: SynthConfig
    sessions: list[SessionInfo]
    utterances: list[TruthUtterance]

    def truth_files(self, kind: str = "utterances", splits: Sequence[str] = ("val", "test")) -> list[Path]:
        return [self.out_dir / "truth" / f"{kind}-{s}.jsonl" for s in splits
                if (self.out_dir / "truth" / f"{kind}-{s}.jsonl").exists()]

    def hours(self, split: str | None = None) -> float:
        return sum(s.duration_s for s in self.sessions if split in (None, s.split)) / 3600


# ---------------------------------------------------------------------------------------------
# Sentences and voices per split


def sentence_pools(
    langs: Sequence[str], seed: int, labeller_seed: int = 0
) -> dict[str, dict[str, list[SeedSentence]]]:
    """Sentences each split may speak, per language: train from the labeller's held-out parts,
    val and test from `speech_eval` split again by family (seeded by `seed`)."""
    parts = family_split(generate_seed_corpus(seed=labeller_seed), seed=labeller_seed)
    seen = {normalise_text(s.text) for s in parts["labeller_train"]}
    evaluation = family_split(parts["speech_eval"], {"val": 0.5, "test": 0.5}, seed=seed)
    chosen = {
        "train": parts["labeller_val"] + parts["labeller_test"],
        "val": evaluation["val"],
        "test": evaluation["test"],
    }
    pools: dict[str, dict[str, list[SeedSentence]]] = {}
    for split, sentences in chosen.items():
        pools[split] = {
            lang: [s for s in sentences if s.lang == lang and normalise_text(s.text) not in seen]
            for lang in langs
        }
    return pools


def voice_rosters(seed: int, fractions: Mapping[str, float], minimum: int = 4) -> dict[str, list[str]]:
    """Disjoint voice variants per split: evaluation splits get at least `minimum` each."""
    variants = list(VOICE_VARIANTS)
    random.Random(f"voices:{seed}").shuffle(variants)
    active = [s for s in SPLITS if fractions.get(s, 0) > 0]
    total = sum(fractions.get(s, 0) for s in active)  # fractions may be given as ratios, e.g. 6,2,2
    rosters: dict[str, list[str]] = {s: [] for s in SPLITS}
    cursor = 0
    for split in active:
        if split == "train":
            continue
        n = max(minimum, round(fractions[split] / total * len(variants)))
        rosters[split] = variants[cursor : cursor + n]
        cursor += n
    if "train" in active:
        rosters["train"] = variants[cursor:]
    empty = [split for split in active if not rosters[split]]
    if empty:
        raise ValueError(f"not enough voices for the splits {empty} with fractions {dict(fractions)}")
    return rosters


def make_speakers(roster: Sequence[str], config: SynthConfig) -> list[Speaker]:
    speakers = []
    for variant in roster:
        rng = random.Random(f"speaker:{config.seed}:{variant}")
        speakers.append(
            Speaker(
                name=variant,
                variant=variant,
                pitch=rng.randint(*config.pitch),
                words_per_minute=rng.randint(*config.words_per_minute),
                gain_db=round(rng.uniform(*config.gain_db), 1),
            )
        )
    return speakers


# ---------------------------------------------------------------------------------------------
# One session


@dataclass(frozen=True)
class SessionPlan:
    session: str
    split: str
    lang: str
    target_s: float
    seed: str  # the session's own random stream: sessions render in any order, same bytes


def _draw(rng: random.Random, weights: Mapping[str, float]) -> str:
    names = [k for k, w in weights.items() if w > 0]
    return rng.choices(names, weights=[weights[k] for k in names])[0]


def _by_class(pool: Sequence[SeedSentence]) -> dict[str, list[SeedSentence]]:
    grouped: dict[str, list[SeedSentence]] = defaultdict(list)
    for sentence in pool:
        for label in sentence.labels:
            grouped[label].append(sentence)
    return grouped


def _speak_at(speaker: Speaker, text: str, lang: str) -> np.ndarray:
    speech = speak(Utterance(text, lang, speaker.variant, speaker.words_per_minute, speaker.pitch))
    return speech * np.float32(10 ** (speaker.gain_db / 20))


def render_session(
    plan: SessionPlan,
    pool: Sequence[SeedSentence],
    speakers: Sequence[Speaker],
    config: SynthConfig,
) -> tuple[np.ndarray, list[TruthUtterance], dict[str, object]]:
    """The session's clean 16 kHz mix, its truth, and its conditions (noise, channel, format)."""
    rng = random.Random(plan.seed)
    by_class = _by_class(pool)
    weights = {c: w for c, w in config.class_weights().items() if by_class.get(c)}
    n_speakers = min(len(speakers), rng.randint(*config.speakers))
    cast = rng.sample(list(speakers), n_speakers)
    lead = rng.uniform(0.3, 1.5)
    cursor = lead  # where the next utterance may start
    previous: tuple[float, float] | None = None
    current: Speaker | None = None
    pieces: list[tuple[int, np.ndarray]] = []
    truth: list[TruthUtterance] = []
    n_overlaps = 0
    log_lo, log_hi = math.log(config.pause_s[0]), math.log(config.pause_s[1])
    while True:
        current = _next_speaker(rng, cast, current)
        label = _draw(rng, weights)
        sentence = rng.choice(by_class[label])
        speech = _speak_at(current, sentence.text, plan.lang)
        if speech.size == 0:
            continue
        length = len(speech) / SAMPLE_RATE
        start, overlapped = _next_start(rng, cursor, previous, config)
        n_overlaps += overlapped
        if truth and start + length > plan.target_s and previous is not None and previous[1] >= config.session_s[0] - 0.3:
            break  # (a session shorter than the minimum takes one more utterance)
        offset = int(round(start * SAMPLE_RATE))
        start = offset / SAMPLE_RATE
        end = (offset + len(speech)) / SAMPLE_RATE
        pieces.append((offset, speech))
        truth.append(
            TruthUtterance(plan.session, plan.split, round(start, 3), round(end, 3), current.name,
                           plan.lang, sentence.text, sentence.labels)
        )
        previous = (start, end)
        cursor = max(cursor, end) + math.exp(rng.uniform(log_lo, log_hi))
        if start + length >= plan.target_s and end >= config.session_s[0] - 0.3:
            break
    mix = _mix_down(pieces, max(u.end_s for u in truth) + rng.uniform(0.3, 1.5))
    conditions: dict[str, object] = {"n_overlaps": n_overlaps, "speakers": tuple(s.name for s in cast)}
    mix = _add_noise(mix, truth, rng, config, plan, pool, speakers, cast, conditions)
    mix = _apply_channel(mix, rng, config, conditions)
    return _level_and_format(mix, rng, config, conditions), truth, conditions


def _level_and_format(mix: np.ndarray, rng: random.Random, config: SynthConfig, conditions: dict[str, object]) -> np.ndarray:
    """The mix at a random peak level; the file format it will be written in goes to `conditions`."""
    peak = float(np.abs(mix).max()) or 1.0
    mix = (mix * np.float32(rng.uniform(0.4, 0.9) / peak)).astype(np.float32)
    conditions["format"] = _draw(rng, config.formats)
    return mix


def _next_speaker(rng: random.Random, cast: Sequence[Speaker], current: Speaker | None) -> Speaker:
    """Who speaks next: mostly someone other than the last speaker."""
    if current is None or len(cast) == 1 or rng.random() < 0.8:
        return rng.choice([s for s in cast if s is not current] or list(cast))
    return current


def _next_start(
    rng: random.Random, cursor: float, previous: tuple[float, float] | None, config: SynthConfig
) -> tuple[float, bool]:
    """Where the next utterance starts: after the pause (`cursor`), or now and then over the end
    of the previous one; and whether it overlaps."""
    if previous is not None and rng.random() < config.overlap_prob:
        return max(previous[0] + 0.5, previous[1] - rng.uniform(*config.overlap_s)), True
    return cursor, False


def _mix_down(pieces: Sequence[tuple[int, np.ndarray]], duration_s: float) -> np.ndarray:
    """The utterances (sample offset, audio) added into one track of `duration_s`."""
    mix = np.zeros(int(round(duration_s * SAMPLE_RATE)), np.float32)
    for offset, speech in pieces:
        mix[offset : offset + len(speech)] += speech
    return mix


def _speech_power(mix: np.ndarray, truth: Sequence[TruthUtterance]) -> float:
    spans = [mix[int(u.start_s * SAMPLE_RATE) : int(u.end_s * SAMPLE_RATE)] for u in truth]
    speech = np.concatenate(spans) if spans else mix
    return float(np.mean(speech.astype(np.float64) ** 2)) or 1e-12


def _add_noise(
    mix: np.ndarray,
    truth: Sequence[TruthUtterance],
    rng: random.Random,
    config: SynthConfig,
    plan: SessionPlan,
    pool: Sequence[SeedSentence],
    speakers: Sequence[Speaker],
    cast: Sequence[Speaker],
    conditions: dict[str, object],
) -> np.ndarray:
    conditions["noise"], conditions["snr_db"] = "none", None
    if rng.random() >= config.noise_prob:
        return mix
    kind = _draw(rng, config.noise_kinds)
    snr = round(rng.uniform(*config.snr_db), 1)
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    if kind == "white":
        noise = noise_rng.standard_normal(len(mix))
    elif kind == "pink":
        noise = pink_noise(len(mix), noise_rng)
    else:
        noise = _babble(len(mix), rng, plan, pool, speakers, cast)
    noise = noise.astype(np.float64)
    noise_power = float(np.mean(noise**2)) or 1e-12
    scale = math.sqrt(_speech_power(mix, truth) / (noise_power * 10 ** (snr / 10)))
    conditions["noise"], conditions["snr_db"] = kind, snr
    return (mix + scale * noise).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise by shaping white noise's spectrum."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


def _babble(
    n: int,
    rng: random.Random,
    plan: SessionPlan,
    pool: Sequence[SeedSentence],
    speakers: Sequence[Speaker],
    cast: Sequence[Speaker],
) -> np.ndarray:
    """Several far-off talkers: other lines of the split's pool, in the split's other voices (so
    voices stay disjoint between splits)."""
    roster = [s.variant for s in speakers if s not in cast] or [s.variant for s in speakers]
    track = np.zeros(n, np.float64)
    for _ in range(4):
        speaker = Speaker("babble", rng.choice(roster), rng.randint(30, 70), rng.randint(140, 170), 0.0)
        lines = [_speak_at(speaker, rng.choice(pool).text, plan.lang) for _ in range(3)]
        talker = np.concatenate([np.concatenate([line, np.zeros(SAMPLE_RATE // 4, np.float32)]) for line in lines])
        reps = int(math.ceil(n / max(len(talker), 1))) + 1
        looped = np.tile(talker, reps)
        shift = rng.randrange(len(talker))
        track += looped[shift : shift + n]
    return track


def _apply_channel(mix: np.ndarray, rng: random.Random, config: SynthConfig, conditions: dict[str, object]) -> np.ndarray:
    draw = rng.random()
    if draw < config.telephone_prob:
        conditions["channel"] = "telephone"
        return telephone_band(mix)
    if draw < config.telephone_prob + config.opus_roundtrip_prob:
        conditions["channel"] = "opus"
        peak = float(np.abs(mix).max()) or 1.0
        decoded = decode_audio(encode_audio(mix * np.float32(0.9 / peak), "ogg", bitrate=12_000)).samples
        out = np.zeros_like(mix)
        out[: min(len(mix), len(decoded))] = decoded[: len(mix)] * (peak / 0.9)
        return out
    conditions["channel"] = "clean"
    return mix


def telephone_band(samples: np.ndarray) -> np.ndarray:
    """300-3400 Hz at 8 kHz, back to 16 kHz: what a phone line leaves of the voice."""
    sos = butter(6, [300, 3400], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    narrow = resample_poly(sosfilt(sos, samples.astype(np.float64)), 1, 2)
    return resample_poly(narrow, 2, 1)[: len(samples)].astype(np.float32)


def encode_audio(samples: np.ndarray, fmt: str, bitrate: int = 24_000) -> bytes:
    """16 kHz mono samples as Ogg/Opus, WAV or FLAC bytes, bit-exact for the same input."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    if fmt in ("wav", "flac"):
        buffer = io.BytesIO()
        soundfile.write(buffer, pcm, SAMPLE_RATE, format=fmt.upper(), subtype="PCM_16")
        return buffer.getvalue()
    if fmt != "ogg":
        raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="ogg", container_options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream("libopus", rate=SAMPLE_RATE)
        stream.layout = "mono"
        stream.bit_rate = bitrate
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Segments and files


def evaluation_segments(utterances: Sequence[TruthUtterance]) -> list[dict[str, object]]:
    """Utterances of one session joined into 1-60 s segments (gap < SEGMENT_GAP_S joins them);
    a segment's labels are the union of its utterances'. Shorter than 1 s is left out."""
    ordered = sorted(utterances, key=lambda u: (u.start_s, u.end_s))
    groups: list[list[TruthUtterance]] = []
    for utterance in ordered:
        if groups:
            group = groups[-1]
            group_end = max(u.end_s for u in group)
            if utterance.start_s - group_end < SEGMENT_GAP_S and max(group_end, utterance.end_s) - group[0].start_s <= MAX_SEGMENT_S:
                group.append(utterance)
                continue
        groups.append([utterance])
    segments = []
    for group in groups:
        start, end = group[0].start_s, max(u.end_s for u in group)
        if end - start < MIN_SEGMENT_S:
            continue
        labels = {label for u in group for label in u.labels}
        if len(labels) > 1:
            labels.discard("no_violation")
        segments.append({
            "start_s": start,
            "end_s": end,
            "speaker": ",".join(dict.fromkeys(u.speaker for u in group)),
            "lang": group[0].lang,
            "text": " ".join(u.text for u in group),
            "labels": [c for c in CLASSES if c in labels],
            "n_utterances": len(group),
        })
    return segments


def _jsonl(rows: Sequence[Mapping[str, object]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def plan_sessions(config: SynthConfig) -> list[SessionPlan]:
    """Sessions per split until its share of `hours` is reached (at least one per active split)."""
    total = sum(config.split_fractions.values())
    plans = []
    for split in SPLITS:
        fraction = config.split_fractions.get(split, 0.0) / total
        if fraction <= 0:
            continue
        budget = config.hours * 3600 * fraction
        rng = random.Random(f"plan:{config.seed}:{split}")
        langs = list(config.langs)
        used, index = 0.0, 0
        low, high = config.session_s
        # every language gets a session where the budget allows: shorter sessions in small splits
        high = min(high, max(low, budget / len(langs)))
        while budget - used >= low / 2 or index == 0:
            if index % len(langs) == 0:
                rng.shuffle(langs)
            lang = langs[index % len(langs)]
            target = rng.uniform(low, high)
            remaining = budget - used
            if remaining <= high:  # the split's last session takes what is left
                target = max(remaining, low)
            elif remaining - target < low:  # leave enough for one more whole session
                target = max(low, remaining / 2)
            name = f"{split}-{index:04d}-{lang}"
            plans.append(SessionPlan(name, split, lang, target, f"session:{config.seed}:{name}"))
            used += target
            index += 1
    return plans


def synthesize_corpus(
    out_dir: Path | str,
    hours: float | None = None,
    langs: Sequence[str] | None = None,
    seed: int | None = None,
    config: SynthConfig | None = None,
    progress: Callable[[SessionInfo], None] | None = None,
) -> CorpusManifest:
    """Generate a corpus into `out_dir` (see the module docstring); returns what was written."""
    overrides = {k: v for k, v in {"hours": hours, "langs": tuple(langs) if langs else None, "seed": seed}.items()
                 if v is not None}
    base = config or SynthConfig()
    config = SynthConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **overrides})
    out = Path(out_dir)
    pools = sentence_pools(config.langs, config.seed)
    _check_pools(pools, config)
    rosters = voice_rosters(config.seed, config.split_fractions)
    speakers = {split: make_speakers(rosters[split], config) for split in SPLITS}
    plans = plan_sessions(config)

    def one(plan: SessionPlan) -> tuple[SessionInfo, list[TruthUtterance]]:
        mix, truth, conditions = render_session(plan, pools[plan.split][plan.lang], speakers[plan.split], config)
        fmt = str(conditions["format"])
        data = encode_audio(mix, fmt)
        relative = f"{plan.split}/{plan.session}.{fmt}"
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        info = SessionInfo(
            session=plan.session, split=plan.split, lang=plan.lang, path=relative,
            sha256=hashlib.sha256(data).hexdigest(), format=fmt,
            duration_s=round(len(mix) / SAMPLE_RATE, 3),
            speech_s=round(sum(u.end_s - u.start_s for u in truth), 3),
            n_utterances=len(truth), n_overlaps=int(conditions["n_overlaps"]),  # type: ignore[call-overload]
            speakers=tuple(conditions["speakers"]),  # type: ignore[arg-type]
            noise=str(conditions["noise"]), snr_db=conditions["snr_db"],  # type: ignore[arg-type]
            channel=str(conditions["channel"]),
        )
        if progress is not None:
            progress(info)
        return info, truth

    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        results = list(pool.map(one, plans))
    sessions = [info for info, _ in results]
    utterances = [u for _, truth in results for u in truth]
    _write_truth(out, sessions, {info.session: truth for info, truth in results}, config)
    return CorpusManifest(out, config, sessions, utterances)


def _check_pools(pools: Mapping[str, Mapping[str, Sequence[SeedSentence]]], config: SynthConfig) -> None:
    """Every language has sentences in every split the corpus has."""
    for split in SPLITS:
        for lang in config.langs:
            if config.split_fractions.get(split, 0) > 0 and not pools[split][lang]:
                raise ValueError(f"no {lang} sentences for the {split} split")


def _write_truth(
    out: Path, sessions: Sequence[SessionInfo], truth: Mapping[str, Sequence[TruthUtterance]], config: SynthConfig
) -> None:
    truth_dir = out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        in_split = [s for s in sessions if s.split == split]
        if not in_split:
            continue
        utterance_rows, segment_rows = [], []
        for info in in_split:
            common = {"session": info.session, "split": split, "audio": f"../{info.path}",
                      "audio_sha256": info.sha256, "origin": "voxtox-synth"}
            for u in truth[info.session]:
                utterance_rows.append({**common, "start_s": u.start_s, "end_s": u.end_s, "speaker": u.speaker,
                                       "lang": u.lang, "text": u.text, "labels": list(u.labels)})
            segment_rows += [{**common, **segment} for segment in evaluation_segments(truth[info.session])]
        (truth_dir / f"utterances-{split}.jsonl").write_text(_jsonl(utterance_rows), encoding="utf-8")
        (truth_dir / f"segments-{split}.jsonl").write_text(_jsonl(segment_rows), encoding="utf-8")
    (out / "manifest.jsonl").write_text(_jsonl([asdict(s) for s in sessions]), encoding="utf-8")
    summary = {
        "generator": "voxtox synth",
        "config": config.to_json(),
        "voices": {split: sorted({v for s in sessions if s.split == split for v in s.speakers}) for split in SPLITS},
        "hours": {split: round(sum(s.duration_s for s in sessions if s.split == split) / 3600, 4) for split in SPLITS},
        "sessions": {split: sum(s.split == split for s in sessions) for split in SPLITS},
        "utterances": {split: sum(len(truth[s.session]) for s in sessions if s.split == split) for split in SPLITS},
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_manifest(corpus_dir: Path | str) -> CorpusManifest:
    """Read back what `synthesize_corpus` wrote."""
    out = Path(corpus_dir)
    meta_path = out / "corpus.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{out} is not a voxtox synth corpus (no corpus.json)")
    meta = json.loads(meta_path.read_text())
    raw = meta["config"]
    config = SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    sessions = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        row["speakers"] = tuple(row["speakers"])
        sessions.append(SessionInfo(**row))
    utterances = []
    for split in SPLITS:
        path = out / "truth" / f"utterances-{split}.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                utterances.append(TruthUtterance(row["session"], row["split"], row["start_s"], row["end_s"],
                                                 row["speaker"], row["lang"], row["text"], tuple(row["labels"])))
    return CorpusManifest(out, config, sessions, utterances)
