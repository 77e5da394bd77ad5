"""The light install: the math and the monitor's warning class need no Lightning; a missing
extra is named with its ``pip install`` line (in fresh interpreters that block the imports)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from importlib.metadata import requires
from pathlib import Path

from packaging.requirements import Requirement

import dse_monitor

REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str], tmp_path, blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Run ``argv`` in a fresh interpreter in which the modules ``blocked`` cannot be imported.

    A ``sitecustomize`` sets them to None in ``sys.modules`` before anything else runs, so
    that ``import`` raises ModuleNotFoundError and ``find_spec`` returns None, as when the
    distribution is not installed.
    """
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n")
    path = [str(site), str(REPO), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def _python(code: str, tmp_path, blocked: tuple[str, ...]) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-c", textwrap.dedent(code)], tmp_path, blocked)


def test_the_math_and_the_warning_class_need_no_lightning(tmp_path):
    done = _python("""
        import sys, warnings
        import torch
        from dse_monitor import *
        import dse_monitor
        z = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        print(float(diffusion_spectral_entropy(z, sigma=1.0)))
        assert issubclass(DSEMonitorWarning, UserWarning)
        import dse_monitor.monitor.report as core
        assert DSEMonitorWarning is core.DSEMonitorWarning
        try:
            dse_monitor.DSEMonitor
        except ImportError as error:
            print(error)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")
                     and sys.modules[m] is not None))
    """, tmp_path, blocked=("lightning", "pytorch_lightning", "lightning_fabric"))
    assert done.returncode == 0, done.stderr
    value, error, loaded = done.stdout.splitlines()
    assert 0 < float(value) <= 5.65  # log2(50)
    assert error == ("dse_monitor.DSEMonitor needs the 'lightning' package, not installed here: pip install "
                     "lightning (with pytorch_lightning: from dse_monitor.pytorch_lightning import DSEMonitor)")
    assert loaded == "[]"


def test_top_level_warning_class_is_the_one_the_monitor_emits():
    from dse_monitor.monitor.report import DSEMonitorWarning

    assert dse_monitor.DSEMonitorWarning is DSEMonitorWarning
    assert "DSEMonitorWarning" in dse_monitor.__all__ and "DSEMonitor" in dir(dse_monitor)


def test_the_main_job_without_its_extra_names_the_pip_line(tmp_path):
    done = _python("""
        try:
            import dse_monitor.train.cli
        except ImportError as error:
            print(type(error).__name__, error.name, error, sep="|")
    """, tmp_path, blocked=("timm", "matplotlib"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ('MissingExtraError|timm|the main job (dse_monitor.train, the dse-monitor command) '
                                   'needs timm, matplotlib, not installed here: pip install "dse-monitor[train]"')


def test_the_command_without_the_extra_prints_one_line_and_fails(tmp_path):
    # the console script runs dse_monitor.__main__:main, as `python -m dse_monitor` does
    scripts = re.search(r"\[project.scripts\]\n(.*?)\n\n", (REPO / "pyproject.toml").read_text(), re.S).group(1)
    assert re.match(r'dse-monitor = "dse_monitor.__main__:main"', scripts)
    done = _run([sys.executable, "-m", "dse_monitor", "fit", "--config", str(REPO / "configs" / "digits.yaml")],
                tmp_path, blocked=("timm",))
    assert done.returncode == 1
    assert done.stderr == ('dse-monitor: the main job (dse_monitor.train, the dse-monitor command) needs timm, '
                           'not installed here: pip install "dse-monitor[train]"\n')


def test_the_package_face_imports_the_main_job_only_on_demand(tmp_path):
    done = _python("""
        import sys
        import dse_monitor, dse_monitor._extras, dse_monitor.callback, dse_monitor.monitor, dse_monitor.capture
        print(sorted(m for m in sys.modules if m.startswith("dse_monitor.train")))
        dse_monitor.score
        print("dse_monitor.train.score" in sys.modules)
    """, tmp_path, blocked=())
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[]", "True"]


def test_the_install_itself_is_light():
    core = {Requirement(line).name for line in requires("dse-monitor") if "extra ==" not in line}
    assert core == {"torch", "numpy", "scikit-learn", "scipy", "tensorboard", "pillow"}  # pillow: the heat map
