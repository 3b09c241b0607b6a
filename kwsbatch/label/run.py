"""`kwsbatch label` as one call: a LabelRequest in, a JobSummary out.

Picks the model and the scorer, the output's columns, where scoring runs (here, the loader's
worker processes reading, or on a Dask cluster) and where rows go (job.py's journaled file, or a
stream); records the outcome in the reporter's log. Imports torch only after the lock check: a cron run that finds another one
writing its output stops in a tenth of a second, before torch and the model load.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

from kwsbatch.errors import Interrupted, KwsError
from kwsbatch.files.lock import lock_path, output_lock
from kwsbatch.files.output import check_output_format, output_format, resolve_output
from kwsbatch.label.config import LabelRequest
from kwsbatch.label.journal import journal_path
from kwsbatch.progress import Reporter
from kwsbatch.sigterm import Terminated, terminating


def label_corpus(request: LabelRequest, reporter: Reporter | None = None):
    """Label request.inputs into request.out (or standard output); the JobSummary of the run.

    KwsError (LockedError when another run holds the output) and Ctrl-C (Interrupted, saying what
    was kept) are recorded in the reporter's log and raised; SIGTERM (Terminated) as Ctrl-C.
    """
    reporter = reporter or Reporter()
    try:
        check_output_format(output_format(request.out, request.output_format))
        _refuse_when_locked(request)
        summary = _label(request, reporter)
    except (KwsError, KeyboardInterrupt) as e:
        # systemd sends SIGTERM to the loader's workers too: one may die of it (a KwsError) before
        # this process handles its own. Either way, the run was terminated.
        if isinstance(e, KwsError) and not terminating():
            reporter.record(f"error: {e}")
            raise
        raise _stopped(request, reporter, terminated=isinstance(e, Terminated) or terminating()) from None
    reporter.record(summary.line())
    return summary


def _stopped(request: LabelRequest, reporter: Reporter, *, terminated: bool) -> KeyboardInterrupt:
    """Ctrl-C (Interrupted) or SIGTERM (Terminated), recorded in the log, saying what was kept and how to finish."""
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    journal = None if request.to_stdout else journal_path(resolve_output(request.out))
    if journal is not None and journal.exists():  # a run stopped before it labelled a file leaves none
        what += f"; files labelled so far are kept in {journal}: run the same command again to finish"
    reporter.record(what)
    return Terminated(what) if terminated else Interrupted(what)


def _refuse_when_locked(request: LabelRequest) -> None:
    """Fail at once, before the heavy imports, when another run holds the output's lock.

    run_label_job takes the lock for the run itself; without a lock file no run holds it.
    """
    out = resolve_output(request.out)
    if not (request.to_stdout or request.wait) and lock_path(out).is_file():
        with output_lock(out):
            pass


def _label(request: LabelRequest, reporter: Reporter):
    from kwsbatch.label.job import run_label_job, stream_labels
    from kwsbatch.label.pipeline import score_files
    from kwsbatch.label.rows import RowLayout
    from kwsbatch.label.shard import Shard
    from kwsbatch.model.checkpoint import default_model_path, load_checkpoint
    from kwsbatch.model.scorer import Scorer

    model = Path(request.model) if request.model else default_model_path()
    checkpoint = load_checkpoint(model)
    config = request.config
    scorer = Scorer(checkpoint, device=request.device)
    layout = RowLayout(checkpoint.classes, model_id=scorer.model_id, threshold=request.threshold)
    shard = Shard.parse(request.shard) if request.shard is not None else None
    kind = output_format(request.out, request.output_format)
    options = dict(output_format=kind, manifest_format=request.manifest_format, shard=shard, reporter=reporter)
    score = functools.partial(score_files, scorer)
    if request.to_stdout:
        return stream_labels(score, layout, list(request.inputs), config, out=request.out, **options)
    with contextlib.ExitStack() as stack:
        if request.dask:
            from kwsbatch.label.cluster import connect, score_on_cluster

            client = stack.enter_context(connect(request.dask))
            score = functools.partial(score_on_cluster, client, model.resolve(), scorer.model_id, request.device)
        return run_label_job(score, layout, list(request.inputs), request.out, config, force=request.force, wait=request.wait,
                             settle_s=request.settle, **options)
