"""`kwsbatch bench`: how close `label` gets to the machine's floor, measured in one run.

It makes N clips of 0.5-1.5 s (WAV and FLAC; one in five stereo at 44.1 kHz, the rest mono at
16 kHz) and times, on the same files and the same machine:

- the decode floor: soundfile reads alone (the best of one thread, a thread per worker and a process per
  worker: on many cores, threads queue for the interpreter lock);
- the compute floor: resampling, features and the model on clips already decoded in memory,
  all cores, threaded as `label` threads it (one worker per core, one torch thread each; torch's
  own thread pool was measured slower, and on a busy machine many times slower);
- the back-to-back floor: decoding everything, then computing everything, 1 / (1/decode + 1/compute);
- `kwsbatch label` end to end, in a child process, with its peak RSS;
- the same files one at a time (``--batch-size 1 --jobs 1``, the notebook's way);

and prints the ratios between them, with the CPU time each spent per file: on a machine shared with
other work, wall-clock rates move with the load, CPU per file much less. Files are read from a warm
page cache in every measurement.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from kwsbatch.errors import KwsError
from kwsbatch.files.audio import decode_audio
from kwsbatch.files.manifest import chunked
from kwsbatch.label.config import LabelConfig
from kwsbatch.label.pipeline import keep_freed_memory, score_sorted
from kwsbatch.model.scorer import Scorer
from kwsbatch.settings import check_settings, jobs_setting, setting, worker_count


@dataclass(frozen=True)
class BenchConfig:
    """What `kwsbatch bench` measures; device, batch_size and jobs are label's, with label's defaults."""

    files: int = setting(2000, "clips to make and label (0.5-1.5 s, WAV and FLAC, some stereo 44.1 kHz)", at_least=1)
    device: str = "auto"
    batch_size: int = LabelConfig.batch_size
    jobs: int = jobs_setting()
    single_files: int | None = setting(None, "clips for the one-at-a-time run (default: all of them)", at_least=1)
    seed: int = setting(0, "seeds the clips' lengths, tones and formats")

    def __post_init__(self):
        check_settings(self)
        LabelConfig(batch_size=self.batch_size, jobs=self.jobs)  # label's limits


@dataclass
class Timing:
    files: int
    seconds: float
    cpu_seconds: float  # user + system, all threads: what the work costs whatever else runs on the machine

    @property
    def rate(self) -> float:
        return self.files / self.seconds

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_seconds / self.files


@dataclass
class LabelRun(Timing):
    wall_seconds: float = 0.0  # the child process from start to exit; seconds is the run's own time
    peak_rss: int = 0  # bytes


@dataclass
class BenchResult:
    config: BenchConfig
    workers: int
    device: str
    decode: Timing
    decode_how: str  # which of the decode floor's ways was fastest: "1 thread", "N threads" or "N processes"
    compute: Timing
    end_to_end: LabelRun
    one_at_a_time: LabelRun
    processes: LabelRun | None = None  # end to end with worker processes (--processes), on the CPU

    @property
    def back_to_back(self) -> Timing:
        return Timing(self.decode.files, self.decode.seconds + self.compute.seconds, self.decode.cpu_seconds + self.compute.cpu_seconds)

    def lines(self) -> list[str]:
        e2e, single, floor = self.end_to_end, self.one_at_a_time, self.back_to_back
        mib = 1 / 2**20

        def line(name: str, t: Timing, note: str) -> str:
            return f"  {name:<20}{t.rate:10,.0f}{t.cpu_ms:13.3f}   {note}"

        return [
            f"kwsbatch bench: {self.config.files:,} clips of 0.5-1.5 s (WAV and FLAC, 1 in 5 stereo 44.1 kHz); "
            f"{self.workers} workers, batch {self.config.batch_size}, {self.device}, {os.cpu_count()} cores, "
            f"load average {os.getloadavg()[0]:.1f}",
            f"  {'':<20}{'files/s':>10}{'cpu ms/file':>13}",
            line("decode floor", self.decode, f"soundfile reads alone, fastest in {self.decode_how}"),
            line("compute floor", self.compute, "resampling + features + model on decoded clips in memory, all cores"),
            line("back-to-back floor", floor, "decode everything, then compute everything"),
            line("label end to end", e2e, f"{e2e.seconds:.1f} s ({e2e.wall_seconds:.1f} s with interpreter start-up), peak RSS {e2e.peak_rss * mib:,.0f} MiB"),
            *([line("label --processes", self.processes, f"{self.processes.seconds:.1f} s, worker processes; peak RSS "
                        f"{self.processes.peak_rss * mib:,.0f} MiB in the parent, and each worker's own")] if self.processes else []),
            line("one at a time", single, f"--batch-size 1 --jobs 1 on {single.files:,} files, {single.seconds:.1f} s, peak RSS {single.peak_rss * mib:,.0f} MiB"),
            f"  end to end / back-to-back floor  {e2e.rate / floor.rate:.2f}   (cpu per file: floor / end to end {floor.cpu_ms / e2e.cpu_ms:.2f})",
            f"  end to end / compute floor       {e2e.rate / self.compute.rate:.2f}",
            f"  end to end / one at a time       {e2e.rate / single.rate:.2f}   (cpu per file: {single.cpu_ms / e2e.cpu_ms:.2f})",
            *([f"  --processes / threads            {self.processes.rate / e2e.rate:.2f}   (with start-up: "
               f"{e2e.wall_seconds / self.processes.wall_seconds:.2f})"] if self.processes else []),
            f"  end to end with start-up / back-to-back floor  {e2e.files / e2e.wall_seconds / floor.rate:.2f}",
        ]


def run_bench(config: BenchConfig, scorer: Scorer, model: Path, *, folder: Path | None = None, log=print) -> BenchResult:
    """Make the clips (in folder, or a temporary one removed afterwards) and measure everything."""
    workers = worker_count(config.jobs)
    keep = folder is not None
    folder = Path(folder) if keep else Path(tempfile.mkdtemp(prefix="kwsbatch-bench-"))
    try:
        log(f"making {config.files:,} clips in {folder} ...")
        paths = make_clips(folder / "clips", config.files, seed=config.seed, workers=workers)
        decode_audio(paths[0])  # open libsndfile and the page cache before timing anything
        keep_freed_memory()  # as label does
        log("timing the decode floor ...")
        floors = {
            "1 thread": decode_floor(paths, 1),
            f"{workers} threads": decode_floor(paths, workers),
            f"{workers} processes": decode_floor_in_processes(paths, workers),
        }
        decode_how = max(floors, key=lambda how: floors[how].rate)
        decode = floors[decode_how]
        log("timing the compute floor ...")
        compute = compute_floor(scorer, paths, config, workers)
        log("timing kwsbatch label end to end ...")
        common = ["--model", str(model), "--device", config.device]
        batched = [str(folder / "clips"), *common, "--batch-size", str(config.batch_size), "--jobs", str(config.jobs)]
        e2e = time_label(batched, folder / "labels.csv", len(paths))
        processes = None
        if scorer.device.type == "cpu":
            log("timing kwsbatch label --processes end to end ...")
            processes = time_label([*batched, "--processes"], folder / "labels_processes.csv", len(paths))
        single = paths[: config.single_files] if config.single_files else paths
        manifest = folder / "single.csv"
        manifest.write_text("path\n" + "".join(f"{p}\n" for p in single), encoding="utf-8")
        log(f"timing {len(single):,} files one at a time ...")
        one = time_label([str(manifest), *common, "--batch-size", "1", "--jobs", "1"], folder / "single_labels.csv", len(single))
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return BenchResult(config, workers, str(scorer.device), decode, decode_how, compute, e2e, one, processes)


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


def decode_floor(paths: list[str], threads: int) -> Timing:
    """How fast soundfile alone decodes the files, in this many threads."""
    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(_decode_many, chunked(paths, 256)):
            pass
    return Timing(len(paths), time.perf_counter() - started, time.process_time() - cpu)


def _decode_many(paths: list[str]) -> int:
    return sum(decode_audio(p, max_seconds=None).samples.size > 0 for p in paths)


def decode_floor_in_processes(paths: list[str], processes: int) -> Timing:
    """The same in worker processes, which share no interpreter lock; their start-up is not timed.

    Threads queue for the lock on every call into libsndfile: on 16 cores they decoded no faster
    than 2 do, and this floor tells the machine's limit from the lock's.
    """
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_start, [0.5] * processes))  # every worker started, with this module imported, before the clock
        started = time.perf_counter()
        cpu = sum(pool.map(_decode_many_cpu, chunked(paths, 256)))
        seconds = time.perf_counter() - started
    return Timing(len(paths), seconds, cpu)


def _start(seconds: float) -> None:
    """In a worker process: nothing but this module's imports (torch's among them), and long enough that every worker gets one."""
    time.sleep(seconds)


def _decode_many_cpu(paths: list[str]) -> float:
    """In a worker process: decode the files, and say how much CPU time that took."""
    cpu = time.process_time()
    _decode_many(paths)
    return time.process_time() - cpu


def compute_floor(scorer: Scorer, paths: list[str], config: BenchConfig, workers: int) -> Timing:
    """How fast resampling + features + model on clips already in memory, all workers.

    Clips are decoded a round at a time (untimed), so memory stays bounded for any number of files.
    """
    task = LabelConfig(batch_size=config.batch_size).task_size
    seconds = cpu_seconds = 0.0
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            for round_paths in chunked(paths, task * workers * 2):
                tasks = list(chunked([decode_audio(p, max_seconds=None) for p in round_paths], task))
                started, cpu = time.perf_counter(), time.process_time()
                list(pool.map(lambda t: _compute(scorer, t, config.batch_size), tasks))
                seconds += time.perf_counter() - started
                cpu_seconds += time.process_time() - cpu
    finally:
        torch.set_num_threads(previous)
    return Timing(len(paths), seconds, cpu_seconds)


def _compute(scorer: Scorer, clips: list, batch_size: int) -> np.ndarray:
    return score_sorted(scorer, [scorer.resample(c.samples, c.sample_rate) for c in clips], batch_size)


def time_label(args: list[str], out: Path, files: int) -> LabelRun:
    """Run `kwsbatch label ARGS -o out` in a child process: its own time, wall time and peak RSS."""
    log = out.with_suffix(".log")
    for stale in (out, log):
        stale.unlink(missing_ok=True)
    command = [sys.executable, "-m", "kwsbatch", "label", *args, "-o", str(out), "--quiet", "--log", str(log)]
    started = time.perf_counter()
    with open(out.with_suffix(".stderr"), "w") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        # wait4, not wait: its resource usage (CPU time) is this child's alone.
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        tail = out.with_suffix(".stderr").read_text(errors="replace").strip().splitlines()[-1:]
        raise KwsError(f"kwsbatch label exited with status {child.returncode} during the bench: {' '.join(tail)}")
    # The summary line the run logged: "...; N rows in S s, R files/s, peak RSS M MiB -> out".
    summary = log.read_text(encoding="utf-8")
    seconds = re.search(r"rows in ([0-9.]+) s", summary)
    rss = re.search(r"peak RSS ([0-9,]+) MiB", summary)
    cpu = usage.ru_utime + usage.ru_stime  # start-up included
    return LabelRun(
        files,
        max(float(seconds.group(1)), 1e-9) if seconds else wall,
        cpu,
        wall_seconds=wall,
        # Not wait4's ru_maxrss: after fork + exec it starts from this (much bigger) process's peak.
        peak_rss=int(rss.group(1).replace(",", "")) * 2**20 if rss else 0,
    )
