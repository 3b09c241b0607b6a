"""Build a labelled, Speech-Commands-like keyword corpus from text-to-speech engines.

No data set can be downloaded where kwsbatch runs, so `kwsbatch synth` speaks the keywords with
every English voice the installed engines have, under sampled rate/pitch settings, and lays the
clips out the way Google Speech Commands does::

    out_dir/<label>/<speaker>_<n>.wav      16 kHz mono PCM_16, exactly `clip_seconds` long
    out_dir/_background_noise_/*.wav       long white/pink/brown noise and TTS babble (not listed)
    out_dir/manifest.csv                   path,label,speaker,engine,voice,text,split
    out_dir/train.csv, val.csv, test.csv   the same rows, one file per split
    out_dir/voices.csv                     speaker,engine,voice,params,split: what each speaker is

Labels are the keywords, `_unknown_` (other English words and a few two-word phrases, minus the
keywords and their homophones) and `_silence_` (near-silence and coloured noise; its `text` is the
noise kind and its engine `noise`). A *speaker* is one engine voice setting (engine + voice +
variant + rate + pitch ...); splits are drawn by speaker, so no voice setting straddles two
splits, and every split gets every class and engine whenever the counts allow. The `voice`
column names the underlying voice: settings that share it are one voice told to speak
differently (every piper setting is the same man), which `speaker_notes` spells out.

Engines live in kwsbatch.corpus.engines: espeak-ng, flite and festival by default, the neural
piper and kokoro (pip extras) when named.

The default unknown vocabulary is the bundled assets/unknown_words.txt (5000 common words), not
/usr/share/dict/words, so a seed gives the same corpus on machines with and without wamerican;
pass `read_word_list("/usr/share/dict/words")` as unknown_words for the larger, rarer vocabulary.

Public API (SynthConfig lives in kwsbatch.corpus.config, light enough for `synth --help`)::

    SynthConfig(words, *, per_word=300, unknown=None, silence=None, unknown_words=None,
                speakers=None, engines=None, seed=0, sample_rate=16000, clip_seconds=1.0,
                splits=(0.8, 0.1, 0.1))
    synthesize_corpus(config, out_dir, *, jobs=1, progress=None) -> manifest DataFrame
    summarize(manifest) -> clip counts per (label, engine) x split
    speaker_notes(manifest) -> one line per engine: its voice settings and the voices behind them
    read_word_list(path) -> words for SynthConfig.unknown_words (e.g. /usr/share/dict/words)
    filter_unknown_words(words, keywords) -> words minus keywords and their homophones
    kwsbatch.corpus.engines: available_engines(names=None) -> [Engine]; VoiceSetting; SynthError

Same config and seed give byte-identical files whatever `jobs` is: every random draw comes from
a generator seeded with (seed, purpose, index), never from shared state.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio.functional as AF

from kwsbatch.corpus.config import SynthConfig
from kwsbatch.corpus.engines import Engine, SynthError, VoiceSetting, available_engines
from kwsbatch.corpus.engines.base import run_program
from kwsbatch.settings import ONE_PER_CORE, worker_count

UNKNOWN = "_unknown_"
SILENCE = "_silence_"
BACKGROUND_DIR = "_background_noise_"
SPLITS = ("train", "val", "test")
COLUMNS = ("path", "label", "speaker", "engine", "voice", "text", "split")
DEFAULT_WORDS_FILE = Path(__file__).parents[1] / "assets" / "unknown_words.txt"

# Streams keep the draws for different purposes independent, so e.g. changing --silence does not
# change which voices speak the keywords.
_VOICES, _PLAN, _TEXTS, _CLIP, _BACKGROUND, _SPEECH = range(6)
_PHRASE_FRACTION = 0.1      # share of _unknown_ clips that are two-word phrases
_MAX_SPEECH = 0.9           # speech may fill at most this share of a clip, so its offset varies
_MAX_TEMPO = 2.0            # beyond 2x faster TTS becomes unintelligible; truncate instead
_NOISE_KINDS = ("silence", "white", "pink", "brown")
_BACKGROUND_SECONDS = 20.0

# Words that sound (nearly) like a keyword but that espeak-ng phonemizes differently; the phoneme
# rule in filter_unknown_words catches the exact homophones (know/no, write/right, ...).
# Kept small on purpose: words that merely rhyme or share a sound (town/down is the limit) are
# the hard negatives _unknown_ is for.
NEAR_HOMOPHONES: dict[str, tuple[str, ...]] = {
    "yes": ("yeah", "yea", "yep", "yet"),
    "no": ("know", "now", "nah", "noh"),
    "up": ("op",),
    "down": ("dawn", "town"),
    "left": ("lift", "loft"),
    "right": ("write", "rite", "wright"),
    "on": ("an",),
    "off": ("of", "oft"),
    "stop": ("stoop", "step"),
}


# ---------------------------------------------------------------------------- vocabulary


def read_word_list(path: str | Path) -> tuple[str, ...]:
    """Plain lowercase a-z words of 2-10 letters from a one-word-a-line file; '#' lines skipped.

    Capitalised entries (names) and entries with apostrophes ("abbot's") in dictionary files such
    as /usr/share/dict/words are dropped rather than lowercased.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise SynthError(f"cannot read word list {path}: {e.strerror}") from None
    words = [w.strip() for w in lines if not w.startswith("#")]
    words = tuple(dict.fromkeys(w for w in words if re.fullmatch(r"[a-z]{2,10}", w)))
    if not words:
        raise SynthError(f"word list {path} has no plain lowercase words of 2-10 letters")
    return words


_PHONEME_CACHE: dict[tuple[str, str], str] = {}


def phonemize(words: Sequence[str], voice: str = "en-us") -> list[str]:
    """espeak-ng's phoneme mnemonics per word, stress marks dropped (`know` and `no` -> `noU`)."""
    missing = [w for w in dict.fromkeys(words) if (voice, w) not in _PHONEME_CACHE]
    if missing:
        # One process for all words: espeak-ng reads stdin a line at a time, one output line each.
        out = run_program(["espeak-ng", "-q", "-x", "-v", voice], "espeak-ng -x", "\n".join(missing) + "\n")
        lines = out.decode().splitlines()
        if len(lines) != len(missing):  # a word spoken as two clauses; fall back to one by one
            lines = [run_program(["espeak-ng", "-q", "-x", "-v", voice, w], "espeak-ng -x").decode() for w in missing]
        for word, line in zip(missing, lines):
            _PHONEME_CACHE[(voice, word)] = re.sub(r"[\s',%=_:|]+", "", line)
    return [_PHONEME_CACHE[(voice, w)] for w in words]


def filter_unknown_words(words: Sequence[str], keywords: Sequence[str]) -> tuple[str, ...]:
    """`words` minus the keywords, NEAR_HOMOPHONES of them, and words espeak-ng pronounces like
    one in American or British English."""
    drop = set(keywords)
    for keyword in keywords:
        drop.update(NEAR_HOMOPHONES.get(keyword, ()))
    kept = [w for w in dict.fromkeys(words) if w not in drop]
    accents = ("en-us", "en-gb")
    with ThreadPoolExecutor(len(accents)) as pool:  # one espeak-ng process per accent
        spoken = list(pool.map(lambda voice: phonemize(kept, voice), accents))
    sounds = [set(phonemize(list(keywords), voice)) for voice in accents]
    return tuple(w for i, w in enumerate(kept) if all(ph[i] not in snd for ph, snd in zip(spoken, sounds)))


# ---------------------------------------------------------------------------------- audio


def trim_silence(audio: np.ndarray, sample_rate: int, *, threshold_db: float = -40.0,
                 floor_db: float = -60.0) -> np.ndarray:
    """The span from the first to the last 10 ms frame louder than the loudest frame's level
    plus threshold_db (and floor_db dBFS), padded by one frame; empty when nothing is."""
    frame = sample_rate // 100
    n_frames = -(-len(audio) // frame)
    padded = np.zeros(n_frames * frame, dtype=np.float32)
    padded[:len(audio)] = audio
    level = 10 * np.log10(np.mean(padded.reshape(n_frames, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(level > max(level.max() + threshold_db, floor_db))
    if loud.size == 0:
        return audio[:0]
    return audio[max(0, (loud[0] - 1) * frame):(loud[-1] + 2) * frame]


def colored_noise(rng: np.random.Generator, n: int, color: str) -> np.ndarray:
    """Unit-RMS noise whose power falls as 1/f**0 (white), 1/f (pink) or 1/f**2 (brown)."""
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[color]
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 2 else 1.0
    spectrum /= freqs ** exponent
    spectrum[0] = 0  # no DC: brown noise would otherwise wander off zero
    noise = np.fft.irfft(spectrum, n)
    return (noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)).astype(np.float32)


def _db(level_db: float) -> float:
    return float(10 ** (level_db / 20))


def _to_pcm16(audio: np.ndarray) -> np.ndarray:
    # Quantize here: libsndfile wraps rather than clips float samples beyond +-1.
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


def _speak_to_fit(engine: Engine, text: str, setting: VoiceSetting, sample_rate: int,
                  max_samples: int, *, seed: Sequence[int] = ()) -> np.ndarray:
    """Trimmed speech at sample_rate no longer than max_samples: re-spoken faster if needed,
    truncated with a fade only past _MAX_TEMPO. Engines that sample as they speak get a
    generator from seed, the same for every attempt: a faster take is the same take, faster."""
    tempo = 1.0
    while True:
        rng = np.random.default_rng(list(seed)) if seed else None
        audio, sr = engine.speak(text, setting, tempo=tempo, rng=rng)
        if sr != sample_rate:
            audio = AF.resample(torch.from_numpy(audio), sr, sample_rate).numpy()
        speech = trim_silence(audio, sample_rate)
        if speech.size == 0:
            raise SynthError(f"{engine.name} spoke nothing audible for {text!r} ({setting.describe()})")
        if len(speech) <= max_samples:
            return speech
        if tempo >= _MAX_TEMPO:
            fade = min(len(speech), sample_rate // 50)
            speech = speech[:max_samples].copy()
            speech[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
            return speech
        tempo = min(_MAX_TEMPO, tempo * len(speech) / max_samples * 1.05)


# ----------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Clip:
    index: int
    label: str
    text: str
    speaker: str
    engine: str
    split: str
    path: str
    setting: VoiceSetting | None  # None for _silence_
    noise: str = ""

    @property
    def voice(self) -> str:
        return self.setting.voice if self.setting is not None else ""


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """n shared out by fractions, every non-zero fraction getting at least one when n allows."""
    live = [i for i, f in enumerate(fractions) if f > 0]
    floor = 1 if n >= len(live) else 0
    counts = [max(floor, int(f * n)) if f > 0 else 0 for f in fractions]
    while sum(counts) < n:
        counts[max(live, key=lambda i: fractions[i] * n - counts[i])] += 1
    while sum(counts) > n:
        counts[max((i for i in live if counts[i] > floor), key=lambda i: counts[i] - fractions[i] * n)] -= 1
    return counts


def _shares(total: int, weights: Sequence[float], minimum: int) -> list[int]:
    shares = [minimum] * len(weights)
    for _ in range(total - minimum * len(weights)):
        shares[max(range(len(weights)), key=lambda i: weights[i] * total / sum(weights) - shares[i])] += 1
    return shares


def _plan(config: SynthConfig, engines: Sequence[Engine], vocabulary: Sequence[str]) -> list[_Clip]:
    """Every clip to write, in manifest order, with its speaker, text and split fixed."""
    live = sum(f > 0 for f in config.splits)
    n_speakers = config.speakers if config.speakers is not None else max(config.per_word, live * len(engines))
    if n_speakers < live * len(engines):
        raise SynthError(f"speakers must be at least {live * len(engines)} (one per split per engine)")

    settings: dict[str, VoiceSetting] = {}
    split_speakers: dict[str, list[str]] = {s: [] for s in SPLITS}
    for engine, share in zip(engines, _shares(n_speakers, [e.weight for e in engines], live)):
        # Seeded by engine name, so adding an engine leaves the others' voices alone.
        name_key = int(hashlib.sha1(engine.name.encode()).hexdigest()[:8], 16)
        drawn = engine.voice_settings(np.random.default_rng([config.seed, _VOICES, name_key]), share)
        ids = sorted(dict.fromkeys(s.speaker for s in drawn))  # sorted hashes: a stable shuffle
        settings.update((s.speaker, s) for s in drawn)
        start = 0
        for split, count in zip(SPLITS, _split_counts(len(ids), config.splits)):
            split_speakers[split] += ids[start:start + count]
            start += count

    if config.n_unknown and not vocabulary:
        raise SynthError("no unknown words left after removing the keywords and their homophones")
    # A shuffled pass through the vocabulary, so no word repeats before all have been spoken.
    texts_rng = np.random.default_rng([config.seed, _TEXTS])
    next_word = itertools.cycle([vocabulary[i] for i in texts_rng.permutation(len(vocabulary))])
    labels = [(w, config.per_word) for w in config.words] + [(UNKNOWN, config.n_unknown), (SILENCE, config.n_silence)]

    clips: list[_Clip] = []
    per_file: Counter = Counter()
    for label_index, (label, count) in enumerate(labels):
        rng = np.random.default_rng([config.seed, _PLAN, label_index])
        for split, n_split in zip(SPLITS, _split_counts(count, config.splits)):
            speakers = [split_speakers[split][i] for i in rng.permutation(len(split_speakers[split]))]
            for k in range(n_split):
                index = len(clips)
                if label == SILENCE:
                    noise = _NOISE_KINDS[rng.integers(len(_NOISE_KINDS))]
                    speaker = "noise_" + hashlib.sha1(f"{config.seed}:{index}".encode()).hexdigest()[:8]
                    setting, engine, text = None, "noise", noise
                else:
                    noise, speaker = "", speakers[k % len(speakers)]
                    setting = settings[speaker]
                    engine = setting.engine
                    text = label
                    if label == UNKNOWN:
                        n_words = 2 if rng.random() < _PHRASE_FRACTION else 1
                        text = " ".join(next(next_word) for _ in range(n_words))
                path = f"{label}/{speaker}_{per_file[label, speaker]}.wav"
                per_file[label, speaker] += 1
                clips.append(_Clip(index, label, text, speaker, engine, split, path, setting, noise))
    return clips


def _render(clip: _Clip, config: SynthConfig, engines: dict[str, Engine]) -> np.ndarray:
    """The clip's int16 samples; all randomness from a generator seeded by (seed, clip index)."""
    rng = np.random.default_rng([config.seed, _CLIP, clip.index])
    n = config.clip_samples
    if clip.setting is None:
        if clip.noise == "silence":  # a quiet room, not digital zero
            return _to_pcm16(colored_noise(rng, n, "white") * _db(rng.uniform(-85, -65)))
        return _to_pcm16(colored_noise(rng, n, clip.noise) * _db(rng.uniform(-60, -25)))
    speech = _speak_to_fit(engines[clip.engine], clip.text, clip.setting, config.sample_rate,
                           int(n * _MAX_SPEECH), seed=(config.seed, _SPEECH, clip.index))
    speech = speech * (_db(rng.uniform(-20, -1)) / (np.abs(speech).max() + 1e-9))
    offset = int(rng.integers(0, n - len(speech) + 1))
    # A faint noise floor, so silence around the word is never exact digital zero, a cue real
    # recordings do not have.
    audio = colored_noise(rng, n, "white") * _db(rng.uniform(-80, -60))
    audio[offset:offset + len(speech)] += speech
    return _to_pcm16(audio)


def _write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    sf.write(path, samples, sample_rate, subtype="PCM_16", format="WAV")


def _write_background(out_dir: Path, config: SynthConfig, engines: dict[str, Engine],
                      settings: Sequence[VoiceSetting], vocabulary: Sequence[str], map_: Callable = map) -> None:
    """Long noise files for augmentation; the babble speaks only unknown words, never a keyword,
    with training voices only (it is mixed into training clips). map_ renders its streams."""
    folder = out_dir / BACKGROUND_DIR
    folder.mkdir()
    sr = config.sample_rate
    n = int(_BACKGROUND_SECONDS * sr)
    for i, color in enumerate(("white", "pink", "brown")):
        noise = colored_noise(np.random.default_rng([config.seed, _BACKGROUND, i]), n, color)
        _write_wav(folder / f"{color}_noise.wav", _to_pcm16(noise * _db(-20)), sr)
    if not settings or not vocabulary:
        return
    streams = map_(lambda i: _babble_stream(i, n, config, engines, settings, vocabulary), range(6))
    babble = np.sum(list(streams), axis=0, dtype=np.float32)
    babble *= _db(-20) / (np.sqrt(np.mean(babble ** 2)) + 1e-9)
    _write_wav(folder / "babble.wav", _to_pcm16(babble), sr)


def _babble_stream(index: int, n: int, config: SynthConfig, engines: dict[str, Engine],
                   settings: Sequence[VoiceSetting], vocabulary: Sequence[str]) -> np.ndarray:
    """One voice saying random words for n samples (n,) at unit RMS, from a random start."""
    rng = np.random.default_rng([config.seed, _BACKGROUND, 3, index])
    setting = settings[rng.integers(len(settings))]
    sr, stream = config.sample_rate, np.zeros(0, dtype=np.float32)
    # Ten words a call (3-5 s): a slow engine (kokoro: 0.3 s of CPU per second of speech) then
    # says little past the length; 16 calls at most reach it.
    for _ in range(16):
        text = " ".join(vocabulary[j] for j in rng.integers(len(vocabulary), size=10))
        audio, rate = engines[setting.engine].speak(text, setting, rng=rng)
        audio = AF.resample(torch.from_numpy(audio), rate, sr).numpy() if rate != sr else audio
        stream = np.concatenate([stream, audio])
        if len(stream) >= n:
            break
    stream = np.resize(stream, n)  # repeats the stream if still short
    return np.roll(stream / (np.sqrt(np.mean(stream ** 2)) + 1e-9), rng.integers(n))


# ------------------------------------------------------------------------------- entry points


def synthesize_corpus(config: SynthConfig, out_dir: str | Path, *, jobs: int = ONE_PER_CORE,
                      progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Write the corpus under out_dir (new or empty) and return its manifest.

    jobs: clips rendered at once (0: one per core); threads suffice since the engines run as subprocesses or in
    onnxruntime, which releases the GIL (the neural engines share one session across threads).
    progress: called with the number of clips just written (e.g. rich's `advance`); the total is
    `config.n_clips`.
    """
    if jobs < 0:
        raise SynthError(f"jobs must be at least 0, got {jobs}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SynthError(f"{out_dir} exists and is not an empty directory: choose a new -o")
    engines = available_engines(config.engines)
    words = config.unknown_words if config.unknown_words is not None else read_word_list(DEFAULT_WORDS_FILE)
    vocabulary = filter_unknown_words(words, config.words)
    clips = _plan(config, engines, vocabulary)

    by_name = {e.name: e for e in engines}
    for label in dict.fromkeys(c.label for c in clips):
        (out_dir / label).mkdir(parents=True, exist_ok=True)

    def work(clip: _Clip) -> None:
        _write_wav(out_dir / clip.path, _render(clip, config, by_name), config.sample_rate)

    settings = list({c.speaker: c.setting for c in clips if c.setting is not None}.values())
    split_of = {c.speaker: c.split for c in clips}
    training = [s for s in settings if split_of[s.speaker] == "train"]
    with ThreadPoolExecutor(max_workers=worker_count(jobs)) as pool:
        try:
            for _ in pool.map(work, clips):
                if progress is not None:
                    progress(1)
            _write_background(out_dir, config, by_name, training, vocabulary, pool.map)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # fail now, not after rendering every other clip
            raise
    return _write_tables(out_dir, clips, settings)


def _write_tables(out_dir: Path, clips: Sequence[_Clip], settings: Sequence[VoiceSetting]) -> pd.DataFrame:
    """manifest.csv, one CSV per split and voices.csv; returns the manifest."""
    manifest = pd.DataFrame([[getattr(c, k) for k in COLUMNS] for c in clips], columns=list(COLUMNS))
    manifest.to_csv(out_dir / "manifest.csv", index=False, lineterminator="\n")
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        rows.to_csv(out_dir / f"{split}.csv", index=False, lineterminator="\n")
    split_of = dict(zip(manifest["speaker"], manifest["split"]))
    voices = pd.DataFrame([(s.speaker, s.engine, s.voice, " ".join(f"{k}={v}" for k, v in s.params),
                            split_of[s.speaker]) for s in settings],
                          columns=["speaker", "engine", "voice", "params", "split"])
    voices.to_csv(out_dir / "voices.csv", index=False, lineterminator="\n")
    return manifest


def speaker_notes(manifest: pd.DataFrame) -> list[str]:
    """One line per engine: its voice settings (the speakers splits are drawn by) and the voices
    behind them, saying when a voice is heard in more than one split (all of piper's are)."""
    spoken = manifest[manifest["engine"] != "noise"]
    notes = []
    for engine, rows in spoken.groupby("engine", sort=True):
        splits_per_voice = rows.groupby("voice")["split"].nunique()
        n_voices, shared = len(splits_per_voice), int((splits_per_voice > 1).sum())
        line = f"{engine}: {rows['speaker'].nunique()} voice settings of {n_voices} voice{'s' * (n_voices != 1)}"
        line += f" ({splits_per_voice.index[0]})" if n_voices == 1 else ""
        if shared:
            line += (f", {'it is' if n_voices == 1 else f'{shared} are'} in more than one split: its val/test clips"
                     " are new settings of a voice heard in training, not new speakers")
        notes.append(line)
    return notes


def summarize(manifest: pd.DataFrame) -> pd.DataFrame:
    """Clip counts per (label, engine) row and split column, plus a total column."""
    counts = manifest.groupby(["label", "engine", "split"]).size().unstack("split", fill_value=0)
    counts = counts.reindex(columns=list(SPLITS), fill_value=0)
    counts["total"] = counts.sum(axis=1)
    return counts
