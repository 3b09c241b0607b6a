"""The notebook's way of labelling, as a script: the baseline `kwsbatch bench` compares whole processes against.

Each file is decoded, mixed to mono, resampled (torchaudio), featurised and scored alone, a batch
of one, and its label written as soon as it is known:

    python -m kwsbatch.tools.notebook MANIFEST MODEL OUT.csv [DEVICE]

MANIFEST is a CSV with a path column. One torch thread, as `label` computes: a batch of one is
too small for a thread pool to help. It prints its peak RSS to standard error, as `label` does.
"""

from __future__ import annotations

import csv
import sys

import soundfile as sf
import torch
import torchaudio

from kwsbatch.label.job import peak_rss
from kwsbatch.model.checkpoint import load_checkpoint
from kwsbatch.model.device import resolve_device


def main(argv: list[str]) -> int:
    manifest, model, out, *device = argv
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(model)
    spotter = checkpoint.build(resolve_device(device[0] if device else "auto"))
    rate, n_fft = checkpoint.feature_config.sample_rate, checkpoint.feature_config.n_fft
    with open(manifest, newline="", encoding="utf-8") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    with open(out, "w", newline="", encoding="utf-8") as f, torch.inference_mode():
        writer = csv.writer(f)
        writer.writerow(["path", "label", "confidence"])
        for path in paths:
            samples, sample_rate = sf.read(path, dtype="float32", always_2d=True)
            wave = torch.from_numpy(samples.mean(axis=1))
            if sample_rate != rate:
                wave = torchaudio.functional.resample(wave, sample_rate, rate)
            wave = torch.nn.functional.pad(wave, (0, max(0, n_fft - len(wave))))
            logits = spotter(wave[None].to(spotter.frontend.mean.device), torch.tensor([len(wave)]))
            p = torch.softmax(logits / checkpoint.temperature, dim=1)[0]
            writer.writerow([path, checkpoint.classes[int(p.argmax())], f"{float(p.max()):.6f}"])
    print(f"labelled {len(paths):,} files one at a time, peak RSS {peak_rss() / 2**20:,.0f} MiB -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
