"""allocator.py: with glibc tuned, a batch's tensors reuse freed memory instead of faulting fresh pages in."""

import subprocess
import sys

import pytest
from conftest import REPO

# A training batch's waveform augmentation, as a loader worker runs it, in a fresh process (a fresh
# malloc): the page faults it takes per batch once warm.
FAULTS_PER_BATCH = """
import resource, sys, torch
from dataclasses import replace
from kwsbatch.allocator import keep_freed_memory
from kwsbatch.train.augment import AugmentConfig
if sys.argv[1] == "tuned" and not keep_freed_memory():
    sys.exit("not glibc")
torch.set_num_threads(1)
config = AugmentConfig.preset("standard")
augmentation = replace(config, noise=(0.0, *config.noise[1:])).build(sample_rate=16000)
generator = torch.Generator().manual_seed(0)
lengths = torch.randint(8000, 24000, (64,), generator=generator)
batch = torch.randn(64, int(lengths.max()), generator=generator) * 0.1
for _ in range(3):
    augmentation.waveform(batch, lengths, generator)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    augmentation.waveform(batch, lengths, generator)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def faults_per_batch(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_BATCH, mode], cwd=REPO, capture_output=True, text=True, timeout=300)
    if done.stderr.strip().endswith("not glibc"):
        pytest.skip("not glibc: malloc is not tuned there")
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_a_tuned_malloc_reuses_the_memory_of_the_batch_before():
    tuned, default = faults_per_batch("tuned"), faults_per_batch("default")
    # Untuned, each batch faults in thousands of pages (its megabyte-sized tensors mapped afresh).
    assert default > 1000
    assert tuned < default / 5
