"""`voxtox corpus-report`'s measurements: how well the pipeline does on a synthetic corpus whose
truth is known (the flow that labels the corpus first is flows/synth.py).

Against the truth, after importing the val/test truth as human labels:
- hours per class and language per split (the shape of the paper's Table 1);
- the pipeline's labels on the evaluation segments (the `segment_truth` view): per-class AP of
  its probabilities and F1 of its decisions, per language, with 95% bootstrap intervals;
- ASR word error rate per language (jiwer), each evaluation segment's transcript against the
  text of the utterances it holds;
- VAD boundary error: the VAD's speech regions against the truth's, per language and condition.
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from voxtox.audio import load_audio
from voxtox.corpus.synth import SPLITS, CorpusManifest, SynthConfig, TruthUtterance
from voxtox.labels import CLASSES, TOXIC_CLASSES
from voxtox.models.labeller import TextLabeller
from voxtox.models.metrics import MetricCI, bootstrap_counts, evaluate_ap, f1_at_threshold, metric_ci
from voxtox.settings import Settings, VadSettings, with_overrides
from voxtox.storage.catalog import Catalog
from voxtox.storage.model_store import resolve_model
from voxtox.storage.schema import human_label_column, label_column, prob_column
from voxtox.chunk import detect_speech
from voxtox.storage.human_labels import ImportReport, import_truth_files_to_lake
from voxtox.storage.lake import target_for

#: Classes whose pipeline labels are scored against the truth (humans do not label `other`).
REPORT_CLASSES: tuple[str, ...] = (*TOXIC_CLASSES, "no_violation")
#: A VAD boundary within this of the truth's counts as found (the issue's tolerance).
BOUNDARY_TOLERANCE_S = 0.15


def corpus_summary(manifest: CorpusManifest) -> dict[str, object]:
    return {
        "out": str(manifest.out_dir),
        "hours": round(manifest.hours(), 3),
        **{f"{s}_hours": round(manifest.hours(s), 3) for s in SPLITS},
        "sessions": len(manifest.sessions),
        "utterances": len(manifest.utterances),
        "overlaps": sum(s.n_overlaps for s in manifest.sessions),
    }


# ---------------------------------------------------------------------------------------------
# Table 1 shape


def hours_table(manifest: CorpusManifest) -> str:
    """Speech hours per class and language per split (an utterance counts in each of its classes;
    Total is speech time, audio the whole recordings); minutes for a corpus under 2 hours."""
    minutes = manifest.hours() < 2
    unit, scale = ("minutes", 60.0) if minutes else ("hours", 3600.0)
    lines = [f"Speech {unit}:", ""]
    header = "| split | language | label type | " + " | ".join(CLASSES) + " | total speech | audio |"
    lines += [header, "|" + "---|" * (len(CLASSES) + 5)]
    for split in SPLITS:
        sessions = [s for s in manifest.sessions if s.split == split]
        for lang in manifest.config.langs:
            utterances = [u for u in manifest.utterances if u.split == split and u.lang == lang]
            audio = sum(s.duration_s for s in sessions if s.lang == lang)
            if not utterances:
                continue
            per_class = [sum(u.end_s - u.start_s for u in utterances if c in u.labels) / scale for c in CLASSES]
            total = sum(u.end_s - u.start_s for u in utterances) / scale
            origin = "pipeline" if split == "train" else "human (synth truth)"
            digits = 1 if minutes else 3
            lines.append(f"| {split} | {lang} | {origin} | " + " | ".join(f"{h:.{digits}f}" for h in per_class)
                         + f" | {total:.{digits}f} | {audio / scale:.{digits}f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Label quality


@dataclass
class EvalRows:
    lang: list[str]
    session: list[str]
    y: np.ndarray  # truth, (n, len(REPORT_CLASSES))
    prob: np.ndarray
    decided: np.ndarray
    transcripts: list[str]
    spans: list[tuple[str, float, float]]  # (source sha, start, end)
    n_unlabelled: int  # clips overlapping no truth span (VAD false alarms, stray segments)


def evaluation_rows(catalog: Catalog, manifest: CorpusManifest, splits: Sequence[str]) -> EvalRows:
    """The pipeline's evaluation segments of the corpus's val/test audio with their truth."""
    by_sha = {s.sha256: s for s in manifest.sessions if s.split in splits}
    cols = ", ".join(
        [f"c.{prob_column(c)}" for c in REPORT_CLASSES]
        + [f"c.{label_column(c)}" for c in REPORT_CLASSES]
        + [f"t.{human_label_column(c)}" for c in REPORT_CLASSES]
    )
    with catalog.connect() as con:
        rows = con.execute(
            f"SELECT c.source_sha256, c.start_s, c.end_s, c.transcript, t.n_human_spans, {cols} "
            "FROM clips c JOIN segment_truth t USING (clip_id) "
            "WHERE c.segment_kind = 'evaluation' AND list_contains(?, c.source_sha256) "
            "ORDER BY c.source_sha256, c.start_s",
            [sorted(by_sha)],
        ).fetchall()
    k = len(REPORT_CLASSES)
    body = np.array([r[5:] for r in rows], dtype=np.float64).reshape(len(rows), 3 * k)
    return EvalRows(
        lang=[by_sha[r[0]].lang for r in rows],
        session=[by_sha[r[0]].session for r in rows],
        y=body[:, 2 * k :].astype(bool),
        prob=body[:, :k],
        decided=body[:, k : 2 * k].astype(bool),
        transcripts=[r[3] or "" for r in rows],
        spans=[(r[0], r[1], r[2]) for r in rows],
        n_unlabelled=sum(r[4] == 0 for r in rows),
    )


def training_rows(catalog: Catalog, manifest: CorpusManifest) -> EvalRows:
    """The pipeline's training sentences of the corpus's train audio, with the truth computed here
    by the `segment_truth` rule (a true utterance counts when it overlaps the clip by at least
    half of the shorter of the two); train truth is not imported as human labels."""
    by_sha = {s.sha256: s for s in manifest.sessions if s.split == "train"}
    cols = ", ".join([prob_column(c) for c in REPORT_CLASSES] + [label_column(c) for c in REPORT_CLASSES])
    if not by_sha or "clips" not in _views(catalog):
        return EvalRows([], [], np.zeros((0, len(REPORT_CLASSES)), bool), np.zeros((0, len(REPORT_CLASSES))),
                        np.zeros((0, len(REPORT_CLASSES)), bool), [], [], 0)
    with catalog.connect() as con:
        rows = con.execute(
            f"SELECT source_sha256, start_s, end_s, transcript, {cols} FROM clips "
            "WHERE list_contains(?, source_sha256) ORDER BY source_sha256, start_s",
            [sorted(by_sha)],
        ).fetchall()
    by_session: dict[str, list[TruthUtterance]] = defaultdict(list)
    for u in manifest.utterances:
        by_session[u.session].append(u)
    k = len(REPORT_CLASSES)
    body = np.array([r[4:] for r in rows], dtype=np.float64).reshape(len(rows), 2 * k)
    truth = np.zeros((len(rows), k), bool)
    unlabelled = 0
    for i, (sha, start, end, *_rest) in enumerate(rows):
        hits = [u for u in by_session[by_sha[sha].session]
                if min(end, u.end_s) - max(start, u.start_s) >= 0.5 * min(end - start, u.end_s - u.start_s)]
        unlabelled += not hits
        truth[i] = [any(c in u.labels for u in hits) for c in REPORT_CLASSES]
    return EvalRows(
        lang=[by_sha[r[0]].lang for r in rows],
        session=[by_sha[r[0]].session for r in rows],
        y=truth,
        prob=body[:, :k],
        decided=body[:, k:].astype(bool),
        transcripts=[r[3] or "" for r in rows],
        spans=[(r[0], r[1], r[2]) for r in rows],
        n_unlabelled=unlabelled,
    )


def _views(catalog: Catalog) -> set[str]:
    with catalog.connect() as con:
        return {row[0] for row in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}


def f1_with_ci(y: np.ndarray, decided: np.ndarray, counts: np.ndarray) -> list[MetricCI]:
    """F1 of yes/no decisions per class, with its bootstrap interval over the same resamples."""
    point = f1_at_threshold(y, decided.astype(np.float64), np.full(y.shape[1], 0.5))
    tp = counts @ (decided & y).astype(np.int64)
    wrong = counts @ (decided ^ y).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = 2.0 * tp / (2.0 * tp + wrong)
    return [metric_ci(point[c], boot[:, c]) for c in range(y.shape[1])]


def _fmt(ci: MetricCI | None, scale: float = 100.0) -> str:
    if ci is None or not np.isfinite(ci.point):
        return "–"
    if not (np.isfinite(ci.low) and np.isfinite(ci.high)):
        return f"{ci.point * scale:.1f}"
    return f"{ci.point * scale:.1f} [{ci.low * scale:.1f}, {ci.high * scale:.1f}]"


def label_quality_tables(rows: EvalRows, n_resamples: int, seed: int = 0) -> str:
    """AP (of probabilities) and F1 (of decisions) per class and language, with 95% CIs."""
    langs = sorted(set(rows.lang))
    ap_lines = ["| language | segments | " + " | ".join(f"AP {c}" for c in REPORT_CLASSES) + " | mAP (4 toxic) |",
                "|" + "---|" * (len(REPORT_CLASSES) + 3)]
    f1_lines = ["| language | " + " | ".join(f"F1 {c}" for c in REPORT_CLASSES) + " |",
                "|" + "---|" * (len(REPORT_CLASSES) + 1)]
    positives = ["| language | " + " | ".join(REPORT_CLASSES) + " |", "|" + "---|" * (len(REPORT_CLASSES) + 1)]
    for lang in [*langs, "all"]:
        index = np.array([i for i, x in enumerate(rows.lang) if lang in (x, "all")], dtype=int)
        if index.size == 0:
            continue
        y, prob, decided = rows.y[index], rows.prob[index], rows.decided[index]
        ap = evaluate_ap(y, prob, REPORT_CLASSES, TOXIC_CLASSES, n_resamples=n_resamples, seed=seed)
        counts = bootstrap_counts(len(index), n_resamples, seed)
        f1 = f1_with_ci(y, decided, counts)
        ap_lines.append(f"| {lang} | {len(index)} | " + " | ".join(_fmt(ap[c]) for c in REPORT_CLASSES)
                        + f" | {_fmt(ap['mAP'])} |")
        f1_lines.append(f"| {lang} | " + " | ".join(_fmt(ci) for ci in f1) + " |")
        positives.append(f"| {lang} | " + " | ".join(str(int(y[:, c].sum())) for c in range(y.shape[1])) + " |")
    return (
        "Segments with a true label (of the evaluation segments above):\n\n" + "\n".join(positives)
        + "\n\nAverage precision of the pipeline's probabilities against the truth (×100, 95% bootstrap CI "
        f"over segments, {n_resamples} resamples; – where the slice has no true positive):\n\n"
        + "\n".join(ap_lines)
        + "\n\nF1 of the pipeline's label decisions (its thresholds) against the truth (×100, 95% CI):\n\n"
        + "\n".join(f1_lines)
    )


def text_vs_pipeline_table(rows: EvalRows, references: Sequence[str], settings: Settings, n_resamples: int) -> str:
    """The same labeller on the true text of each segment against its labels on the ASR's
    transcript: what the ASR costs, and what the labeller gets wrong on its own."""
    labeller = TextLabeller(resolve_model(settings.labeller.model, settings.model_cache_dir))
    probs = labeller.predict_proba(list(references))
    columns = [CLASSES.index(c) for c in REPORT_CLASSES]
    text_prob, text_decided = probs[:, columns], labeller.decide(probs)[:, columns].astype(bool)
    counts = bootstrap_counts(len(rows.lang), n_resamples, 0)
    lines = ["| labeller input | " + " | ".join(f"AP {c}" for c in TOXIC_CLASSES) + " | mAP | "
             + " | ".join(f"F1 {c}" for c in TOXIC_CLASSES) + " |", "|" + "---|" * (2 * len(TOXIC_CLASSES) + 2)]
    toxic = [REPORT_CLASSES.index(c) for c in TOXIC_CLASSES]
    for name, prob, decided in (("ASR transcript (the pipeline)", rows.prob, rows.decided),
                                ("true text", text_prob, text_decided)):
        ap = evaluate_ap(rows.y, prob, REPORT_CLASSES, TOXIC_CLASSES, n_resamples=n_resamples)
        f1 = f1_with_ci(rows.y, decided, counts)
        lines.append(f"| {name} | " + " | ".join(_fmt(ap[c]) for c in TOXIC_CLASSES) + f" | {_fmt(ap['mAP'])} | "
                     + " | ".join(_fmt(f1[i]) for i in toxic) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# ASR word error rate


def normalise_words(text: str) -> str:
    """Lower case, no punctuation, single spaces: what WER compares."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s']|_", " ", text)
    return " ".join(text.split())


def references_for(rows: EvalRows, manifest: CorpusManifest) -> list[str]:
    """For each evaluation segment, the truth text of the utterances at least half inside it."""
    by_session: dict[str, list[TruthUtterance]] = defaultdict(list)
    for u in manifest.utterances:
        by_session[u.session].append(u)
    sha_session = {s.sha256: s.session for s in manifest.sessions}
    references = []
    for sha, start, end in rows.spans:
        inside = [
            u for u in sorted(by_session[sha_session[sha]], key=lambda u: u.start_s)
            if min(end, u.end_s) - max(start, u.start_s) >= 0.5 * (u.end_s - u.start_s)
        ]
        references.append(" ".join(u.text for u in inside))
    return references


def wer_table(rows: EvalRows, manifest: CorpusManifest) -> str:
    import jiwer

    references = [normalise_words(r) for r in references_for(rows, manifest)]
    hypotheses = [normalise_words(t) for t in rows.transcripts]
    lines = ["| language | segments | reference words | WER % | substitutions | deletions | insertions |",
             "|---|---|---|---|---|---|---|"]
    for lang in [*sorted(set(rows.lang)), "all"]:
        pairs = [(r, h) for r, h, x in zip(references, hypotheses, rows.lang, strict=True) if r and lang in (x, "all")]
        if not pairs:
            continue
        out = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
        n_ref = sum(len(r.split()) for r, _ in pairs)
        lines.append(f"| {lang} | {len(pairs)} | {n_ref} | {100 * out.wer:.1f} | {out.substitutions} | "
                     f"{out.deletions} | {out.insertions} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# VAD boundaries


@dataclass
class VadErrors:
    start_err: list[float]
    end_err: list[float]
    missed: int  # truth regions no VAD region overlaps
    n_regions: int
    speech_s: float
    missed_speech_s: float  # truth speech outside every VAD region
    vad_s: float
    false_alarm_s: float  # VAD speech outside every truth region


def truth_regions(utterances: Sequence[TruthUtterance], join_gap_s: float) -> list[tuple[float, float]]:
    """Union of utterance spans, joining those closer than the VAD would keep apart."""
    regions: list[list[float]] = []
    for u in sorted(utterances, key=lambda u: u.start_s):
        if regions and u.start_s - regions[-1][1] <= join_gap_s:
            regions[-1][1] = max(regions[-1][1], u.end_s)
        else:
            regions.append([u.start_s, u.end_s])
    return [(a, b) for a, b in regions]


def _covered(spans: Sequence[tuple[float, float]], others: Sequence[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, d) - max(a, c)) for a, b in spans for c, d in others)


def vad_errors(
    samples: np.ndarray, utterances: Sequence[TruthUtterance], vad: VadSettings
) -> VadErrors:
    """Compare the VAD's raw speech extents (before padding) with the truth's speech regions."""
    join = vad.merge_gap_s + vad.start_padding_ms / 1000 + vad.hangover_ms / 1000
    truth = truth_regions(utterances, join)
    found = [(r.speech_start_s, r.speech_end_s) for r in detect_speech(samples, vad)]
    start_err, end_err, missed = [], [], 0
    for a, b in truth:
        overlaps = [(min(b, d) - max(a, c), c, d) for c, d in found if min(b, d) > max(a, c)]
        if not overlaps:
            missed += 1
            continue
        _, c, d = max(overlaps)
        start_err.append(abs(c - a))
        end_err.append(abs(d - b))
    speech = sum(b - a for a, b in truth)
    vad_s = sum(d - c for c, d in found)
    hit = _covered(truth, found)
    return VadErrors(start_err, end_err, missed, len(truth), speech, speech - hit, vad_s, vad_s - hit)


def vad_table(manifest: CorpusManifest, vad: VadSettings, splits: Sequence[str]) -> str:
    by_session: dict[str, list[TruthUtterance]] = defaultdict(list)
    for u in manifest.utterances:
        by_session[u.session].append(u)
    groups: dict[str, list[VadErrors]] = defaultdict(list)
    for info in manifest.sessions:
        if info.split not in splits:
            continue
        samples = load_audio(str(manifest.out_dir / info.path)).samples
        errors = vad_errors(samples, by_session[info.session], vad)
        condition = "clean" if info.noise == "none" else f"{info.noise} noise"
        if info.channel != "clean":
            condition += f" + {info.channel}"
        for key in (f"lang {info.lang}", condition, "all"):
            groups[key].append(errors)
    lines = ["| sessions | n | speech regions | missed | start error median / p90 (ms) | end error median / p90 (ms) "
             f"| boundaries within {int(BOUNDARY_TOLERANCE_S * 1000)} ms | speech missed | false alarm |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = sorted(k for k in groups if k.startswith("lang ")) + sorted(
        k for k in groups if not k.startswith("lang ") and k != "all") + ["all"]
    for key in order:
        errs = groups[key]
        starts = np.array([e for x in errs for e in x.start_err])
        ends = np.array([e for x in errs for e in x.end_err])
        both = np.concatenate([starts, ends]) if starts.size else np.array([])
        speech = sum(x.speech_s for x in errs)
        vad_s = sum(x.vad_s for x in errs)

        def ms(values: np.ndarray) -> str:
            if not values.size:
                return "–"
            return f"{1000 * np.median(values):.0f} / {1000 * np.percentile(values, 90):.0f}"

        within = f"{100 * np.mean(both <= BOUNDARY_TOLERANCE_S):.0f}%" if both.size else "–"
        lines.append(
            f"| {key} | {len(errs)} | {sum(x.n_regions for x in errs)} | {sum(x.missed for x in errs)} | "
            f"{ms(starts)} | {ms(ends)} | {within} | "
            f"{100 * sum(x.missed_speech_s for x in errs) / max(speech, 1e-9):.1f}% | "
            f"{100 * sum(x.false_alarm_s for x in errs) / max(vad_s, 1e-9):.1f}% |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The report


def corpus_settings(settings: Settings, manifest: CorpusManifest) -> Settings:
    """Restrict ASR language detection to the corpus's languages (as the demo does)."""
    if "languages" in settings.asr.model_fields_set:  # the user's choice wins
        return settings
    return with_overrides(settings, asr={"languages": list(manifest.config.langs)})


def evaluation_splits(manifest: CorpusManifest) -> list[str]:
    """The corpus's splits whose truth is imported as human labels and measured against."""
    return [s for s in ("val", "test") if any(x.split == s for x in manifest.sessions)]


def measure_corpus(
    manifest: CorpusManifest, settings: Settings, n_resamples: int = 1000, command: str = "",
    started: float | None = None,
) -> str:
    """Import the val/test truth as human labels and measure the (labelled) corpus against it:
    the report's Markdown. `started` (a `time.perf_counter()`) is when the whole report began."""
    started = time.perf_counter() if started is None else started
    eval_splits = evaluation_splits(manifest)
    imported = import_truth_files_to_lake(manifest.truth_files("utterances", eval_splits), target_for(settings))
    catalog = Catalog.from_settings(settings)
    rows = evaluation_rows(catalog, manifest, eval_splits)
    parts = _report_header(manifest, settings, imported, command)
    parts += _evaluation_sections(manifest, settings, rows, eval_splits, n_resamples)
    parts += _training_section(training_rows(catalog, manifest), n_resamples)
    parts += [
        "## VAD boundary error",
        "",
        "webrtcvad's raw speech extents (before padding and hang-over) against the true speech regions "
        f"(utterances closer than the VAD's padding + hang-over + merge gap joined), on {' + '.join(eval_splits)} "
        "recordings; error = distance from the true start/end to the best-overlapping VAD region's.",
        "",
        vad_table(manifest, settings.vad, eval_splits),
        "",
    ]
    return "\n".join(parts).replace("{wall_s}", f"{time.perf_counter() - started:.0f}", 1)


def _report_header(manifest: CorpusManifest, settings: Settings, imported: ImportReport, command: str) -> list[str]:
    return [
        "# The synthetic corpus: the pipeline against known truth",
        "",
        f"Generated by `voxtox synth` ({_config_line(manifest.config)}):",
        "",
        f"```bash\n{synth_command(manifest)}\n```",
        "",
        "and measured by" + (f"\n\n```bash\n{command}\n```\n" if command else " `voxtox corpus-report`.\n"),
        f"{manifest.hours():.3f} h of audio in {len(manifest.sessions)} sessions, "
        f"{len(manifest.utterances)} utterances, {sum(s.n_overlaps for s in manifest.sessions)} overlaps. "
        f"Labeller `{settings.labeller.model}`, ASR `{settings.asr.model}` (beam {settings.asr.beam_size}, "
        f"fallback temperatures {settings.asr.fallback_temperatures or 'none'}, languages "
        f"{', '.join(settings.asr.languages) or 'any'}). "
        f"Human labels imported: {imported.n_spans} spans of "
        f"{imported.n_sources} recordings. Report run: {{wall_s}} s.",
        "",
        "## Hours per class and language (the shape of the paper's Table 1)",
        "",
        "An utterance counts under each of its classes; `other` is in the truth though the paper's "
        "humans do not label it; `audio` is the recordings' whole length, pauses and all.",
        "",
        hours_table(manifest),
        "",
    ]


def _evaluation_sections(
    manifest: CorpusManifest, settings: Settings, rows: EvalRows, eval_splits: Sequence[str], n_resamples: int
) -> list[str]:
    eval_sessions = [s for s in manifest.sessions if s.split in eval_splits]
    eval_utterances = [u for u in manifest.utterances if u.split in eval_splits]
    covered = _utterances_covered(rows, manifest, eval_utterances)
    parts = [
        f"## The pipeline's labels against the truth ({' + '.join(eval_splits)})",
        "",
        f"{len(rows.lang)} evaluation segments (1-60 s, cut by the VAD) from {len(eval_sessions)} recordings; "
        f"{rows.n_unlabelled} of them overlap no true utterance (all-negative truth). "
        f"{covered} of {len(eval_utterances)} true utterances lie at least half inside a segment "
        "(the rest were dropped by the VAD's 1 s minimum or the ASR's hallucination filters: `voxtox query --table rejects`).",
        "",
    ]
    if rows.lang:
        parts += [label_quality_tables(rows, n_resamples), "",
                  "The same labeller on each segment's true text (the utterances at least half inside it) instead "
                  "of its transcript, all languages (×100, 95% CI):", "",
                  text_vs_pipeline_table(rows, references_for(rows, manifest), settings, n_resamples), "",
                  "## ASR word error rate", "",
                  "Each evaluation segment's transcript against the text of the true utterances at least half "
                  "inside it, lower case without punctuation (jiwer):", "", wer_table(rows, manifest), ""]
    return parts


def _training_section(train: EvalRows, n_resamples: int) -> list[str]:
    if not train.lang:
        return []
    return [
        "## The pipeline's training labels against the truth (train)",
        "",
        f"{len(train.lang)} training sentences (1-15 s, cut by ASR segment times) from the train split's "
        f"recordings; {train.n_unlabelled} overlap no true utterance. Truth per sentence by the "
        "`segment_truth` rule (a true utterance overlapping by at least half of the shorter).",
        "",
        label_quality_tables(train, n_resamples),
        "",
    ]


def _utterances_covered(rows: EvalRows, manifest: CorpusManifest, utterances: Sequence[TruthUtterance]) -> int:
    session_sha = {s.session: s.sha256 for s in manifest.sessions}
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for sha, start, end in rows.spans:
        spans[sha].append((start, end))
    return sum(
        any(min(e, u.end_s) - max(s, u.start_s) >= 0.5 * (u.end_s - u.start_s) for s, e in spans[session_sha[u.session]])
        for u in utterances
    )


def synth_command(manifest: CorpusManifest) -> str:
    """The `voxtox synth` command line that makes this corpus (its options that differ from the
    defaults)."""
    config, default = manifest.config, SynthConfig()
    parts = ["voxtox synth", f"--out {manifest.out_dir}", f"--hours {config.hours:g}",
             f"--langs {','.join(config.langs)}", f"--seed {config.seed}"]
    if dict(config.split_fractions) != dict(default.split_fractions):
        parts.append("--splits " + ",".join(f"{config.split_fractions.get(s, 0):g}" for s in SPLITS))
    options = {"toxic_share": "--toxic-share", "noise_prob": "--noise-prob", "telephone_prob": "--telephone-prob",
               "opus_roundtrip_prob": "--opus-prob", "overlap_prob": "--overlap-prob"}
    parts += [f"{flag} {getattr(config, name):g}" for name, flag in options.items()
              if getattr(config, name) != getattr(default, name)]
    for flag, pair, default_pair in (("--session-s", config.session_s, default.session_s),
                                     ("--snr", config.snr_db, default.snr_db)):
        if tuple(pair) != tuple(default_pair):
            parts.append(f"{flag} {pair[0]:g}:{pair[1]:g}")
    if dict(config.formats) != dict(default.formats):
        parts.append("--formats " + ",".join(f"{k}:{v:g}" for k, v in config.formats.items()))
    return " ".join(parts)


def _config_line(config: SynthConfig) -> str:
    fractions = ", ".join(f"{k} {v:g}" for k, v in config.split_fractions.items())
    return (f"{config.hours:g} h requested, languages {','.join(config.langs)}, seed {config.seed}, "
            f"toxic share {config.toxic_share:g}, splits {fractions}")
