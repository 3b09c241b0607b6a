"""The tools' settings: what `kwsbatch bench` measures, and the formats `kwsbatch export` writes.

No torch here, so that their --help shows the defaults at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from kwsbatch.label.config import LabelConfig
from kwsbatch.settings import check_settings, setting

EXPORT_FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17


@dataclass(frozen=True)
class BenchConfig:
    """What `kwsbatch bench` measures; device, batch_size and jobs are label's, with label's defaults."""

    files: int = setting(2000, "clips to make and label (0.5-1.5 s, WAV and FLAC, some stereo 44.1 kHz)", at_least=1)
    device: str = "auto"
    batch_size: int = LabelConfig.batch_size
    jobs: int = setting(0, "the most loader workers the scaling table goes up to (0: one per core)", at_least=0)
    single_files: int | None = setting(None, "clips for the whole-process run beside the notebook's pipeline (default: all of them)", at_least=1)
    train_files: int = setting(1000, "clips for the training epoch beside the notebook's batch-1 epoch (0: none)", at_least=0)
    seed: int = setting(0, "seeds the clips' lengths, tones and formats")

    def __post_init__(self):
        check_settings(self)
        LabelConfig(batch_size=self.batch_size, jobs=self.jobs)  # label's limits
