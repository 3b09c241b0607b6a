"""Training's settings: TrainConfig, and the names augmentation offers (presets, room models, codecs).

No torch here, so that `kwsbatch train --help` shows them at once; loop.py and train/augment/ use them.
"""

from __future__ import annotations

from dataclasses import dataclass

from kwsbatch.settings import SettingError, check_settings, jobs_setting, setting

# "sample": draw each epoch's clips with probability 1 / (its class's count), so every class is
# seen equally often; "weight": weight the loss by that instead; "none": as the manifest has them.
BALANCES = ("none", "sample", "weight")

AUGMENT_PRESETS = ("none", "light", "standard", "strong", "realistic")
ROOM_MODELS = ("shoebox", "exponential")  # --rooms: pyroomacoustics' image sources, or decaying noise
DEFAULT_ROOMS = "shoebox"
# --codecs: name -> (container, libsndfile subtype, the rate it is coded at: None for the clip's own)
CODECS = {
    "mulaw": ("WAV", "ULAW", None),  # 8-bit G.711 companding
    "alaw": ("WAV", "ALAW", None),
    "gsm": ("WAV", "GSM610", 8000),  # full-rate GSM is a narrowband (8 kHz) codec
    "vorbis": ("OGG", "VORBIS", None),
    "opus": ("OGG", "OPUS", None),
    "mp3": ("MP3", "MPEG_LAYER_III", None),
}
DEFAULT_CODECS = "mulaw,gsm,vorbis,mp3"


@dataclass(frozen=True)
class TrainConfig:
    """How to train; the model's shape is an ArchitectureConfig, its features a FeatureConfig."""

    epochs: int = setting(30, "passes over the training clips", at_least=1)
    batch_size: int = setting(64, "clips per optimizer batch", at_least=1)
    lr: float = setting(1e-3, "Adam's learning rate (the notebook's; 0 moves no weight)", at_least=0)
    weight_decay: float = setting(0.0, "Adam's weight decay", at_least=0)
    lr_step: int = setting(10, "epochs between learning-rate decays (the notebook halves every 5)", at_least=1)
    lr_gamma: float = setting(0.5, "factor applied to the learning rate at each decay", above=0)
    accumulate: int = setting(1, "batches per optimizer step (gradient accumulation)", at_least=1)
    seed: int = setting(0, "seeds the initial weights, the shuffling, dropout and augmentation")
    val_fraction: float = setting(0.1, "share of the train manifest held out when no validation manifest is given", above=0, below=1)
    patience: int = setting(0, "early stop after N epochs without a better validation accuracy (0: never)", at_least=0)
    jobs: int = jobs_setting()
    balance: str = setting("none", "class-balanced sampling or loss weights", choices=BALANCES)
    length_groups: int = setting(16, "sort each run of N batches' clips by length, so a batch pads less (0: batches as drawn)",
                                 at_least=0)
    finetune: str | None = setting(None, "start from this checkpoint and train only its classifier (default: none, train from scratch)",
                                   metavar="CKPT")
    init: str | None = setting(None, "start from this checkpoint and train every layer; its model and feature settings win over "
                               "the flags, --dropout aside (default: none, train from scratch)", metavar="CKPT")

    def __post_init__(self):
        check_settings(self)
        if self.finetune and self.init:
            raise SettingError("init", "start from one checkpoint: --finetune (the classifier) or --init (every layer), not both")
