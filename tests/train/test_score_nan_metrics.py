"""`score` keeps a model whose metric is NaN for a reason the measurement gives (alpha-ReQ of features
whose covariance has zero eigenvalues in its fit range: the power law is undefined) and writes the NaN
with that reason; a model whose features are NaN (a broken checkpoint) is still rejected."""
from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import dse_monitor
from dse_monitor.functional import alpha_req, diffusion_spectral_entropy
from dse_monitor.train.score import ScoreFailedWarning


def _net(rank: int | None = None, broken: bool = False) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 3))
    with torch.no_grad():
        if rank is not None:  # only `rank` units of the penultimate layer ever fire: rank <= `rank`
            net[0].weight[rank:] = 0
            net[0].bias[rank:] = 0
        if broken:
            net[0].weight[0, 0] = float("nan")
    return net


def test_a_documented_nan_is_written_with_its_reason_and_the_model_kept(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 128, generator=g)
    data = TensorDataset(x, torch.arange(120) % 3)
    torch.manual_seed(0)
    models = [("full", _net()), ("rank4", _net(rank=4)), ("broken", _net(broken=True))]
    with pytest.warns(ScoreFailedWarning, match="broken failed"):
        rows = dse_monitor.score(models, data, tmp_path, num_samples=None, metrics=["dse", "alpha_req"],
                                 x_size=None, progress=False)

    assert [r["model"] for r in rows] == ["full", "rank4"]
    assert list(rows.failed) == ["broken"] and "NaN/Inf" in rows.failed["broken"]
    full, low = rows
    with torch.no_grad():
        z = models[1][1][:2](x).double()  # the penultimate features of the rank-4 model
    fit = alpha_req(z)
    assert math.isnan(fit.alpha) and fit.zeros_in_fit > 0  # the functional API: undefined, and why
    assert math.isnan(low["alpha_req"]) and math.isnan(low["alpha_req_r2"])
    assert "zero eigenvalues" in low["note"] and "alpha_req" in low["note"]
    assert low["dse"] == pytest.approx(float(diffusion_spectral_entropy(z, sigma="sqrt_dim")), abs=1e-9)
    assert math.isfinite(full["alpha_req"]) and math.isfinite(full["alpha_req_r2"]) and full["note"] == ""

    with open(tmp_path / "scores.csv", newline="") as f:
        written = {r["model"]: r for r in csv.DictReader(f)}
    assert set(written) == {"full", "rank4"}
    assert written["rank4"]["alpha_req"] == "nan" and "zero eigenvalues" in written["rank4"]["note"]
    with open(tmp_path / "failures.csv", newline="") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["broken"]

    # a rerun keeps the row (NaN read back as NaN) and retries only the broken model
    with pytest.warns(ScoreFailedWarning, match="broken failed"):
        again = dse_monitor.score(models, data, tmp_path, num_samples=None, metrics=["dse", "alpha_req"],
                                  x_size=None, progress=False)
    assert [r["model"] for r in again] == ["full", "rank4"] and math.isnan(again[1]["alpha_req"])
