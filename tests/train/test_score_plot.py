"""`scores.png`: a grid of panels (three a row), the points coloured by a hyperparameter of each
checkpoint's run, read from the run folder's config.yaml the way `compare` reads it."""
from __future__ import annotations

import numpy as np
import yaml
from PIL import Image

from dse_monitor.train.score_report import correlations, group_of, write_scatter

METRICS = ["dse", "dsmi_y", "dsmi_x", "cse", "csmi_y"]
TAB10_BLUE, TAB10_ORANGE = (31, 119, 180), (255, 127, 14)


def _checkpoint(root, run: str, label_noise: str, epoch: int) -> str:
    version = root / run / "lightning_logs" / "version_0"
    (version / "checkpoints").mkdir(parents=True, exist_ok=True)
    (version / "config.yaml").write_text(yaml.safe_dump({"data": {"label_noise": label_noise}, "seed_everything": 1}))
    ckpt = version / "checkpoints" / f"epoch={epoch}-step={12 * (epoch + 1)}.ckpt"
    ckpt.write_bytes(b"")  # only its place matters here
    return str(ckpt)


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(pixels - np.array(rgb)).max(axis=-1) < 40).sum() > 20)


def test_scores_png_is_a_grid_coloured_by_the_runs_hyperparameter(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for noise in ("none", "permute"):
        for epoch in range(4):
            model = _checkpoint(tmp_path, f"label_noise={noise}_seed=1", noise, epoch)
            rows.append({"model": model, "accuracy": float(rng.uniform(0.1, 0.9)),
                         **{m: float(rng.uniform(-0.05, 3.0)) for m in METRICS}})
    assert group_of(rows[0]["model"], "data.label_noise") == "none"
    assert group_of(rows[-1]["model"], "label_noise") == "permute"  # a unique tail, as compare takes it
    assert group_of(rows[0]["model"], "model.init_std") == "n/a" and group_of("timm:resnet18", "x") == "n/a"
    assert group_of(rows[0]["model"], None) == "label_noise=none_seed=1"  # without --group-by: the run

    grouped, plain = tmp_path / "grouped.png", tmp_path / "plain.png"
    table = correlations(rows, METRICS)
    write_scatter(rows, table, METRICS, grouped, group_by="data.label_noise")
    with Image.open(grouped) as im:
        width, height = im.size
        pixels = np.asarray(im.convert("RGB")).astype(int)
    assert width < 2.5 * height and width >= 1000  # 2 rows of 3 panels, not one 2310 x 418 strip
    assert _has_colour(pixels, TAB10_BLUE) and _has_colour(pixels, TAB10_ORANGE)  # two groups, two colours
    one_run = [{**r, "model": r["model"].replace("permute", "none")} for r in rows]
    write_scatter(one_run, table, METRICS, plain)
    with Image.open(plain) as im:
        assert not _has_colour(np.asarray(im.convert("RGB")).astype(int), TAB10_ORANGE)  # one run, one colour
