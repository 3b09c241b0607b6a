"""`kwsbatch bench`: how close `label` and `train` get to the machine's floors, measured in one run.

It makes N clips of 0.5-1.5 s (WAV and FLAC; one in five stereo at 44.1 kHz, the rest mono at
16 kHz) and times, on the same files and the same machine:

- the decode floor: soundfile reads alone, in 1, 2, 4, ... loader workers up to the cores;
- the compute floor: resampling, features and the model on clips already decoded in memory, all
  cores (a thread per core, one torch thread each); on CUDA also the device alone (features and
  the model on padded batches in pinned memory) at batch sizes from 64 up, to choose --batch-size by;
- the back-to-back floor: decoding everything, then computing everything, 1 / (1/decode + 1/compute);
- `kwsbatch label` end to end, in a child process, at each of those worker counts, with its peak RSS;
- the notebook's pipeline (tools/notebook.py: each file decoded, resampled, featurised and scored
  alone) and `kwsbatch label` on the same files as whole processes, interpreter start-up included;
- a training epoch (the real one: loader workers, batches, augmentation) beside the notebook's
  batch-1 loop (each clip augmented, as the notebook's Dataset did, then its features, forward,
  backward and optimizer step alone) on the same clips, with the same transforms, the median of
  three passes each, alternating, after a first untimed one;

and prints the ratios between them, with the CPU time each spent per file: on a machine shared with
other work, wall-clock rates move with the load, CPU per file much less. Files are read from a warm
page cache in every measurement.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from kwsbatch.allocator import keep_freed_memory
from kwsbatch.errors import KwsError
from kwsbatch.files.audio import decode_audio
from kwsbatch.files.loader import pad_waveforms, run_tasks
from kwsbatch.files.manifest import ManifestRow, chunked
from kwsbatch.label.config import LabelConfig
from kwsbatch.model.scorer import Scorer
from kwsbatch.model.spotter import KeywordSpotter
from kwsbatch.settings import usable_cores, worker_count
from kwsbatch.tools.config import BenchConfig
from kwsbatch.train.augment import Augmentation, AugmentConfig
from kwsbatch.train.config import TrainConfig
from kwsbatch.train.data import load_clips
from kwsbatch.train.distributed import Process
from kwsbatch.train.loop import train_epoch
from kwsbatch.train.sampling import group_by_length

CUDA_BATCH_SIZES = (64, 128, 256, 512, 1024)
EPOCH_PASSES = 3  # timed passes of each training loop, after an untimed one


@dataclass
class Timing:
    files: int
    seconds: float
    cpu_seconds: float  # user + system, all processes: what the work costs whatever else runs on the machine

    @property
    def rate(self) -> float:
        return self.files / max(self.seconds, 1e-9)

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_seconds / self.files


@dataclass
class LabelRun(Timing):
    wall_seconds: float = 0.0  # the child process from start to exit; seconds is the run's own time
    peak_rss: int = 0  # bytes

    @property
    def wall_rate(self) -> float:
        return self.files / self.wall_seconds


@dataclass
class BenchResult:
    config: BenchConfig
    device: str
    decode: dict[int, Timing]  # workers -> soundfile alone
    compute: Timing
    label: dict[int, LabelRun]  # workers -> end to end
    notebook: LabelRun  # the notebook's pipeline as a whole process
    whole: LabelRun  # label on the notebook's files, as a whole process
    device_floors: dict[int, Timing] = field(default_factory=dict)  # CUDA: batch size -> features + model alone
    epoch: Timing | None = None
    notebook_epoch: Timing | None = None

    @property
    def back_to_back(self) -> Timing:
        decode = max(self.decode.values(), key=lambda t: t.rate)
        return Timing(decode.files, decode.seconds + self.compute.seconds, decode.cpu_seconds + self.compute.cpu_seconds)

    def lines(self) -> list[str]:
        floor, best = self.back_to_back, max(self.label.values(), key=lambda t: t.rate)
        mib = 1 / 2**20

        def line(name: str, workers, t: Timing, note: str) -> str:
            return f"  {name:<22}{workers!s:>8}{t.rate:10,.0f}{t.cpu_ms:13.3f}   {note}"

        lines = [
            f"kwsbatch bench: {self.config.files:,} clips of 0.5-1.5 s (WAV and FLAC, 1 in 5 stereo 44.1 kHz); "
            f"batch {self.config.batch_size}, {self.device}, {usable_cores()} cores, load average {os.getloadavg()[0]:.1f}",
            f"  {'':<22}{'workers':>8}{'files/s':>10}{'cpu ms/file':>13}",
            *(line("decode floor", w, t, "soundfile reads alone, in loader workers") for w, t in self.decode.items()),
            line("compute floor", "all", self.compute, "resampling + features + model on decoded clips in memory, all cores"),
            *(line(f"device floor, batch {b}", "-", t, "features + model alone, on padded batches in pinned memory")
              for b, t in self.device_floors.items()),
            line("back-to-back floor", "-", floor, "decode everything (fastest), then compute everything"),
            *(line("label end to end", w, t, f"{t.seconds:.1f} s ({t.wall_seconds:.1f} s with start-up), peak RSS {t.peak_rss * mib:,.0f} MiB")
              for w, t in self.label.items()),
            line("notebook, whole", 1, _wall(self.notebook), f"tools/notebook.py on {self.notebook.files:,} files: "
                 f"{self.notebook.wall_seconds:.1f} s with start-up, peak RSS {self.notebook.peak_rss * mib:,.0f} MiB"),
            line("label, whole", self.config.jobs or "all", _wall(self.whole), f"on the same files: {self.whole.wall_seconds:.1f} s with start-up"),
            f"  label end to end / back-to-back floor   {best.rate / floor.rate:.2f}   (cpu per file: floor / end to end {floor.cpu_ms / best.cpu_ms:.2f})",
            f"  label end to end / compute floor        {best.rate / self.compute.rate:.2f}",
            f"  label / notebook, whole processes       {self.notebook.wall_seconds / self.whole.wall_seconds:.2f}   "
            f"(cpu per file: {self.notebook.cpu_ms / self.whole.cpu_ms:.2f})",
        ]
        if self.epoch is not None:
            lines += [
                f"  {'':<22}{'':>8}{'clips/s':>10}{'cpu ms/clip':>13}",
                line("training epoch", self.config.jobs or "all", self.epoch,
                     "train_epoch, median pass: batches of like length, standard augmentation, loader workers"),
                line("notebook epoch", 1, self.notebook_epoch, "median pass, one clip at a time: augmentation, features, forward, backward, Adam step"),
                f"  training epoch / notebook epoch         {self.epoch.rate / self.notebook_epoch.rate:.2f}   "
                f"(cpu per clip: {self.notebook_epoch.cpu_ms / self.epoch.cpu_ms:.2f})",
            ]
        return lines


def _wall(run: LabelRun) -> Timing:
    return Timing(run.files, run.wall_seconds, run.cpu_seconds)


def worker_counts(most: int) -> list[int]:
    """1, 2, 4, ... up to most, and most itself."""
    counts = [1]
    while counts[-1] * 2 < most:
        counts.append(counts[-1] * 2)
    return sorted({*counts, most})


def run_bench(config: BenchConfig, scorer: Scorer, model: Path, *, folder: Path | None = None, log=print) -> BenchResult:
    """Make the clips (in folder, or a temporary one removed afterwards) and measure everything."""
    most = worker_count(config.jobs)
    keep = folder is not None
    folder = Path(folder) if keep else Path(tempfile.mkdtemp(prefix="kwsbatch-bench-"))
    try:
        log(f"making {config.files:,} clips in {folder} ...")
        paths = make_clips(folder / "clips", config.files, seed=config.seed, workers=most)
        decode_audio(paths[0])  # open libsndfile and the page cache before timing anything
        keep_freed_memory()  # as label does
        result = BenchResult(config, str(scorer.device), {}, Timing(1, 1, 0), {}, LabelRun(1, 1, 0), LabelRun(1, 1, 0))
        for workers in worker_counts(most):
            log(f"timing the decode floor in {workers} workers ...")
            result.decode[workers] = decode_floor(paths, workers)
        log("timing the compute floor ...")
        result.compute = compute_floor(scorer, paths, config, usable_cores())
        if scorer.device.type == "cuda":
            result.device_floors = {b: device_floor(scorer, paths, b) for b in CUDA_BATCH_SIZES}
        common = ["--model", str(model), "--device", config.device, "--batch-size", str(config.batch_size)]
        for workers in worker_counts(most):
            log(f"timing kwsbatch label -j {workers} end to end ...")
            result.label[workers] = time_label([str(folder / "clips"), *common, "--jobs", str(workers)], folder / f"labels{workers}.csv", len(paths))
        _time_whole_processes(result, folder, paths, common, model, config, log)
        if config.train_files:
            log(f"timing a training epoch and the notebook's on {min(config.train_files, len(paths)):,} clips, each after a first ...")
            result.epoch, result.notebook_epoch = time_epochs(scorer, paths[: config.train_files], config)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return result


def _time_whole_processes(result: BenchResult, folder: Path, paths: list[str], common: list[str], model: Path, config: BenchConfig, log) -> None:
    single = paths[: config.single_files] if config.single_files else paths
    manifest = folder / "single.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in single), encoding="utf-8")
    log(f"timing the notebook's pipeline and kwsbatch label on {len(single):,} files, as whole processes ...")
    result.notebook = time_process(
        [sys.executable, "-m", "kwsbatch.tools.notebook", str(manifest), str(model), str(folder / "notebook.csv"), config.device],
        folder / "notebook.stderr",
        len(single),
    )
    result.whole = time_label([str(manifest), *common, "--jobs", str(config.jobs)], folder / "whole.csv", len(single))


def make_clips(folder: Path, n: int, *, seed: int, workers: int) -> list[str]:
    """n clips, 1,000 to a subfolder; kept and reused when folder already holds these n clips."""
    stamp = folder / "bench.json"
    wanted = {"files": n, "seed": seed, "version": 1}
    paths = [str(folder / f"{i // 1000:04d}" / f"clip{i:07d}.{'flac' if i % 2 else 'wav'}") for i in range(n)]
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    for sub in {os.path.dirname(p) for p in paths}:
        os.makedirs(sub, exist_ok=True)
    with ThreadPoolExecutor(workers) as pool:  # FLAC encoding releases the GIL
        list(pool.map(lambda i: _write_clip(paths[i], seed, i), range(n)))
    stamp.write_text(json.dumps(wanted))
    return paths


def _write_clip(path: str, seed: int, index: int) -> None:
    """A voiced-sounding clip: a few harmonics of a gliding pitch under a syllable envelope, plus noise."""
    rng = np.random.default_rng([seed, index])
    stereo = index % 5 == 0
    rate = 44100 if stereo else 16000
    t = np.arange(int(rng.uniform(0.5, 1.5) * rate)) / rate
    pitch = rng.uniform(90, 250) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = np.sin(np.pi * t / t[-1]) ** 2
    audio = (0.2 * envelope * voice + 0.003 * rng.standard_normal(len(t))).astype(np.float32)
    if stereo:
        audio = np.stack([audio, 0.8 * audio], axis=1)
    sf.write(path, audio, rate, subtype="PCM_16")


def decode_floor(paths: list[str], workers: int) -> Timing:
    """How fast soundfile alone decodes the files in `workers` loader workers, their start-up included."""
    started, cpu = time.perf_counter(), _cpu_seconds()
    for _ in run_tasks(chunked(paths, 256), _decode_many, workers=workers, died=lambda task: "a decode worker died"):
        pass
    return Timing(len(paths), time.perf_counter() - started, _cpu_seconds() - cpu)


def _cpu_seconds() -> float:
    """This process's CPU time and that of its children (loader workers, once reaped)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _decode_many(paths: list[str]) -> int:
    return sum(decode_audio(p, max_seconds=None).samples.size > 0 for p in paths)


def compute_floor(scorer: Scorer, paths: list[str], config: BenchConfig, threads: int) -> Timing:
    """How fast resampling + features + model on clips already in memory, a thread per core.

    Clips are decoded a round at a time (untimed), so memory stays bounded for any number of files.
    """
    task = LabelConfig(batch_size=config.batch_size).task_size
    seconds = cpu_seconds = 0.0
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            for round_paths in chunked(paths, task * threads * 2):
                tasks = list(chunked([decode_audio(p, max_seconds=None) for p in round_paths], task))
                started, cpu = time.perf_counter(), time.process_time()
                list(pool.map(lambda t: _compute(scorer, t, config.batch_size), tasks))
                seconds += time.perf_counter() - started
                cpu_seconds += time.process_time() - cpu
    finally:
        torch.set_num_threads(previous)
    return Timing(len(paths), seconds, cpu_seconds)


def _compute(scorer: Scorer, clips: list, batch_size: int) -> np.ndarray:
    waves = sorted((scorer.resample(c.samples, c.sample_rate) for c in clips), key=len)
    n_fft = scorer.checkpoint.feature_config.n_fft
    return scorer.score([pad_waveforms(waves[i : i + batch_size], min_samples=n_fft) for i in range(0, len(waves), batch_size)])


def device_floor(scorer: Scorer, paths: list[str], batch_size: int) -> Timing:
    """Features + model alone on the device: padded batches of resampled clips wait in pinned memory, untimed."""
    n_fft = scorer.checkpoint.feature_config.n_fft
    waves = sorted((scorer.resample(c.samples, c.sample_rate) for c in map(decode_audio, paths[: 16 * batch_size])), key=len)
    batches = [pad_waveforms(waves[i : i + batch_size], min_samples=n_fft) for i in range(0, len(waves), batch_size)]
    batches = [(w.pin_memory(), lengths) for w, lengths in batches]
    scorer.score(batches[:1])  # kernels chosen and memory allocated before the clock
    started, cpu = time.perf_counter(), time.process_time()
    scorer.score(batches)
    return Timing(len(waves), time.perf_counter() - started, time.process_time() - cpu)


def time_epochs(scorer: Scorer, paths: list[str], config: BenchConfig) -> tuple[Timing, Timing]:
    """A training epoch of the default model's architecture (batches of like length, standard augmentation, loader workers) and the
    notebook's batch-1 epoch, on the same clips; labels are made up (the clip's number modulo the classes).

    Each loop makes a first, untimed pass, which pays once-per-run costs (kernels set up for each new
    sequence length, memory first touched) as the first of a run's epochs does; then EPOCH_PASSES
    timed passes, alternating between the two loops so that a change in the machine's load falls
    on both, and the median pass of each is reported.
    """
    checkpoint, device = scorer.checkpoint, scorer.device
    classes = checkpoint.classes
    rows = [ManifestRow(p, p, Path(p), classes[i % len(classes)]) for i, p in enumerate(paths)]
    clips = load_clips(rows, classes, checkpoint.feature_config.sample_rate, jobs=config.jobs)
    train = TrainConfig(batch_size=config.batch_size, jobs=config.jobs, seed=config.seed)
    augment = AugmentConfig.preset("standard")
    augmentation = replace(augment, noise=(0.0, *augment.noise[1:])).build(sample_rate=checkpoint.feature_config.sample_rate)
    torch.manual_seed(config.seed)
    loops = []
    for batched in (True, False):
        spotter = KeywordSpotter(checkpoint.feature_config, checkpoint.model_config).to(device)
        spotter.load_state_dict(checkpoint.state_dict)
        loops.append((batched, spotter, torch.optim.Adam(spotter.parameters(), lr=train.lr), torch.Generator().manual_seed(config.seed)))

    def one_pass(batched: bool, spotter: KeywordSpotter, optimizer, generator: torch.Generator) -> Timing:
        order = torch.randperm(len(clips), generator=generator)
        started, cpu = time.perf_counter(), _cpu_seconds()
        if batched:
            order = group_by_length(order, clips.lengths, train.batch_size, train.length_groups)
            train_epoch(spotter, clips, order, optimizer, torch.nn.CrossEntropyLoss(), train, (augmentation, generator), Process(device=device))
        else:
            notebook_epoch(spotter, clips, order, optimizer, device, augmentation, generator)
        return Timing(len(clips), time.perf_counter() - started, _cpu_seconds() - cpu)

    for loop in loops:
        one_pass(*loop)
    passes = [[one_pass(*loop) for loop in loops] for _ in range(EPOCH_PASSES)]
    batched, notebook = (sorted(timings, key=lambda t: t.seconds)[len(timings) // 2] for timings in zip(*passes))
    return batched, notebook


def notebook_epoch(
    spotter: KeywordSpotter, clips, order: torch.Tensor, optimizer, device: torch.device, augmentation: Augmentation, generator: torch.Generator
) -> None:
    """The notebook's training loop: each clip alone augmented, then through features, forward, backward and an Adam step.

    The notebook's Dataset augmented every clip as it was read (shift, zero padding, gain, noise),
    in the training process, so this loop augments too, with the training epoch's transforms. In one
    torch thread, as label and train compute: on a busy machine torch's thread pool made small ops
    many times slower, and one clip's ops are too small for it to help.
    """
    spotter.train()
    loss_fn = torch.nn.CrossEntropyLoss()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for i in order.tolist():
            wave = clips.waveforms[i][None].to(device)
            with torch.no_grad():
                features = augmentation.featurize(spotter.frontend, wave, torch.tensor([wave.shape[1]]), generator)
            logits = spotter.head(*features)
            loss = loss_fn(logits, clips.targets[i : i + 1].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        loss.item()  # on a GPU, until the last step has run
    finally:
        torch.set_num_threads(previous)


def time_label(args: list[str], out: Path, files: int) -> LabelRun:
    """Run `kwsbatch label ARGS -o out` in a child process: its own time, wall time and peak RSS."""
    log = out.with_suffix(".log")
    for stale in (out, log):
        stale.unlink(missing_ok=True)
    # --settle 0: the clips were written a moment ago, and are to be labelled, not left to a next run.
    command = [sys.executable, "-m", "kwsbatch", "label", *args, "-o", str(out), "--settle", "0", "--quiet", "--log", str(log)]
    run = time_process(command, out.with_suffix(".stderr"), files)
    # The summary line the run logged: "...; N rows in S s, R files/s, peak RSS M MiB -> out".
    summary = log.read_text(encoding="utf-8")
    seconds = re.search(r"rows in ([0-9.]+) s", summary)
    rss = re.search(r"peak RSS ([0-9,]+) MiB", summary)
    run.seconds = max(float(seconds.group(1)), 1e-9) if seconds else run.wall_seconds
    # Not wait4's ru_maxrss: after fork + exec it starts from this (much bigger) process's peak.
    run.peak_rss = int(rss.group(1).replace(",", "")) * 2**20 if rss else 0
    return run


def time_process(command: list[str], stderr_path: Path, files: int) -> LabelRun:
    """Run command in a child process: its wall time and CPU time (its loader workers' included), and a peak RSS it prints."""
    started = time.perf_counter()
    with open(stderr_path, "w") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        # wait4, not wait: its resource usage (CPU time) is this child's alone, with the children it reaped.
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    text = stderr_path.read_text(errors="replace")
    if child.returncode not in (0, 3):  # 3: some files failed, as they may
        tail = text.strip().splitlines()[-1:]
        raise KwsError(f"{' '.join(command[2:4])} exited with status {child.returncode} during the bench: {' '.join(tail)}")
    rss = re.search(r"peak RSS ([0-9,]+) MiB", text)
    return LabelRun(
        files, wall, usage.ru_utime + usage.ru_stime, wall_seconds=wall, peak_rss=int(rss.group(1).replace(",", "")) * 2**20 if rss else 0
    )
