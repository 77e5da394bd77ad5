"""The labelled layers x measurements heat map: drawn without matplotlib, read back from a real event file."""
from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dse_monitor.monitor.heatmap import MIN_WIDTH, heatmap_figure

sys.path.insert(0, str(Path(__file__).parents[1] / "callback"))


def _rgb(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def _looks_like_a_labelled_figure(rgb: np.ndarray) -> None:
    """A rendered figure, not a bare grid: white margins, anti-aliased text, a colour gradient."""
    height, width, _ = rgb.shape
    assert width >= 400
    white = (rgb >= 250).all(axis=2)
    assert white.mean() > 0.2  # margins around the cells
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 60  # text edges and the colour bar's gradient
    label_band = rgb[:, : width // 8]  # the layer names sit left of the cells
    dark = (rgb.astype(int).sum(axis=2) < 200)[:, : width // 8]
    assert dark.sum() > 30 and not white[:, : width // 8].all() and label_band.shape[1] > 0


def test_one_layer_gets_a_readable_figure_whose_cells_follow_the_values():
    image = heatmap_figure([[0.0, 1.0, 2.0, float("nan")]], ["penultimate"], [0, 1, 2, 3])
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and image.shape[2] >= MIN_WIDTH
    rgb = _rgb(image)
    _looks_like_a_labelled_figure(rgb)
    # one pixel per cell along the middle of the row, left to right: dark purple -> yellow, then grey
    row = rgb[rgb.shape[0] // 2]

    def first(colour):
        return int(np.flatnonzero((row == colour).all(axis=1))[0])

    assert first((68, 1, 84)) < first((253, 231, 37)) < first((128, 128, 128))  # smallest, largest, missing


def test_many_layers_and_measurements_keep_labels_apart_and_bad_tables_are_refused():
    image = heatmap_figure(torch.rand(12, 300), [f"model.encoder.layer.{i}" for i in range(12)],
                           list(range(0, 3000, 10)), axis="step")
    assert image.shape[2] >= 600  # 2 pixels per measurement at least
    with pytest.raises(ValueError, match="2-D"):
        heatmap_figure([1.0, 2.0], ["a"], [0, 1])
    with pytest.raises(ValueError, match="2 layer names"):
        heatmap_figure([[1.0, 2.0]], ["a", "b"], [0, 1])


@pytest.mark.parametrize("layers", ["penultimate", ["net.features.2", "penultimate"]])
def test_a_real_fit_writes_the_labelled_figure_to_the_images_tab(tmp_path, layers):
    import lightning.pytorch as L
    from dse_callback_models import LitClassifier, trainer_kwargs
    from lightning.pytorch.loggers import TensorBoardLogger
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dse_monitor import DSEMonitor

    torch.manual_seed(0)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = DSEMonitor(layers=layers, num_samples=32, metrics=["dse", "dsmi_y"], sigma="median_init")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, max_epochs=2, logger=logger)).fit(LitClassifier())
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()
    assert {"dse/heatmap/dse", "dse/heatmap/dsmi_y"} <= set(events.Tags()["images"])
    shown = events.Images("dse/heatmap/dse")
    assert [e.step for e in shown] == sorted(monitor.positions[k]["step"] for k in monitor.history)  # each measurement
    last = np.asarray(Image.open(io.BytesIO(shown[-1].encoded_image_string)).convert("RGB"))
    assert last.shape[1] == shown[-1].width >= 400
    _looks_like_a_labelled_figure(last)
