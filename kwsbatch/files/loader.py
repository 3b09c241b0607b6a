"""The loading engine: worker processes read audio and collate batches; the main process computes.

Every command that reads audio goes through run_tasks: `label` and `evaluate` (read_task: length-
sorted, padded batches at the model's rate), `train` (the same, kept in memory), `check` (its own
reader) and `bench`. It is torch's DataLoader, driven a task at a time:

- a task is a list of files, cut from the input in the main process as lazily as the input comes
  (a journal lookup, a folder listing); at most PREFETCH tasks per worker are in flight, so memory
  does not grow with the corpus;
- a worker process reads a task's files, mixes them to mono, resamples them, sorts them by length
  and pads them into batches of one shared-memory buffer, which reaches the main process without a
  copy (and is pinned there for a CUDA device);
- the main process runs features and the model on the device, and writes the journal and output.

Workers are forked: they start in milliseconds, with the parent's modules already imported
(spawned ones import torch again, 1.6 s each). They ignore Ctrl-C, which is the main process's to
handle between batches, and die with it when it is killed (PR_SET_PDEATHSIG). A worker that dies
(killed for memory, or crashed in a decoder) stops the others at once, and the run ends with one
error naming the first file not yet read; the tasks already taken are kept by the caller.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.utils.data

from kwsbatch.allocator import keep_freed_memory
from kwsbatch.errors import AudioError, KwsError
from kwsbatch.faults import hold
from kwsbatch.files.audio import DEFAULT_MAX_SECONDS, decode_audio
from kwsbatch.files.lock import close_inherited_locks
from kwsbatch.files.manifest import ManifestRow
from kwsbatch.files.resample import Resampler
from kwsbatch.files.windowing import WindowConfig
from kwsbatch.files.windows import WindowReader, plan_pieces

PREFETCH = 2  # tasks in flight per worker: one being read, one waiting

Task = TypeVar("Task")
Result = TypeVar("Result")


@contextlib.contextmanager
def one_torch_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, compute in one thread: the loader's workers have the other cores.

    torch's own thread pool, competing with the workers (or other programs) for the same cores,
    and spinning while the main process waits for the next task, made labelling 36 one-file tasks
    seven times slower (18 s against 2.4 s, 4.8 s of CPU against 0.9) and a training epoch 20
    times slower on a busy machine.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_tasks(
    tasks: Iterable[Task],
    read: Callable[[Task], Result],
    *,
    workers: int,
    died: Callable[[Task], str],
    ordered: bool = True,
    pin_memory: bool = False,
) -> Iterator[tuple[Task, Result]]:
    """Yield (task, read(task)), read in `workers` worker processes (0: here, in this process).

    ordered: in the order of tasks; else as they finish, so a slow task never holds up the others.
    pin_memory: page-locked result tensors, for non-blocking copies to a CUDA device.
    died(task) says what was lost when a worker process dies: the run ends with KwsError(died(task))
    for the first task not yet returned.
    """
    keep_freed_memory()
    if workers == 0:
        for task in tasks:
            yield task, read(task)
        return
    pending: dict[int, Task] = {}
    sampler = _TaskSampler(tasks, pending, primed=PREFETCH * workers)
    with warnings.catch_warnings():
        # More workers than cores is the user's call (-j), not a warning on every run.
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        iterator, watch = _start(_loader(read, sampler, workers, ordered, pin_memory))
    try:
        while pending:
            if watch.died:
                raise KwsError(died(pending[min(pending)]))
            try:
                seq, result = next(iterator)
            except RuntimeError as e:
                if watch.died or "DataLoader worker" in str(e):  # it died before the watch saw it
                    raise KwsError(died(pending[min(pending)])) from None
                raise
            yield pending.pop(seq), result
        # Every result is in: a worker dying from here on loses nothing.
        hold("shutdown")
    finally:
        watch.stop()
        iterator._shutdown_workers()  # what the iterator's __del__ would do, but now, and on every way out


class _TaskSampler:
    """The DataLoader's batch sampler: hands out (seq, task) as the loader asks, remembering what is pending."""

    def __init__(self, tasks: Iterable, pending: dict, primed: int):
        self.tasks, self.pending, self.primed = tasks, pending, primed

    def __iter__(self) -> Iterator[tuple[int, object]]:
        for seq, task in enumerate(self.tasks):
            if seq >= self.primed:
                hold("before-submit")  # a result was just taken, and the loader asks for more work
            self.pending[seq] = task
            yield seq, task


class _Reader(torch.utils.data.Dataset):
    """In a worker: (seq, task) -> (seq, read(task))."""

    def __init__(self, read: Callable):
        self.read = read

    def __getitems__(self, item: tuple[int, object]) -> tuple[int, object]:
        seq, task = item
        hold("task")
        return seq, self.read(task)


def _as_is(data):
    return data


def _start_worker(parent: int, worker_id: int) -> None:
    """A worker's start: Ctrl-C left to the parent, no hold on the parent's output lock, and gone when the parent is.

    SIGTERM keeps torch's worker handler (exit when the parent sends it, else die of it): the loader
    ends stuck workers with it, and a worker must never ignore it. When systemd sends it to every
    process of a run, the run still reports being terminated (kwsbatch/sigterm.py).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops at its next batch and says how to resume
    sys.excepthook = _quiet_when_the_parent_stops_reading
    close_inherited_locks()
    try:
        # Linux: a SIGKILLed parent takes its workers with it, rather than leaving them reading on.
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _quiet_when_the_parent_stops_reading(kind: type, error: BaseException, traceback) -> None:
    """A worker's excepthook: say nothing of a connection the parent closed.

    A worker hands each batch's shared memory to the parent through a socket that a thread of
    multiprocessing (resource_sharer) serves, and reports that thread's errors here; a parent that
    stops reading (Ctrl-C, SIGTERM, an error) resets it, which would end an orderly stop with a
    traceback on stderr.
    """
    if not issubclass(kind, (ConnectionResetError, BrokenPipeError, EOFError)):
        sys.__excepthook__(kind, error, traceback)


def _loader(read: Callable, sampler: _TaskSampler, workers: int, ordered: bool, pin_memory: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        _Reader(read),
        batch_sampler=sampler,
        collate_fn=_as_is,
        num_workers=workers,
        prefetch_factor=PREFETCH,
        pin_memory=pin_memory,
        in_order=ordered,
        worker_init_fn=functools.partial(_start_worker, os.getpid()),
        multiprocessing_context=multiprocessing.get_context("fork"),
        generator=torch.Generator(),  # a worker seed not drawn from torch's global generator, which training seeds
    )


def _start(loader: torch.utils.data.DataLoader):
    """The loader's iterator (which starts the workers) and a _Watch on them."""
    _join_exiting_feeders()
    previous = signal.getsignal(signal.SIGCHLD)
    iterator = iter(loader)
    if previous is not None and threading.current_thread() is threading.main_thread():
        # torch's SIGCHLD handler raises in the main thread wherever it is when a worker dies, in
        # the middle of a journal commit say; the watch notices instead, and run_tasks says so between tasks.
        signal.signal(signal.SIGCHLD, previous)
    return iterator, _Watch(iterator._workers)


def _join_exiting_feeders() -> None:
    """Wait for the queue threads of the loader before this one (each epoch of train has its own) to end.

    Its queues are closed, so their feeder threads are exiting; a fork while one is being torn down
    copies CPython's locked thread-list mutex into the child, which then hangs in its first step
    (seen once in four suite runs with torchrun's short epochs).
    """
    for thread in threading.enumerate():
        if thread.name == "QueueFeederThread":
            thread.join(timeout=5)


class _Watch:
    """Stops and reaps every worker the moment one dies unexpectedly, from a thread of its own.

    So a dead worker never leaves the others reading for nobody, even while the main thread waits
    (for a lock, or at a test's hold point); `died` is the dead worker's pid.
    """

    def __init__(self, workers: list):
        self.workers = workers
        self.died: int | None = None
        self._stop_read, self._stop_write = multiprocessing.Pipe(duplex=False)
        self._thread = threading.Thread(target=self._watch, name="kwsbatch-loader-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        sentinels = {w.sentinel: w for w in self.workers}
        ready = multiprocessing.connection.wait([*sentinels, self._stop_read])
        if self._stop_read in ready:
            return
        self.died = sentinels[ready[0]].pid
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            worker.join()

    def stop(self) -> None:
        """The run is ending: workers exit from here on as the loader stops them."""
        self._stop_write.send(None)
        self._thread.join()
        self._stop_read.close()
        self._stop_write.close()


# --- reading audio files into batches --------------------------------------------------------------


@dataclass(frozen=True)
class ReadConfig:
    """What a worker needs to turn files into batches for the model."""

    sample_rate: int  # every clip is resampled to the model's rate
    batch_size: int = 64  # clips (or windows) per batch
    min_samples: int = 1  # shorter clips are zero-padded to this (the model's analysis window)
    max_seconds: float | None = DEFAULT_MAX_SECONDS  # clip mode: a longer file is an error
    window: WindowConfig | None = None  # window mode: windows slid over each file instead of whole clips


@dataclass(frozen=True)
class Piece:
    """One file of a task (clip mode), or a run of its windows (window mode: first <= k < stop)."""

    row: ManifestRow
    file: int  # the file's number in the input: a file read in several pieces has one number
    pieces: int = 1  # how many pieces the file was cut into
    first: int = 0
    stop: int | None = None


@dataclass
class FileAudio:
    """What reading a piece found out about its file."""

    error: str = ""
    sample_rate: int = 0  # the file's own rate and channel count
    channels: int = 0
    frames: int | None = None  # the file's length at its own rate; None: this piece did not reach its end
    warning: str = ""  # with frames: read all the same, but its header promised more than the file holds


@dataclass
class Batch:
    """(batch, samples) zero-padded waveforms at the model's rate, each row from one piece; or their features."""

    waves: torch.Tensor  # or, featurized, (batch, frames, n_features) features
    lengths: torch.Tensor  # (batch,) samples of each row before padding (at least min_samples); or frame counts
    pieces: list[int]  # each row's piece, by index in the task
    spans: list[tuple[int, int]]  # each row's (start, end) frames in its file, at the file's rate
    featurized: bool = False

    @property
    def inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.waves, self.lengths


@dataclass
class LoadedTask:
    """A task's files read: one FileAudio per piece, and their audio in length-sorted batches."""

    files: list[FileAudio]
    batches: list[Batch] = field(default_factory=list)

    def pin_memory(self) -> LoadedTask:
        """Called by the loader when results are to be pinned: page-locked waves, for non-blocking copies."""
        batches = [Batch(b.waves.pin_memory(), b.lengths, b.pieces, b.spans, b.featurized) for b in self.batches]
        return LoadedTask(self.files, batches)


def plan_tasks(rows: Iterable[ManifestRow], config: ReadConfig, task_size: int) -> Iterator[list[Piece]]:
    """Cut rows into tasks of about task_size clips (or windows), lazily; window mode cuts long files into pieces."""
    task: list[Piece] = []
    size = 0
    for number, row in enumerate(rows):
        if config.window is None or row.error:
            parts = [(0, None)]
        else:
            parts = plan_pieces(row.audio_path, config.window)
        for first, stop in parts:
            task.append(Piece(row, number, len(parts), first, stop))
            size += 1 if config.window is None or stop is None else stop - first
            if size >= task_size:
                yield task
                task, size = [], 0
    if task:
        yield task


def read_task(pieces: list[Piece], config: ReadConfig, featurize: Callable | None = None) -> LoadedTask:
    """Read, mix, resample and batch a task's pieces; a file that cannot be read becomes its error, not an exception.

    featurize((waves, lengths)) -> (features, frame_lengths), when given, replaces each batch's audio by its features.
    """
    resample = Resampler(config.sample_rate)
    files, segments = [], []  # segments: (piece index, start, end, waveform at the model's rate)
    for index, piece in enumerate(pieces):
        audio = FileAudio(error=piece.row.error or "")
        files.append(audio)
        if audio.error:
            continue
        own = []
        try:
            for start, end, samples, rate in _read_piece(piece, config, audio):
                own.append((index, start, end, resample(samples, rate)))
        except AudioError as e:
            audio.error = str(e)
            continue
        segments.extend(own)
    batches = collate(segments, config.batch_size, config.min_samples, shared=featurize is None)
    if featurize is not None:
        batches = [Batch(*featurize(b.inputs), b.pieces, b.spans, featurized=True) for b in batches]
    return LoadedTask(files, batches)


def _read_piece(piece: Piece, config: ReadConfig, audio: FileAudio) -> Iterator[tuple[int, int, np.ndarray, int]]:
    row = piece.row
    if config.window is None:
        clip = decode_audio(row.audio_path, max_seconds=config.max_seconds, offset=row.offset_s, duration=row.duration_s)
        audio.sample_rate, audio.channels, audio.frames = clip.sample_rate, clip.channels, len(clip.samples)
        audio.warning = clip.warning
        yield 0, len(clip.samples), clip.samples, clip.sample_rate
        return
    reader = WindowReader(row.audio_path, config.window, first=piece.first, stop=piece.stop)
    for start, end, samples in reader:
        yield start, end, samples, reader.sample_rate
    audio.sample_rate, audio.channels, audio.frames = reader.sample_rate, reader.channels, reader.frames
    audio.warning = reader.warning


def collate(segments: list[tuple[int, int, int, torch.Tensor]], batch_size: int, min_samples: int, *, shared: bool = True) -> list[Batch]:
    """Sort segments by length and pad them into batches, all views of one buffer (in a worker, of shared memory when shared).

    Sorting makes a batch's clips alike in length, so it pads little; a clip's features do not
    depend on its batch, so neither do its results. Longest first is the order packing wants: the
    model then packs a batch as it is, without a sort whose index copy to a GPU waits for the device.
    """
    order = sorted(range(len(segments)), key=lambda i: -len(segments[i][3]))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    widths = [max(min_samples, *(len(segments[i][3]) for i in group)) for group in groups]
    buffer = torch.empty(sum(len(g) * w for g, w in zip(groups, widths)), dtype=torch.float32)
    if shared and torch.utils.data.get_worker_info() is not None:
        buffer.share_memory_()  # before it is filled: sent to the main process without another copy
    batches, offset = [], 0
    for group, width in zip(groups, widths):
        out = buffer[offset : offset + len(group) * width].view(len(group), width)
        offset += len(group) * width
        waves, lengths = pad_waveforms([segments[i][3] for i in group], min_samples=min_samples, out=out)
        batches.append(Batch(waves, lengths, [segments[i][0] for i in group], [segments[i][1:3] for i in group]))
    return batches


def pad_waveforms(
    waveforms: list[torch.Tensor], *, min_samples: int, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D waveforms, in their order, into a zero-padded (batch, samples) tensor plus each clip's own length.

    A clip shorter than one analysis window is zero-padded to min_samples, and its length says so:
    the padding is a property of the clip, not of the batch it lands in. out: the tensor to fill,
    (batch, at least the longest length).
    """
    lengths = torch.tensor([max(len(w), min_samples) for w in waveforms], dtype=torch.long)
    batch = torch.empty(len(waveforms), int(lengths.max()), dtype=torch.float32) if out is None else out
    for row, wave in enumerate(waveforms):
        batch[row, : len(wave)] = wave
        batch[row, len(wave) :] = 0
    return batch, lengths
