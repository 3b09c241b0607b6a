"""Training through the real CLI: augmentation flags, class balance, --resume, --finetune and batches of like length."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_main

from kwsbatch.model.checkpoint import checkpoint_id, load_checkpoint

TINY = ("--epochs", "1", "--batch-size", "8", "--hidden", "16", "--layers", "1", "--val-fraction", "0.25")


def tiny_train(corpus: Path, out: Path, *extra: str, epochs: int = 1, check: bool = True):
    args = ["train", corpus / "train.csv", "-o", out, *TINY, *extra]
    args[args.index("--epochs") + 1] = str(epochs)
    return run_main(*args, check=check)


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    sf.write(folder / "hum.wav", (0.1 * np.sin(np.arange(32000) / 7) + 0.01 * rng.standard_normal(32000)).astype(np.float32), 16000)
    return folder


def subset_manifest(corpus: Path, words: set[str], out: Path) -> Path:
    """The corpus's train rows for some words, with absolute paths, at out."""
    with open(corpus / "train.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] in words]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "path": str(corpus / row["path"])})
    return out


def test_augmentation_preset_with_overrides_is_used_and_recorded(speech_corpus, tmp_path):
    result = tiny_train(speech_corpus, tmp_path / "run", "--augment", "standard", "--speed", "1,0.8", "--time-mask", "0", "--balance", "weight")
    assert result.returncode == 0, result.stderr
    # The speech corpus has no _background_noise_ folder: the run says so and goes on without noise.
    assert "background noise is off (pass --noise-dir)" in result.stderr
    assert "augmentation: Augmentation(waveform=Compose([PlaySpeed(p=1.0, min_rate=0.8, max_rate=1.1)" in result.stderr
    assert "TimeMask" not in result.stderr and "FreqMask(p=0.5" in result.stderr
    provenance = load_checkpoint(tmp_path / "run" / "best.pt").provenance
    assert tuple(provenance["augment_config"]["speed"]) == (1.0, 0.8, 1.1)
    assert tuple(provenance["augment_config"]["time_mask"]) == (0.0, 10.0, 1.0)
    assert provenance["noise_files"] == [] and provenance["train_config"]["balance"] == "weight"


def test_background_noise_comes_from_noise_dir(speech_corpus, noise_dir, tmp_path):
    result = tiny_train(speech_corpus, tmp_path / "run", "--noise", "1,0,10", "--noise-dir", noise_dir)
    assert result.returncode == 0, result.stderr
    assert "BackgroundNoise(p=1.0, min_snr_db=0.0, max_snr_db=10.0, noise_samples=32000)" in result.stderr
    provenance = load_checkpoint(tmp_path / "run" / "best.pt").provenance
    assert provenance["noise_files"] == ["hum.wav"] and provenance["augment_config"]["noise_dir"] == noise_dir.name

    missing = tiny_train(speech_corpus, tmp_path / "run2", "--noise", "1", "--noise-dir", tmp_path / "nowhere", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'nowhere'}: no readable audio files (or _silence_ rows) for background noise (--noise-dir)"
    )


def test_realistic_preset_with_real_noise_from_a_manifest(speech_corpus, noise_dir, tmp_path):
    # Only _silence_ rows are noise: the keyword row (not even audio) is never read.
    (tmp_path / "noise.csv").write_text(f"path,label\n{noise_dir / 'hum.wav'},_silence_\n{speech_corpus / 'train.csv'},yes\n")
    result = tiny_train(
        speech_corpus, tmp_path / "run", "--augment", "realistic", "--rooms", "exponential", "--codecs", "mulaw,gsm",
        "--noise-dir", tmp_path / "noise.csv", "--telephone", "0.5", "--reverb", "0.2", "--codec", "0.1",
    )
    assert result.returncode == 0, result.stderr
    for shown in (
        "PitchShift(p=0.3, min_semitones=-3.0, max_semitones=3.0)",
        "RoomReverb(p=0.2, min_rt60=0.2, max_rt60=0.6, model='exponential', n_rirs=32, sample_rate=16000, seed=0)",
        "Telephone(p=0.5, sample_rate=16000)",
        "BackgroundNoise(p=0.5, min_snr_db=5.0, max_snr_db=25.0, noise_samples=32000)",
        "CodecRoundTrip(p=0.1, min_level=0.5, max_level=1.0, codecs=('mulaw', 'gsm'), sample_rate=16000)",
    ):
        assert shown in result.stderr
    provenance = load_checkpoint(tmp_path / "run" / "best.pt").provenance
    assert provenance["noise_files"] == [str(noise_dir / "hum.wav")]
    assert provenance["augment_config"]["rooms"] == "exponential" and tuple(provenance["augment_config"]["telephone"]) == (0.5,)


@pytest.mark.parametrize(
    "flags, status, message",
    [
        (("--speed", "1,2,1"), 2, "argument --speed: PlaySpeed: need 0.25 <= min_rate <= max_rate <= 4, got 2.0, 1.0"),
        (("--amplify", "1,2,3,4"), 2, "argument --amplify: takes at most 3 numbers, got 4"),
        (("--time-mask", "0.5,2.5"), 2, "argument --time-mask: TimeMask: frame and coefficient counts must be whole numbers, got 2.5"),
        (("--conv-stride", "0"), 2, "argument --conv-stride: must be at least 1, got 0"),
        (("--time-shift", "a,b"), 2, "argument --time-shift: expected comma-separated numbers, got 'a,b'"),
        (("--augment", "wild"), 2, "argument --augment: invalid choice: 'wild'"),
        (("--reverb", "1,0.6,0.2"), 2, "argument --reverb: RoomReverb: need 0.1 <= min_rt60 <= max_rt60 <= 2, got 0.6, 0.2"),
        (("--codecs", "mulaw,flac"), 2, "argument --codecs: codecs must be a comma-separated list of mulaw, alaw, gsm, vorbis, opus, mp3, got 'mulaw,flac'"),
        (("--band-limit", "0.5,400,50"), 2, "argument --band-limit: BandLimit: need 10 <= min_highpass <= max_highpass <= 2000, got 400.0, 50.0"),
    ],
)
def test_bad_training_settings_are_one_line_errors(speech_corpus, tmp_path, flags, status, message):
    result = tiny_train(speech_corpus, tmp_path / "run", *flags, check=False)
    assert result.returncode == status
    assert message in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


RESUMABLE = ("--augment", "strong", "--noise", "0.8", "--balance", "sample", "--conv-channels", "8", "--clip-norm", "mean", "-q")


@pytest.mark.slow
def test_resume_continues_exactly_with_augmentation(speech_corpus, noise_dir, tmp_path):
    flags = (*RESUMABLE, "--noise-dir", str(noise_dir))
    tiny_train(speech_corpus, tmp_path / "straight", *flags, epochs=3)
    tiny_train(speech_corpus, tmp_path / "resumed", *flags, epochs=1)
    tiny_train(speech_corpus, tmp_path / "resumed", *flags, "--resume", epochs=3)
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert straight.state_dict.keys() == resumed.state_dict.keys()
    for key, value in straight.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key
    drop_seconds = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    assert drop_seconds(straight.training_state["history"]) == drop_seconds(resumed.training_state["history"])
    assert load_checkpoint(tmp_path / "straight" / "best.pt").temperature == load_checkpoint(tmp_path / "resumed" / "best.pt").temperature


def test_resume_with_other_model_settings_is_refused(speech_corpus, tmp_path):
    tiny_train(speech_corpus, tmp_path / "run", "-q")
    result = tiny_train(speech_corpus, tmp_path / "run", "--hidden", "24", "--resume", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'run' / 'last.pt'}: was trained with other model settings: hidden 16 (now 24); resume with the run's own flags"
    )


@pytest.mark.slow
def test_finetune_trains_only_the_classifier_and_says_what_it_kept(speech_corpus, trained_model, tmp_path):
    manifest = subset_manifest(speech_corpus, {"yes", "no", "up"}, tmp_path / "three.csv")
    # A high learning rate, weight decay and dropout flags would all move any weight the optimizer held.
    result = run_main(
        "train", manifest, "-o", tmp_path / "ft", "--finetune", trained_model, "--epochs", "2", "--batch-size", "8",
        "--lr", "0.05", "--weight-decay", "0.1", "--val-fraction", "0.25",
    )
    assert result.returncode == 0, result.stderr
    base = load_checkpoint(trained_model)
    assert (
        f"starting from {trained_model} (model {checkpoint_id(base)}), training only the classifier: "
        "classifier rows kept for 3 (no, up, yes), new for none, dropped for 1 (down)"
    ) in result.stderr.replace("\n", "")
    tuned = load_checkpoint(tmp_path / "ft" / "last.pt")
    assert tuned.classes == ("no", "up", "yes")
    assert tuned.model_config.hidden == 32 and tuned.feature_config == base.feature_config
    for key, value in base.state_dict.items():
        if not key.startswith("head.classifier."):
            assert torch.equal(value, tuned.state_dict[key]), f"{key} changed while frozen"
    assert tuned.state_dict["head.classifier.weight"].shape == (3, 32)


def test_finetune_on_the_same_classes_starts_from_the_whole_model(speech_corpus, trained_model, tmp_path):
    result = run_main(
        "train", speech_corpus / "train.csv", "-o", tmp_path / "ft", "--finetune", trained_model,
        "--epochs", "1", "--batch-size", "8", "--lr", "0.05", "--val-fraction", "0.25",
    )
    assert result.returncode == 0, result.stderr
    base, tuned = load_checkpoint(trained_model), load_checkpoint(tmp_path / "ft" / "last.pt")
    assert f"model {checkpoint_id(base)}), training only the classifier: classifier rows kept for 4" in result.stderr.replace("\n", "")
    # The checkpoint started from is named by what it computes, never located by a path.
    assert tuned.provenance["train_config"]["finetune"] == checkpoint_id(base)
    assert tuned.provenance["started_from"]["model_id"] == checkpoint_id(base)
    assert torch.equal(base.state_dict["head.lstm.weight_hh_l1"], tuned.state_dict["head.lstm.weight_hh_l1"])
    assert not torch.equal(base.state_dict["head.classifier.weight"], tuned.state_dict["head.classifier.weight"])


def test_an_earlier_run_is_never_trained_over_without_resume_or_force(speech_corpus, tmp_path):
    run = tmp_path / "run"
    tiny_train(speech_corpus, run, "-q")
    earlier = {name: (run / name).read_bytes() for name in ("best.pt", "last.pt", "history.csv")}
    again = tiny_train(speech_corpus, run, "--seed", "1", check=False)
    assert again.returncode == 1
    assert again.stderr == (
        f"error: {run}: run folder is not empty (best.pt, history.csv, last.pt); pass --resume to continue the run in it, "
        "or --force to start over (replacing its best.pt, last.pt and history.csv)\n"
    )
    assert {name: (run / name).read_bytes() for name in earlier} == earlier
    assert tiny_train(speech_corpus, run, "--resume", "--force", check=False).returncode == 2  # one or the other
    # --force replaces the run; a file of the user's in the folder stays.
    (run / "notes.txt").write_text("seed 0 was better\n")
    tiny_train(speech_corpus, run, "--seed", "1", "--force", "-q")
    assert all((run / name).read_bytes() != earlier[name] for name in ("best.pt", "last.pt"))
    assert (run / "notes.txt").read_text() == "seed 0 was better\n"
    # Any folder that holds something is refused, run or not.
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("")
    refused = tiny_train(speech_corpus, other, check=False)
    assert refused.returncode == 1 and f"error: {other}: run folder is not empty (a.txt); pass --resume" in refused.stderr


def test_finetune_from_a_missing_checkpoint_is_an_error(speech_corpus, tmp_path):
    result = tiny_train(speech_corpus, tmp_path / "run", "--finetune", tmp_path / "none.pt", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none.pt'}: model file not found"


@pytest.mark.slow
def test_one_or_two_loader_workers_train_the_same_model(speech_corpus, noise_dir, tmp_path):
    """Workers prepare and augment the batches, each batch from its own seeded generator: how many there are changes nothing."""
    flags = (*RESUMABLE, "--noise-dir", str(noise_dir))
    tiny_train(speech_corpus, tmp_path / "one", *flags, "-j", "1", epochs=2)
    tiny_train(speech_corpus, tmp_path / "two", *flags, "-j", "2", epochs=2)
    one, two = (load_checkpoint(tmp_path / run / "last.pt") for run in ("one", "two"))
    for key, value in one.state_dict.items():
        assert torch.equal(value, two.state_dict[key]), key
    drop_seconds = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    assert drop_seconds(one.training_state["history"]) == drop_seconds(two.training_state["history"])


def trimmed_corpus(corpus: Path, out: Path) -> Path:
    """The corpus's train clips cut to 0.4-1 s (every clip its own length), as out/train.csv."""
    out.mkdir()
    rng = np.random.default_rng(0)
    with open(corpus / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        audio, rate = sf.read(corpus / row["path"], dtype="float32")
        row["path"] = f"clip{i:03d}.wav"
        sf.write(out / row["path"], audio[: int(rng.integers(6_400, 16_000))], rate)
    with open(out / "train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def trained_weights(run: Path) -> dict:
    return load_checkpoint(run / "last.pt").state_dict


def same_weights(one: dict, two: dict) -> bool:
    return all(torch.equal(value, two[key]) for key, value in one.items())


def test_length_groups_batch_mixed_lengths_alike_and_leave_equal_lengths_as_drawn(speech_corpus, tmp_path):
    """Grouping by length changes a mixed corpus's batches, the same way each run; a corpus of
    equal-length clips (as the bundled model's) trains exactly as with random batches."""
    mixed = trimmed_corpus(speech_corpus, tmp_path / "mixed")
    runs = {"mixed-grouped": (mixed, "2"), "mixed-again": (mixed, "2"), "mixed-drawn": (mixed, "0"),
            "equal-grouped": (speech_corpus, "2"), "equal-drawn": (speech_corpus, "0")}
    for name, (corpus, groups) in runs.items():
        tiny_train(corpus, tmp_path / name, "--length-groups", groups, "--batch-size", "4", "--augment", "none", "-q")
    weights = {name: trained_weights(tmp_path / name) for name in runs}
    assert same_weights(weights["mixed-grouped"], weights["mixed-again"])
    assert not same_weights(weights["mixed-grouped"], weights["mixed-drawn"])
    assert same_weights(weights["equal-grouped"], weights["equal-drawn"])
