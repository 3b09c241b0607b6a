"""Training-time augmentation of whole padded batches, on the model's device.

Waveform transforms take and return a zero-padded ``(batch, samples)`` tensor plus ``(batch,)``
sample lengths, and keep every sample past a clip's length at zero, so the MFCC front end's
batch invariance still holds. Feature transforms (SpecAugment-style masks) take
``(batch, frames, n_features)`` plus frame lengths and only touch valid frames.

Each transform draws its per-clip parameters in ``randomize_parameters`` from an explicit
``torch.Generator`` on the CPU (so a seed gives the same draws on any device), always the same
number of draws per batch whatever comes out, and ``apply`` is deterministic given them. The
lengths stay on the host too, whatever the batch's device: new lengths, widths and the clips a
transform picks are worked out there, and only copies go to the device, so on a GPU a batch's
augmentation queues up without the host ever waiting for it (tests check this on the meta
device, which holds no values to read back). The codec round trip, whose encoders run on the
host, is the exception. A clip
that the probability ``p`` leaves alone gets the identity parameters (shift 0, gain 0 dB, rate 1,
noise scale 0, no room, flat response, mask width 0), so one vectorised ``apply`` serves the batch.

Modules: base (the transform protocol, Compose), waveform (shift, pad, gain, speed, background
noise), voice (pitch, vocal tract length), room (reverberation), channel (EQ, band limits,
telephone), codec (lossy round trips), features (masks), config (AugmentConfig and the presets).
"""

from kwsbatch.train.augment.base import Augmentation, Compose
from kwsbatch.train.augment.channel import BandLimit, Equalizer, Telephone
from kwsbatch.train.augment.codec import CodecRoundTrip, round_trip
from kwsbatch.train.augment.config import AugmentConfig
from kwsbatch.train.augment.features import FreqMask, TimeMask
from kwsbatch.train.augment.room import RoomReverb, measure_rt60
from kwsbatch.train.augment.voice import PitchShift, VocalTractWarp
from kwsbatch.train.augment.waveform import NOISE_LABEL, Amplify, BackgroundNoise, PlaySpeed, TimeShift, ZeroPad, load_noise
from kwsbatch.train.config import AUGMENT_PRESETS, CODECS, ROOM_MODELS

__all__ = [
    "AUGMENT_PRESETS", "CODECS", "NOISE_LABEL", "ROOM_MODELS",
    "Amplify", "AugmentConfig", "Augmentation", "BackgroundNoise", "BandLimit", "CodecRoundTrip", "Compose", "Equalizer",
    "FreqMask", "PitchShift", "PlaySpeed", "RoomReverb", "Telephone", "TimeMask", "TimeShift", "VocalTractWarp", "ZeroPad",
    "load_noise", "measure_rt60", "round_trip",
]
