"""``dse-monitor report``: one self-contained HTML page from the event files of a real (tiny) run."""
from __future__ import annotations

import base64
import io
import re
import sys
import warnings
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from dse_monitor import DSEMonitor
from dse_monitor.train.report import main, report

sys.path.insert(0, str(Path(__file__).parents[1] / "callback"))
from dse_callback_models import LitClassifier, trainer_kwargs  # noqa: E402

SECTIONS = ("settings", "messages", "curves", "heatmaps", "spectrum", "sigma")


def _run(tmp_path, layers, save_raw):
    torch.manual_seed(0)
    logger = TensorBoardLogger(str(tmp_path / "runs"), name="tiny")
    # num_samples above the split: a warning the page must show
    monitor = DSEMonitor(layers=layers, num_samples=100, metrics=["dse", "dsmi_y"], sigma="median_init",
                         save_raw=save_raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2, logger=logger)).fit(LitClassifier())
    return Path(logger.log_dir), monitor


@pytest.mark.parametrize("layers, save_raw", [("penultimate", False), (["net.features.2", "penultimate"], True)])
def test_report_of_a_real_run_is_one_page_with_every_section_and_no_external_address(tmp_path, layers, save_raw):
    log_dir, monitor = _run(tmp_path, layers, save_raw)
    path = report(tmp_path / "runs")  # a folder above the run: the latest run is found
    assert path == log_dir / "dse_report.html" and [p.name for p in log_dir.glob("*.html")] == ["dse_report.html"]
    page = path.read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for section in SECTIONS:
        assert f'<h2 id="{section}-dse">' in page
    names = [layers] if isinstance(layers, str) else layers
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # per layer its curves and its spectrum, a heat map per metric, the sigma ratio (and the layers compared)
    assert len(images) == 2 * len(names) + 2 + 1 + (len(names) > 1)
    assert ('<h2 id="compared-dse">' in page) == (len(names) > 1)
    for data in images:
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == "PNG"
    for name in names:
        assert f"<h3>{name}</h3>" in page
    assert "<th>sigma</th><td>median_init (frozen per layer at its first measurement" in page
    frozen = monitor.frozen["sigma"]["penultimate"]
    assert f"penultimate {frozen:.4g}" in page  # the frozen value, read back from the run
    assert re.search(r'<li class="warning">.*num_samples=100 is larger than the probe split', page)
    if len(names) > 1:
        assert re.search(r'<li class="info">.*layers resolved: net.features.2, penultimate', page)


def test_the_command_prints_the_path_and_names_a_folder_without_runs(tmp_path, capsys):
    _run(tmp_path, "penultimate", False)
    out = tmp_path / "elsewhere" / "page.html"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"dse-monitor: report written to {out}" and out.is_file()
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    assert "no TensorBoard event files under" in capsys.readouterr().err
