"""`label --dask ADDRESS`: score chunks of files on a dask.distributed cluster instead of local loader workers.

The driver (the `label` process) walks the inputs, keeps the lock and the journal, and writes the
output exactly as a local run does; only scoring moves. It cuts the files to label into chunks of
``batch_size * sort_window`` (the local pipeline's tasks), submits at most two per worker at a
time, and records each chunk's results in the journal as it comes back. Each worker process loads
the model once, on its first chunk, and keeps it; a chunk is then scored by the same pipeline code
as locally (pipeline.score_files, read in the dask worker's own process), so the rows are the same.

A worker that dies loses only the chunks it held: the scheduler runs them again elsewhere and the
driver records a chunk once, when its result arrives. Workers must see the audio (and the model)
at the paths the driver gives: a shared file system or the same object-store mount everywhere.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from kwsbatch.errors import KwsError
from kwsbatch.extras import install_command
from kwsbatch.files.manifest import ManifestRow, chunked
from kwsbatch.label.config import LabelConfig
from kwsbatch.label.pipeline import score_files
from kwsbatch.label.rows import FileResult
from kwsbatch.model.scorer import Scorer

RETRIES = 2  # resubmissions of a chunk whose worker raised; a chunk whose worker died is rescheduled by the scheduler itself

_scorers: dict[tuple, Scorer] = {}  # per worker process: (model, model_id, device) -> its model, loaded once
_scorers_lock = threading.Lock()


@contextlib.contextmanager
def connect(address: str) -> Iterator[object]:
    """A distributed.Client for a scheduler address, or for a new LocalCluster of N worker processes ('local:N')."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise KwsError(f"--dask needs dask.distributed: {install_command('dask')}") from None
    if address.startswith("local:"):
        try:
            workers = int(address.removeprefix("local:"))
        except ValueError:
            workers = 0
        if workers < 1:
            raise KwsError(f"--dask {address}: expected local:N with N >= 1 worker processes")
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with Client(cluster) as client:
                yield client
        return
    try:
        client = Client(address, timeout="30s")
    except (OSError, TimeoutError) as e:
        raise KwsError(f"--dask {address}: cannot reach the scheduler ({e})") from None
    with client:
        yield client


def score_on_cluster(
    client, model: str | Path, model_id: str, device: str, rows: Iterable[ManifestRow], config: LabelConfig
) -> Iterator[tuple[list[ManifestRow], list[FileResult]]]:
    """Yield (chunk rows, their results) as chunks finish on the cluster: score_files' contract, for job.py.

    Each worker loads its own model from the path; model_id, the driver's, tells a replaced file.
    """
    from distributed import as_completed

    workers = max(1, len(client.scheduler_info().get("workers", {})))
    done = as_completed()
    chunks: dict = {}  # future -> its rows; a future is dropped once its result is taken
    try:
        for chunk in chunked(rows, config.task_size):
            future = client.submit(_score_chunk, str(model), model_id, device, chunk, config, pure=False, retries=RETRIES)
            chunks[future] = chunk
            done.add(future)
            if done.count() >= 2 * workers:
                yield _take(next(done), chunks)
        for future in done:
            yield _take(future, chunks)
    finally:
        for future in chunks:  # on an error or Ctrl-C: the cluster stops what nobody will read
            future.cancel()


def _take(future, chunks: dict) -> tuple[list[ManifestRow], list[FileResult]]:
    chunk = chunks.pop(future)
    try:
        results = future.result()
    except KwsError:
        raise
    except Exception as e:  # a chunk failed RETRIES + 1 times, or its workers kept dying (KilledWorker)
        raise KwsError(f"a chunk starting at {chunk[0].source} failed on the cluster: {type(e).__name__}: {e}") from None
    return chunk, results


def _score_chunk(model: str, model_id: str, device: str, rows: list[ManifestRow], config: LabelConfig) -> list[FileResult]:
    """On a worker: score one chunk with the pipeline, in input order, read in this process (a dask worker may not fork)."""
    scorer = _worker_scorer(model, model_id, device)
    return [result for _, results in score_files(scorer, rows, config, ordered=True, in_process=True) for result in results]


def _worker_scorer(model: str, model_id: str, device: str) -> Scorer:
    from kwsbatch.model.checkpoint import load_checkpoint

    key = (model, model_id, device)
    with _scorers_lock:
        if key not in _scorers:
            _scorers[key] = Scorer(load_checkpoint(model), device=device)
        return _scorers[key]
