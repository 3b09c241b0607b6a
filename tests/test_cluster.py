"""label --dask on a real LocalCluster (2 worker processes on loopback): same output as a local run, workers killed mid-run."""

import functools
import os
import signal

import pytest
from conftest import run_cli, run_main
from test_job import EXIT_ERROR, EXIT_PARTIAL, EXIT_USAGE, make_corpus, read_rows

distributed = pytest.importorskip("distributed")

from kwsbatch.label.cluster import score_on_cluster  # noqa: E402
from kwsbatch.label.config import LabelConfig
from kwsbatch.label.job import run_label_job  # noqa: E402
from kwsbatch.label.pipeline import score_files  # noqa: E402
from kwsbatch.label.rows import RowLayout  # noqa: E402
from kwsbatch.model.checkpoint import default_model_path, load_checkpoint  # noqa: E402
from kwsbatch.model.scorer import Scorer  # noqa: E402
from kwsbatch.progress import Reporter  # noqa: E402

TOLERANCE = 1e-5


def assert_same_output(local: list[dict], clustered: list[dict]) -> None:
    assert [r["path"] for r in clustered] == [r["path"] for r in local]  # input order, each file once
    for a, b in zip(local, clustered):
        numbers = [c for c in a if c.startswith("p_") or c == "confidence"]
        assert {c: v for c, v in a.items() if c not in numbers} == {c: v for c, v in b.items() if c not in numbers}
        for c in numbers:
            assert (a[c] == b[c] == "") or abs(float(a[c]) - float(b[c])) <= TOLERANCE, (a["path"], c)


def corpus_with_a_broken_file(root):
    make_corpus(root, 24)
    (root / "part000" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    return root


@pytest.mark.slow
def test_dask_local_cluster_writes_the_local_output(tmp_path):
    corpus = corpus_with_a_broken_file(tmp_path / "corpus")
    local, clustered = tmp_path / "local.csv", tmp_path / "dask.csv"
    assert run_main("label", corpus, "-o", local, "-j", "1").returncode == EXIT_PARTIAL
    result = run_cli("label", corpus, "-o", clustered, "--batch-size", "4", env_extra={"KWSBATCH_DASK": "local:2"})
    assert result.returncode == EXIT_PARTIAL, result.stderr  # the broken file's error row, as locally
    assert "labelled 25 new or changed files (1 failed)" in result.stderr
    rows = read_rows(clustered)
    assert_same_output(read_rows(local), rows)
    assert [r["path"] for r in rows if r["error"]] == [str(corpus / "part000" / "broken.wav")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "dask.csv", "local.csv"]


class KillAWorker(Reporter):
    """Kills one worker process (SIGKILL, as the OOM killer would) when the first chunk comes back."""

    def __init__(self, client):
        self.client = client
        self.killed = None

    def advance(self, n: int = 1, **fields) -> None:
        if n and self.killed is None:
            pids = self.client.run(os.getpid)
            self.killed = sorted(pids.values())[0]
            os.kill(self.killed, signal.SIGKILL)


@pytest.mark.slow
def test_a_worker_killed_mid_run_costs_only_its_chunks(tmp_path):
    corpus = corpus_with_a_broken_file(tmp_path / "corpus")
    model = default_model_path()
    checkpoint = load_checkpoint(model)
    scorer = Scorer(checkpoint, device="cpu")
    layout = RowLayout(checkpoint.classes, model_id=scorer.model_id)
    config = LabelConfig(batch_size=1, sort_window=2, jobs=1)  # 13 chunks of 2 files, 4 in flight
    run_label_job(functools.partial(score_files, scorer), layout, [str(corpus)], tmp_path / "local.csv", config)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            reporter = KillAWorker(client)
            score = functools.partial(score_on_cluster, client, model, scorer.model_id, "cpu")
            summary = run_label_job(score, layout, [str(corpus)], tmp_path / "dask.csv", config, reporter=reporter)
    assert reporter.killed is not None
    assert (summary.labelled, summary.failed, summary.rows) == (25, 1, 25)
    assert_same_output(read_rows(tmp_path / "local.csv"), read_rows(tmp_path / "dask.csv"))


def test_dask_flag_errors_are_one_line(tmp_path):
    corpus = tmp_path / "corpus"
    make_corpus(corpus, 2)
    usage = run_main("label", corpus, "--dask", "local:2")
    assert usage.returncode == EXIT_USAGE and "argument --dask: needs an output file (-o FILE)" in usage.stderr
    bad = run_main("label", corpus, "-o", tmp_path / "out.csv", "--dask", "local:zero")
    assert bad.returncode == EXIT_ERROR
    assert bad.stderr.strip().splitlines()[-1] == "error: --dask local:zero: expected local:N with N >= 1 worker processes"
    assert not (tmp_path / "out.csv").exists()
