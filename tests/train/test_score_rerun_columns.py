"""`score` rerun into a folder whose scores.csv exists: every column a metric logs (``alpha_req_r2``,
``dse_t<t>``, not only the metric's own name) is read back as a number, so the printed table, the
correlations and the returned rows of the earlier models are the same as on the first run."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import TensorDataset

import dse_monitor
from dse_monitor.train.score_file import ScoresFile

METRICS = ["dse", "alpha_req", "dse_t"]  # alpha_req also logs alpha_req_r2; dse_t logs dse_t1 .. dse_t8
COLUMNS = ["dse", "alpha_req", "alpha_req_r2", "dse_t1", "dse_t2", "dse_t4", "dse_t8"]


def _data_and_models() -> tuple[TensorDataset, list[tuple[str, nn.Module]]]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 3
    data = TensorDataset(torch.randn(120, 128, generator=g) + labels[:, None], labels)  # min(N, D) >= 110: alpha_req
    torch.manual_seed(0)
    models = [(f"net{i}", nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 3))) for i in range(3)]
    return data, models


def test_a_rerun_reads_every_logged_column_back_as_a_number_and_prints_the_table(tmp_path, capsys):
    data, models = _data_and_models()
    kwargs = dict(num_samples=None, metrics=METRICS, x_size=None)
    first = dse_monitor.score(models[:2], data, tmp_path, progress=False, **kwargs)
    assert first.failed == {} and all(isinstance(first[0][c], float) for c in COLUMNS)

    read = ScoresFile(tmp_path / "scores.csv").read()
    for before, after in zip(first, read):
        assert {c: after[c] for c in COLUMNS} == {c: before[c] for c in COLUMNS}  # floats, round-tripped exactly

    # the rerun skips the two scored models, scores the third, prints all three (this crashed on "0.89...")
    rerun = dse_monitor.score(models, data, tmp_path, progress=True, **kwargs)
    printed = capsys.readouterr().out
    assert rerun.failed == {} and [r["model"] for r in rerun] == ["net0", "net1", "net2"]
    assert "all 3 models:" in printed
    for row in rerun:
        assert all(isinstance(row[c], float) and math.isfinite(row[c]) for c in COLUMNS)
        assert f"{row['alpha_req_r2']:.3f}" in printed and f"{row['dse_t2']:.3f}" in printed
    # the correlations cover the earlier models' logged columns too (strings were left out before)
    correlation = {line.split(",")[0]: line.split(",")[2] for line in
                   (tmp_path / "correlation.csv").read_text().splitlines()[1:]}
    assert {m: correlation[m] for m in COLUMNS} == {m: "3" for m in COLUMNS}
