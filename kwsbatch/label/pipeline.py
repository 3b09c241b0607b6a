"""The labelling pipeline: manifest rows in, one result per file out, as fast as the cores allow.

Rows are cut into tasks of ``batch_size * sort_window`` upcoming files. A worker thread takes a
task, decodes its files, resamples them, sorts the clips (or the windows of long recordings) by
length so that a batch pads little, and scores them batch after batch on the model's device.
Results come back a task at a time, in completion order (a slow task, such as an hour-long
recording, never holds up the others) or in input order; at most ``2 * jobs`` tasks are in
flight, so memory does not grow with the corpus.

Threads by default: libsndfile and every torch op release the GIL, so threads start at once and
share one model. Yet each file still takes the GIL a dozen times (soundfile's wrapper makes 12
library calls per file, and the pipeline has Python of its own), and the main thread's journal and
output need it too, so threads wait on one another and leave cores idle: on 2 cores, labelling
20,000 files kept 1.6 cores busy. With ``processes``, each worker is a process of its own
(spawned, with a copy of the model; about 1.6 s to start), which keeps both busy and paid off
from about 20,000 files. Why one torch thread per worker: torch's own thread pool, competing with
the workers (or with other programs) for the same cores, made labelling several times slower.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
import torch

from kwsbatch.errors import AudioError, KwsError
from kwsbatch.faults import hold
from kwsbatch.files.audio import decode_audio
from kwsbatch.files.manifest import ManifestRow, chunked
from kwsbatch.label.config import LabelConfig
from kwsbatch.label.rows import FileResult
from kwsbatch.label.windows import DetectionMerger, WindowReader
from kwsbatch.model.scorer import Scorer
from kwsbatch.settings import worker_count


@dataclass
class _Segment:
    index: int  # the file's position in its task
    start: int  # frames at the file's own rate
    end: int
    wave: torch.Tensor  # (n_samples,) at the model's rate


# What turns manifest rows into (task rows, their results): score_files bound to a scorer, or the
# cluster's score_on_cluster bound to a client. ordered=True keeps input order.
Score = Callable[..., Iterator[tuple[list[ManifestRow], list[FileResult]]]]


class _Cancelled(Exception):
    pass


@functools.cache
def keep_freed_memory() -> None:
    """glibc: serve batch-sized tensors from the heap and keep freed pages, instead of mapping fresh ones.

    By default glibc gives big blocks (a batch's spectrogram is ~10 MB) back to the kernel when
    they are freed, so every batch faults its pages in again: 80-110 page faults and 0.2 ms of
    system time per file measured here, 10% of labelling. Memory use is bounded all the same (the
    pipeline's working set is), it just stays at its peak. Once per process; elsewhere, nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: blocks below 256 MiB come from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: return free heap to the kernel only beyond 1 GiB
    except (OSError, AttributeError):
        pass


def score_files(
    scorer: Scorer, rows: Iterable[ManifestRow], config: LabelConfig, *, ordered: bool = False
) -> Iterator[tuple[list[ManifestRow], list[FileResult]]]:
    """Yield (task rows, their results) as tasks finish: in input order when ordered, else as they come."""
    jobs = worker_count(config.jobs)
    keep_freed_memory()
    pending: collections.deque[tuple[list[ManifestRow], Future]] = collections.deque()
    with _workers(scorer, config) as submit:
        for task in chunked(rows, config.task_size):
            pending.append((task, submit(task)))
            if len(pending) >= 2 * jobs:  # one task running and one queued per worker
                yield _take_finished(pending, ordered)
                hold("before-submit")
        while pending:
            yield _take_finished(pending, ordered)


@contextlib.contextmanager
def _workers(scorer: Scorer, config: LabelConfig) -> Iterator[Callable[[list[ManifestRow]], Future]]:
    """submit(task) -> the Future of its results, scored on worker threads or worker processes."""
    if config.processes:
        if scorer.device.type != "cpu":
            raise KwsError(f"worker processes score on the CPU, not on {scorer.device.type}: add --device cpu, or use threads")
        # Spawned, not forked: a fork copies whatever locks the parent's threads hold at that moment.
        context = multiprocessing.get_context("spawn")
        stop = context.Event()
        pool = ProcessPoolExecutor(
            worker_count(config.jobs), mp_context=context, initializer=_start_worker, initargs=(scorer, stop, os.getpid())
        )
        def submit(task: list[ManifestRow]) -> Future:
            try:
                return pool.submit(_score_in_worker, task, config)
            except BrokenProcessPool:  # a worker died since the last result was taken
                raise _worker_died(task) from None

        try:
            yield submit
        finally:
            hold("shutdown")
            stop.set()  # as with threads: running tasks stop at their next batch, queued ones never start
            # Every result was taken (or the run is ending with an error): a worker dying now loses nothing.
            pool.shutdown(wait=True, cancel_futures=True)
        return
    stop = threading.Event()
    with single_threaded_torch(), ThreadPoolExecutor(worker_count(config.jobs), thread_name_prefix="kwsbatch-label") as pool:
        try:
            yield lambda task: pool.submit(_score_task, scorer, task, config, stop)
        finally:
            # On an error or Ctrl-C, running tasks stop at their next batch; queued ones never start.
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)


_worker_scorer: Scorer | None = None  # in a worker process: the model it scores with
_worker_stop = None  # in a worker process: the parent's stop event


def _start_worker(scorer: Scorer, stop, parent: int) -> None:
    """A worker process's start: one torch thread, Ctrl-C left to the parent, and gone when the parent is."""
    global _worker_scorer, _worker_stop
    _worker_scorer, _worker_stop = scorer, stop
    torch.set_num_threads(1)
    keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it sets stop, and tasks end at their next batch
    with contextlib.suppress(OSError, AttributeError):
        # Linux: a SIGKILLed parent takes its workers with it (PR_SET_PDEATHSIG), rather than leaving
        # them waiting for tasks forever.
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(1)


def _score_in_worker(rows: list[ManifestRow], config: LabelConfig) -> list[FileResult]:
    return _score_task(_worker_scorer, rows, config, _worker_stop)


def _take_finished(pending: collections.deque, ordered: bool) -> tuple[list[ManifestRow], list[FileResult]]:
    if not ordered:
        wait([future for _, future in pending], return_when=FIRST_COMPLETED)
        for i, (_, future) in enumerate(pending):
            if future.done():
                pending.rotate(-i)
                break
    task, future = pending.popleft()
    try:
        return task, future.result()
    except BrokenProcessPool:
        raise _worker_died(task) from None


def _worker_died(task: list[ManifestRow]) -> KwsError:
    # Killed (out of memory, say) or crashed in a decoder: the finished tasks are kept, and a rerun resumes.
    return KwsError(f"a worker process died while labelling the files from {task[0].source} on; run again to resume")


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _score_task(scorer: Scorer, rows: list[ManifestRow], config: LabelConfig, stop: threading.Event) -> list[FileResult]:
    hold("task")
    results = [FileResult() for _ in rows]
    mergers: dict[int, DetectionMerger] = {}
    for group in chunked(_segments(scorer, rows, config, results, mergers), config.task_size):
        if stop.is_set():
            raise _Cancelled
        probabilities = score_sorted(scorer, [s.wave for s in group], config.batch_size)
        for segment, p in zip(group, probabilities):
            if segment.index in mergers:
                mergers[segment.index].add(segment.start, segment.end, p)
            else:
                results[segment.index].probabilities = p
    for index, merger in mergers.items():
        if not results[index].error:
            results[index].windows = merger.windows()
            results[index].detections = merger.detections()
    return results


def score_sorted(scorer: Scorer, waves: list[torch.Tensor], batch_size: int) -> np.ndarray:
    """(len(waves), n_classes) probabilities, scored in batches of similar length to pad little."""
    out = np.zeros((len(waves), len(scorer.classes)), dtype=np.float32)
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        out[batch] = scorer.probabilities([waves[i] for i in batch])
    return out


def _segments(
    scorer: Scorer, rows: list[ManifestRow], config: LabelConfig, results: list[FileResult], mergers: dict
) -> Iterator[_Segment]:
    """Each readable file's audio at the model's rate: the whole clip, or its windows one by one."""
    for index, row in enumerate(rows):
        result = results[index]
        if row.error:
            result.error = row.error
            continue
        try:
            if config.window is None:
                clip = decode_audio(row.audio_path, max_seconds=config.max_seconds, offset=row.offset_s, duration=row.duration_s)
                result.duration_s, result.sample_rate, result.channels = clip.duration_s, clip.sample_rate, clip.channels
                yield _Segment(index, 0, len(clip.samples), scorer.resample(clip.samples, clip.sample_rate))
                continue
            reader = WindowReader(row.audio_path, config.window)
            for start, end, samples in reader:
                if index not in mergers:
                    mergers[index] = DetectionMerger(scorer.classes, reader.sample_rate, threshold=config.window.threshold)
                yield _Segment(index, start, end, scorer.resample(samples, reader.sample_rate))
            result.duration_s, result.sample_rate, result.channels = reader.duration_s, reader.sample_rate, reader.channels
        except AudioError as e:
            result.error = str(e)
