"""kwsbatch.corpus.synth: a small real corpus from espeak-ng (and flite when installed)."""

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from kwsbatch.corpus import synth
from kwsbatch.corpus.engines import ENGINE_TYPES, VoiceSetting, available_engines
from kwsbatch.corpus.engines.espeak import EspeakEngine
from kwsbatch.corpus.synth import (
    COLUMNS,
    SILENCE,
    SPLITS,
    UNKNOWN,
    SynthConfig,
    SynthError,
    colored_noise,
    filter_unknown_words,
    read_word_list,
    summarize,
    synthesize_corpus,
    trim_silence,
)
from kwsbatch.errors import KwsError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng not installed (apt-get install espeak-ng)")

VOCAB = ("cat", "dog", "house", "bird", "happy", "tree", "know", "now", "water", "green")
CONFIG = SynthConfig(words=("yes", "no"), per_word=6, unknown=6, silence=4, unknown_words=VOCAB, seed=3)


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "c"
    return out, synthesize_corpus(CONFIG, out, jobs=1)


@needs_espeak
def test_clips_are_one_second_16k_mono_pcm16(corpus):
    out, manifest = corpus
    assert len(manifest) == CONFIG.n_clips == 2 * 6 + 6 + 4
    for path in manifest["path"]:
        info = sf.info(out / path)
        assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 16000)


@needs_espeak
def test_speech_is_audible_and_silence_is_quiet(corpus):
    out, manifest = corpus
    for row in manifest.itertuples():
        audio, _ = sf.read(out / row.path, dtype="float32")
        peak = np.abs(audio).max()
        if row.label == SILENCE:
            assert peak < 0.5
        else:
            assert peak > 0.05, row.path  # speech peaks are drawn from -20..-1 dBFS
            assert len(trim_silence(audio, 16000)) < 0.95 * 16000


@needs_espeak
def test_manifest_and_split_files(corpus):
    out, manifest = corpus
    assert tuple(manifest.columns) == COLUMNS
    assert set(manifest["label"]) == {"yes", "no", UNKNOWN, SILENCE}
    assert manifest["path"].str.fullmatch(r"[a-z_]+/[a-z-]+_[0-9a-f]{8}_\d+\.wav").all()
    assert (manifest["path"].str.split("/").str[0] == manifest["label"]).all()
    assert (manifest.loc[manifest["label"] == "yes", "text"] == "yes").all()
    assert not manifest.loc[manifest["label"] == UNKNOWN, "text"].str.contains(r"\b(?:yes|no|know|now)\b").any()
    on_disk = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(on_disk, manifest)
    for split in SPLITS:
        rows = pd.read_csv(out / f"{split}.csv", keep_default_na=False)
        pd.testing.assert_frame_equal(rows, manifest[manifest["split"] == split].reset_index(drop=True))
    for name in ("white_noise", "pink_noise", "brown_noise", "babble"):
        assert sf.info(out / "_background_noise_" / f"{name}.wav").duration >= 10
    voices = pd.read_csv(out / "voices.csv")
    spoken = manifest[manifest["engine"] != "noise"]
    assert set(voices["speaker"]) == set(spoken["speaker"])
    assert dict(zip(voices["speaker"], voices["voice"])) == dict(zip(spoken["speaker"], spoken["voice"]))
    assert (manifest.loc[manifest["engine"] == "noise", "voice"] == "").all()


@needs_espeak
def test_splits_are_disjoint_by_speaker_and_hold_every_class(corpus):
    _, manifest = corpus
    assert (manifest.groupby("speaker")["split"].nunique() == 1).all()
    for split in SPLITS:
        assert set(manifest.loc[manifest["split"] == split, "label"]) == {"yes", "no", UNKNOWN, SILENCE}
    counts = summarize(manifest)
    assert list(counts.columns) == [*SPLITS, "total"]
    assert counts["total"].sum() == len(manifest)


@needs_espeak
def test_same_seed_gives_identical_bytes_whatever_jobs(corpus, tmp_path):
    out, manifest = corpus
    again = synthesize_corpus(CONFIG, tmp_path / "again", jobs=1)
    synthesize_corpus(CONFIG, tmp_path / "parallel", jobs=2)
    pd.testing.assert_frame_equal(again, manifest)
    assert _digests(tmp_path / "again") == _digests(out)
    assert _digests(tmp_path / "parallel") == _digests(out)


@needs_espeak
def test_another_seed_gives_other_voices(corpus, tmp_path):
    _, manifest = corpus
    config = SynthConfig(words=("yes",), per_word=3, unknown=0, silence=0, unknown_words=VOCAB, seed=4)
    other = synthesize_corpus(config, tmp_path / "other")
    assert not set(other["speaker"]) & set(manifest["speaker"])


@needs_espeak
def test_homophones_of_keywords_are_not_unknown_words():
    kept = filter_unknown_words(["know", "now", "cat", "no", "meat", "write", "rite", "of"],
                                ["no", "right", "meet", "off"])
    assert kept == ("cat",)  # know: same phonemes as no; meat: as meet (no table entry)


@needs_espeak
def test_bundled_vocabulary_is_large_and_plain():
    words = read_word_list(synth.DEFAULT_WORDS_FILE)
    assert len(words) >= 3000
    assert all(w.isalpha() and w.islower() and 2 <= len(w) <= 10 for w in words)


def test_read_word_list_keeps_plain_lowercase_words(tmp_path):
    path = tmp_path / "words"
    path.write_text("# comment\nAachen\nabbot's\ncat\ndog\ncat\nx\nsupercalifragilistic\n")
    assert read_word_list(path) == ("cat", "dog")
    path.write_text("Bob\n")
    with pytest.raises(SynthError, match="no plain lowercase words"):
        read_word_list(path)


@needs_espeak
def test_long_speech_is_sped_up_to_fit():
    engine = EspeakEngine()
    setting = VoiceSetting(engine.name, "gmw/en-US", (("rate", 130), ("pitch", 50), ("range", 100),
                                                             ("amplitude", 100)))
    speech = synth._speak_to_fit(engine, "internationalization department", setting, 16000, 14400)
    assert 8000 < len(speech) <= 14400


@pytest.mark.parametrize("config, message", [
    (dict(words=()), "no keywords given"),
    (dict(words=("yes", "yes")), "keywords repeat"),
    (dict(words=("two words",)), "not a single English word"),
    (dict(words=("yes",), per_word=0), "per_word must be at least 1"),
    (dict(words=("yes",), splits=(0.5, 0.1, 0.1)), "splits must be"),
])
def test_bad_config_is_one_line_error(config, message):
    with pytest.raises(KwsError, match=message) as error:
        SynthConfig(**config)
    assert "\n" not in str(error.value)


def test_missing_espeak_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SynthError, match=r"espeak-ng not found: install it with `apt-get install espeak-ng`"):
        synthesize_corpus(SynthConfig(words=("yes",)), tmp_path / "c")


def test_refuses_a_non_empty_output_directory(tmp_path):
    (tmp_path / "old.wav").write_bytes(b"")
    with pytest.raises(SynthError, match="not an empty directory"):
        synthesize_corpus(SynthConfig(words=("yes",)), tmp_path)


def test_trim_silence_keeps_the_loud_span_plus_one_frame():
    audio = np.zeros(16000, dtype=np.float32)
    audio[4000:8000] = 0.5
    assert len(trim_silence(audio, 16000)) == 4000 + 2 * 160
    assert trim_silence(np.zeros(1600, dtype=np.float32), 16000).size == 0


def test_colored_noise_is_unit_rms_with_falling_spectrum():
    rng = np.random.default_rng(0)
    slopes = {}
    for color in ("white", "pink", "brown"):
        noise = colored_noise(rng, 32000, color)
        assert np.sqrt(np.mean(noise ** 2)) == pytest.approx(1, rel=1e-4)
        power = np.abs(np.fft.rfft(noise)) ** 2
        slopes[color] = power[10:400].mean() / power[8000:16000].mean()
    assert slopes["white"] < 2 < slopes["pink"] < slopes["brown"]


@pytest.mark.parametrize("n, expected", [(1, [1, 0, 0]), (3, [1, 1, 1]), (10, [8, 1, 1]), (25, [20, 3, 2])])
def test_split_counts_give_every_split_one_when_possible(n, expected):
    assert synth._split_counts(n, (0.8, 0.1, 0.1)) == expected


# One test per engine: skipped, saying what to install, where its program is absent.
ENGINE_PROGRAMS = {
    "espeak-ng": ("espeak-ng", "apt-get install espeak-ng"),
    "flite": ("flite", "apt-get install flite"),
    "festival": ("text2wave", "apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"),
}


@pytest.mark.parametrize("name", ENGINE_PROGRAMS)
def test_engine_speaks_each_voice_audibly_and_differently(name):
    program, install = ENGINE_PROGRAMS[name]
    if shutil.which(program) is None or shutil.which("espeak-ng") is None:
        pytest.skip(f"{program} not installed ({install})")
    engine = ENGINE_TYPES[name]()
    settings = engine.voice_settings(np.random.default_rng(0), 2 * len(engine.voices))
    assert {s.voice.split("+")[0] for s in settings} == set(engine.voices)  # every voice is used
    assert len({s.speaker for s in settings}) > len(engine.voices)  # more than one setting per voice
    spoken = []
    for setting in settings[:4]:
        audio, rate = engine.speak("yes", setting)
        assert rate >= 8000 and audio.dtype == np.float32
        speech = trim_silence(audio, rate)
        assert 0.1 * rate < len(speech) < 1.5 * rate, setting.describe()
        assert np.abs(speech).max() > 0.05
        spoken.append(audio)
    assert len({a.tobytes() for a in spoken}) == len(spoken)
    slow, _ = engine.speak("yesterday afternoon", settings[0])
    fast, _ = engine.speak("yesterday afternoon", settings[0], tempo=1.8)
    assert len(trim_silence(fast, rate)) < 0.8 * len(trim_silence(slow, rate))


@pytest.mark.skipif(shutil.which("text2wave") is None or shutil.which("espeak-ng") is None,
                    reason="festival not installed (apt-get install festival festvox-kallpc16k)")
def test_festival_is_a_default_engine_and_makes_a_corpus(tmp_path):
    festival = next(e for e in available_engines() if e.name == "festival")  # a default engine
    config = SynthConfig(words=("no",), per_word=3, unknown=3, silence=0, unknown_words=VOCAB, engines=("festival",), seed=1)
    manifest = synthesize_corpus(config, tmp_path / "c")
    assert set(manifest["engine"]) == {"festival"}
    voices = pd.read_csv(tmp_path / "c" / "voices.csv")
    assert voices["voice"].isin(festival.voices).all()
    for path in manifest["path"]:
        assert sf.info(tmp_path / "c" / path).frames == 16000
