"""Training under torchrun: 2 CPU processes (gloo on loopback) against one process with the same effective batch."""

import csv
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import run_cli

from kwsbatch.errors import KwsError
from kwsbatch.model.checkpoint import load_checkpoint
from kwsbatch.train.distributed import Process, local_gpu, rank_share

# No augmentation: each rank draws its own, so two ranks could not match one process's draws.
# On the CPU (gloo), also on a machine with one GPU, where two processes would need two.
FLAGS = ("--device", "cpu", "--epochs", "6", "--hidden", "16", "--layers", "1", "--pooling", "mean", "--augment", "none",
         "--lr", "1e-2", "--val-fraction", "0.25", "-q")
TOLERANCE = 1e-4  # per-epoch losses and accuracies; only the order of float sums differs between the runs


@pytest.mark.parametrize("n", [10, 11, 1])
def test_rank_shares_cover_an_epoch_once_each_rank_the_same_length(n):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shares = [rank_share(order, Process(rank, 2)) for rank in range(2)]
    assert len(shares[0]) == len(shares[1]) == (n + 1) // 2
    together = torch.cat(shares).tolist()
    assert sorted(set(together)) == list(range(n))
    assert len(together) - n == n % 2  # the one padding clip of an odd epoch
    assert torch.equal(rank_share(order, Process()), order)


def test_each_process_of_a_node_takes_its_own_gpu_and_no_more_processes_than_gpus():
    assert local_gpu(0, 1) == torch.device("cuda", 0) and local_gpu(3, 4) == torch.device("cuda", 3)
    with pytest.raises(KwsError, match=r"process 1 on a node with 1 GPU: .*--nproc-per-node 1.*--device cpu"):
        local_gpu(1, 1)
    with pytest.raises(KwsError, match=r"process 2 on a node with 2 GPUs"):
        local_gpu(2, 2)


def _history(run) -> list[dict]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_with_two_processes_matches_one_process_with_twice_the_batch(speech_corpus, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    run_cli("train", speech_corpus / "train.csv", "-o", single, "--batch-size", "16", *FLAGS, check=True)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(_free_port()), "-m", "kwsbatch", "train", str(speech_corpus / "train.csv"),
         "-o", str(double), "--batch-size", "8", *FLAGS],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("best epoch") == 1  # rank 0 alone reports
    assert sorted(p.name for p in double.iterdir()) == ["best.pt", "history.csv", "last.pt"]

    one, two = _history(single), _history(double)
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        for column in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert abs(float(a[column]) - float(b[column])) <= TOLERANCE, (a["epoch"], column, a[column], b[column])
    assert float(two[-1]["train_accuracy"]) > 0.5  # it learned: the comparison is not between two untrained models

    best_one, best_two = load_checkpoint(single / "best.pt"), load_checkpoint(double / "best.pt")
    assert best_one.provenance["metrics"]["best_epoch"] == best_two.provenance["metrics"]["best_epoch"]
    for name, weights in best_one.state_dict.items():
        assert torch.allclose(weights, best_two.state_dict[name], atol=TOLERANCE), name
