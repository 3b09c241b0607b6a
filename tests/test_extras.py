"""extras.py: the install command a missing extra's message gives, for a checkout and for a pip
install; and commands that need a missing extra fail at once, leaving nothing behind."""

import subprocess
import sys

from conftest import REPO

from kwsbatch.extras import install_command

# The package's modules are imported from this checkout; blocking a module in sys.modules is what
# Python does when it is not installed (ImportError on import).
BLOCKED_RUN = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
from kwsbatch.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_without(modules: str, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED_RUN, modules, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=600)


def test_a_checkout_installs_an_extra_from_its_own_folder(tmp_path):
    checkout = tmp_path / "my src" / "kwsbatch-main"
    (checkout / "kwsbatch").mkdir(parents=True)
    (checkout / "setup.cfg").write_text("[metadata]\nname = kwsbatch\n")
    assert install_command("onnx", package=checkout / "kwsbatch") == f"pip install -e '{checkout}[onnx]'"


def test_an_installed_package_installs_an_extra_by_name(tmp_path):
    site = tmp_path / "venv" / "lib" / "python3.12" / "site-packages"
    (site / "kwsbatch").mkdir(parents=True)
    (site / "kwsbatch-0.4.0.dist-info").mkdir()
    assert install_command("parquet", package=site / "kwsbatch") == "pip install 'kwsbatch[parquet]'"


def test_this_checkout_is_one():
    assert install_command("dask") == f"pip install -e '{REPO}[dask]'"


def test_label_to_parquet_without_pyarrow_fails_at_once_naming_the_command_and_leaves_nothing(tmp_path):
    result = run_without("pyarrow,pyarrow.parquet", "label", REPO / "manifests" / "demo.csv", "-o", "out.parquet", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"error: parquet output needs pyarrow: pip install -e '{REPO}[parquet]'\n"
    assert list(tmp_path.iterdir()) == []  # no output, journal or lock file


def test_export_to_onnx_without_onnx_names_the_command_and_writes_nothing(tmp_path):
    result = run_without("onnx", "export", "-o", "m.onnx", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"error: ONNX export needs the onnx package: pip install -e '{REPO}[onnx]'\n"
    assert list(tmp_path.iterdir()) == []


def test_bin_kwsbatch_installs_every_extra_setup_cfg_declares(tmp_path):
    """The quick start's set-up: bin/kwsbatch asks pip for the checkout with every extra, so `label -o
    x.parquet` and `export -o m.onnx` work from the first run. The venv's python here is a stand-in
    that records what it is asked to run (the real install is 6 GB)."""
    import configparser
    import shutil

    root = tmp_path / "checkout"
    shutil.copytree(REPO / "bin", root / "bin")
    for name in ("setup.cfg", "pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, root / name)
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path / 'asked'}\n")
    python.chmod(0o755)
    result = subprocess.run(["bash", root / "bin" / "kwsbatch", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    extras = list(config["options.extras_require"])
    assert {"onnx", "parquet", "dask", "plot", "augment", "tts"} <= set(extras)
    checked, install, run = (tmp_path / "asked").read_text().splitlines()
    assert checked == "-m pip --version"  # a .venv left without pip by a killed set-up would be made again
    assert install.endswith(f"-c {root}/constraints.txt -e {root}[{','.join(extras)}]")
    assert run == "-m kwsbatch --version"
    again = subprocess.run(["bash", root / "bin" / "kwsbatch", "--version"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and (tmp_path / "asked").read_text().splitlines()[3:] == ["-m kwsbatch --version"]  # set up once
