"""DDP on 2 CPU processes (gloo) with solver="lanczos": DSE's kernel rows split over the ranks.

Each rank builds only its rows of the kernel and every product is one ``trainer.strategy.all_gather``;
the logged DSE equals the single-process estimate and the exact value within the bounds.
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from dse_callback_models import LitClassifier, TinyCNN, trainer_kwargs
from lightning.pytorch.strategies import DDPStrategy
from spawned import rerun_if_killed

from dse_monitor import DSEMonitor

N_PROBE = 200  # above the 72 rows where the Lanczos path solves its Krylov space exactly


class GatherLog(DDPStrategy):
    """Lightning's DDP (spawned), recording the shape of every tensor passed to ``all_gather``."""

    def __init__(self) -> None:
        super().__init__(start_method="spawn")
        self.shapes: list[list[int]] = []

    def all_gather(self, tensor, group=None, sync_grads=False):
        self.shapes.append(list(tensor.shape))
        return super().all_gather(tensor, group=group, sync_grads=sync_grads)


class DumpGathers(L.Callback):
    """Writes each rank's recorded all_gather shapes at the end of fit (in the spawned process)."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_fit_end(self, trainer, pl_module) -> None:
        shapes = getattr(trainer.strategy, "shapes", [])
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(shapes))


def _fit(root: Path, ddp: bool) -> None:
    torch.manual_seed(5)
    net = TinyCNN()
    net.features[1].momentum = 0.0  # lr=0 and frozen BatchNorm statistics: the same model whatever the split
    model = LitClassifier(net=net, n_train=32, n_val=N_PROBE, lr=0.0)
    lanczos = DSEMonitor(num_samples=None, metrics=["dse", "dse_norm"], sigma=0.1, solver="lanczos", dtype="float64",
                         save_raw=True)
    exact = DSEMonitor(num_samples=None, metrics="dse", sigma=0.1, solver="exact", dtype="float64", prefix="exact",
                       save_raw=True)
    root.mkdir(parents=True)
    kw = dict(strategy=GatherLog(), devices=2) if ddp else {}
    L.Trainer(callbacks=[lanczos, exact, DumpGathers(str(root))], **trainer_kwargs(root, max_epochs=1, **kw)).fit(model)


def _run(root: Path, ddp: bool = False) -> tuple[Path, list[dict]]:
    root = rerun_if_killed(lambda r: _fit(r, ddp), root)
    history = json.loads((root / "dse_monitor" / "history.json").read_text())["history"]
    exact_history = json.loads((root / "exact_monitor" / "history.json").read_text())["history"]
    return root, [dict(a, **b) for a, b in zip(history, exact_history)]


def test_ddp_lanczos_splits_the_kernel_rows_and_matches_one_process(tmp_path):
    _, single = _run(tmp_path / "single")
    ddp_root, ddp = _run(tmp_path / "ddp", ddp=True)
    assert [r["epoch"] for r in ddp] == [r["epoch"] for r in single] == [0, 1]
    for a, b in zip(single, ddp):
        assert b["dse/penultimate/dse"] == pytest.approx(a["dse/penultimate/dse"], abs=1e-6)  # within 0.01 asked
        assert b["dse/penultimate/dse_norm"] == pytest.approx(a["dse/penultimate/dse_norm"], abs=1e-6)
        assert b["exact/penultimate/dse"] == pytest.approx(a["exact/penultimate/dse"], abs=1e-9)
        assert b["dse/penultimate/dse"] == pytest.approx(b["exact/penultimate/dse"], abs=0.01)
    gathers = [json.loads((ddp_root / f"rank{r}.json").read_text()) for r in range(2)]
    assert gathers[0] == gathers[1]  # the ranks made the same collectives in the same order
    # the kernel products: [b vectors, a share of 100 rows + the operand's fingerprint]
    products = [s for s in gathers[0] if len(s) == 2 and s[1] == N_PROBE // 2 + 1]
    assert len(products) >= 2 * 10  # at least 10 products at each of the 2 measurements
