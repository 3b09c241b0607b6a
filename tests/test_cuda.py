"""On a CUDA device: the same features, probabilities, labels and training as on the CPU.

Skipped where no GPU is present (CI); run them on a GPU machine with `bin/test tests/test_cuda.py`.
"""

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_cli
from test_cli import TINY, assert_same_weights, read_csv

from kwsbatch.model.checkpoint import default_model_path, load_checkpoint
from kwsbatch.model.config import FeatureConfig
from kwsbatch.model.features import MfccFrontend
from kwsbatch.model.scorer import Scorer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SAMPLES = default_model_path().parent / "samples"


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    """The bundled sample clips (WAV, FLAC, OGG; 16 kHz mono) as waveforms."""
    return [torch.from_numpy(sf.read(p, dtype="float32")[0]) for p in sorted(SAMPLES.iterdir())]


def test_mfcc_on_cuda_matches_the_cpu(clips):
    frontend = MfccFrontend(FeatureConfig(clip_norm="none"))
    rng = np.random.default_rng(0)
    # Clips of different lengths in one batch, with a little noise so no frame is digital silence
    # (the log of a zero spectrum is where float rounding on two devices can differ most).
    waves = [c[: int(len(c) * rng.uniform(0.4, 1.0))] + 0.001 * torch.randn(1) for c in clips]
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    lengths = torch.tensor([len(w) for w in waves])
    on_cpu, frames = frontend.raw(batch, lengths)
    on_cuda, cuda_frames = frontend.to("cuda").raw(batch.cuda(), lengths.cuda())
    assert on_cuda.device.type == "cuda"
    assert torch.equal(frames, cuda_frames)
    for i, n in enumerate(frames.tolist()):
        torch.testing.assert_close(on_cuda[i, :n].cpu(), on_cpu[i, :n], rtol=1e-4, atol=2e-3)


def test_the_default_model_gives_the_same_probabilities_on_cuda(clips):
    checkpoint = load_checkpoint(default_model_path())
    on_cpu = Scorer(checkpoint, device="cpu").probabilities(clips)
    scorer = Scorer(checkpoint, device="cuda")
    assert next(scorer.spotter.parameters()).device.type == "cuda"
    on_cuda = scorer.probabilities(clips)
    np.testing.assert_allclose(on_cuda, on_cpu, atol=1e-4)
    assert (on_cuda.argmax(1) == on_cpu.argmax(1)).all()


def test_on_cuda_a_clips_probabilities_do_not_depend_on_its_batch(clips):
    """As on the CPU (test_features.py): in TF32, confidences moved by 1.6e-4 between batches."""
    scorer = Scorer(load_checkpoint(default_model_path()), device="cuda")
    together = scorer.probabilities(clips)
    alone = np.concatenate([scorer.probabilities([clip]) for clip in clips])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scorer.probabilities(clips[::-1])[::-1], alone, rtol=0, atol=1e-5)


def test_label_with_device_cuda_writes_the_rows_cpu_writes(tmp_path):
    rows = {}
    for device in ("cpu", "cuda"):
        result = run_cli("label", SAMPLES, "--device", device, "-o", tmp_path / f"{device}.csv", "-q", check=True)
        assert result.stdout == ""
        rows[device] = read_csv(tmp_path / f"{device}.csv")
    assert len(rows["cuda"]) == len(list(SAMPLES.iterdir()))
    for cpu, cuda in zip(rows["cpu"], rows["cuda"]):
        assert (cuda["path"], cuda["label"], cuda["error"]) == (cpu["path"], cpu["label"], "")
        assert abs(float(cuda["confidence"]) - float(cpu["confidence"])) < 1e-4


def test_training_on_cuda_is_reproducible_and_resumable(speech_corpus, tmp_path):
    train = speech_corpus / "train.csv"
    for name in ("a", "b"):
        run_cli("train", train, "-o", tmp_path / name, "--epochs", "4", "--device", "cuda", *TINY, "-q", check=True)
    assert_same_weights(tmp_path / "a" / "last.pt", tmp_path / "b" / "last.pt")
    run_cli("train", train, "-o", tmp_path / "resumed", "--epochs", "2", "--device", "cuda", *TINY, "-q", check=True)
    run_cli("train", train, "-o", tmp_path / "resumed", "--epochs", "4", "--device", "cuda", "--resume", *TINY, "-q", check=True)
    assert_same_weights(tmp_path / "resumed" / "last.pt", tmp_path / "a" / "last.pt")
    # A model trained on the GPU is saved on the CPU: it labels on a machine with no GPU.
    state = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["state_dict"]
    assert all(t.device.type == "cpu" for t in state.values())
    shutil.rmtree(tmp_path / "b")
    result = run_cli("label", speech_corpus / "test.csv", "--model", tmp_path / "a" / "best.pt", "--device", "cpu", "-q", check=True)
    assert len(read_csv(result.stdout)) == 12


def test_an_augmented_training_step_never_waits_for_the_gpu():
    # test_augment checks this on the meta device; here CUDA's own sync check has the last word.
    from test_augment import ON_DEVICE

    from kwsbatch.model.spotter import KeywordSpotter
    from kwsbatch.train.batches import Prepared
    from kwsbatch.train.loop import _train_logits

    checkpoint = load_checkpoint(default_model_path())
    spotter = KeywordSpotter(checkpoint.feature_config, checkpoint.model_config).cuda().train()
    augmentation = ON_DEVICE.build(sample_rate=16000, noise=torch.randn(20000))
    lengths = torch.tensor([16000, 12000, 8000, 400, 0, 16000])
    waves = (torch.randn(len(lengths), 16000) * (torch.arange(16000) < lengths[:, None])).pin_memory()
    targets = torch.zeros(len(lengths), dtype=torch.long, device="cuda")

    def step(seed):
        logits = _train_logits(spotter, Prepared((waves, lengths), False), augmentation, torch.Generator().manual_seed(seed), torch.device("cuda"))
        torch.nn.functional.cross_entropy(logits, targets).backward()

    step(0)  # the room bank and the noise copied to the GPU once, kernels chosen
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for seed in range(1, 4):
            step(seed)
    finally:
        torch.cuda.set_sync_debug_mode("default")
