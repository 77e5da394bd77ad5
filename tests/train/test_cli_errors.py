"""A configuration error from the command line is one message on stderr that names the option,
what it got and what it takes; no traceback unless asked (``dse-monitor --debug`` or
``DSE_MONITOR_DEBUG=1``). Real subprocesses of ``python -m dse_monitor`` (the console script's code)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DIGITS = str(REPO / "configs" / "digits.yaml")
TINY = ["--trainer.max_epochs", "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--data.image_size", "16", "--trainer.callbacks.init_args.num_samples", "50",
        "--model.backbone_kwargs", '{"channels": [8, 8, 8, 8], "stem_width": 8}']


def _fit(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "DSE_MONITOR_DEBUG"}
    environ.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "dse_monitor", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=environ, timeout=300)


def test_a_bad_monitor_value_is_one_message_naming_it(tmp_path):
    done = _fit(tmp_path, "fit", "--config", DIGITS, "--trainer.callbacks.init_args.sigma", "0")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) <= 10 and "Traceback" not in done.stderr, done.stderr
    message = next(line for line in lines if line.startswith("dse-monitor fit: "))
    assert "DSEMonitor" in message and "sigma" in message and "got 0.0" in message  # the option, what it got
    assert "positive number" in message and "'median'" in message  # what it takes
    assert "--debug" in done.stderr

    typo = _fit(tmp_path, "fit", "--config", DIGITS, "--trainer.max_epochs", "abc")
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert "--trainer.max_epochs" in typo.stderr and "abc" in typo.stderr and "int" in typo.stderr


def test_a_wrong_layer_name_is_one_message_and_debug_shows_the_traceback(tmp_path):
    args = ["fit", "--config", DIGITS, *TINY, "--trainer.callbacks.init_args.layers", "backbone.nosuchlayer"]
    done = _fit(tmp_path, *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    message = next(line for line in done.stderr.splitlines() if line.startswith("dse-monitor fit: "))
    assert "'backbone.nosuchlayer'" in message and "'backbone.layer4'" in message  # what it got, what exists
    debug = _fit(tmp_path, *args, DSE_MONITOR_DEBUG="1")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "LayerNotFoundError" in debug.stderr
