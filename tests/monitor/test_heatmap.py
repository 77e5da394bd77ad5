"""The layers x measurements heat-map image, written to a real TensorBoard event file."""
from __future__ import annotations

import pytest
import torch

from dse_monitor.monitor.heatmap import heatmap_image


def test_rows_are_layers_columns_measurements_and_colours_follow_the_values():
    values = torch.tensor([[0.0, 1.0, 2.0], [3.0, float("nan"), 6.0]])
    image = heatmap_image(values, cell_height=4)
    assert image.shape == (3, 8, 3 * 16) and image.dtype == torch.uint8
    cells = image[:, ::4, ::16].permute(1, 2, 0).tolist()  # one pixel per cell, [layers, measurements, rgb]
    assert cells[1][1] == [128, 128, 128]  # missing
    assert cells[0][0] == [68, 1, 84] and cells[1][2] == [253, 231, 37]  # smallest dark, largest yellow
    brightness = [sum(cells[r][c]) for r, c in ((0, 0), (0, 1), (0, 2), (1, 0))]
    assert brightness == sorted(brightness)  # viridis gets brighter with the value
    assert heatmap_image(torch.ones(1, 400)).shape == (3, 16, 800)  # 2 px per column at least
    assert heatmap_image([[5.0, 5.0]])[:, 0, 0].tolist() == heatmap_image([[0.0, 1.0, 0.5]])[:, 0, 32].tolist()
    with pytest.raises(ValueError, match="2-D"):
        heatmap_image([1.0, 2.0])


def test_the_image_goes_through_summary_writer(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    image = heatmap_image(torch.rand(4, 10))
    with SummaryWriter(tmp_path) as writer:
        writer.add_image("dse/layers/DSE", image, global_step=3)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    (stored,) = events.Images("dse/layers/DSE")
    assert (stored.step, stored.height, stored.width) == (3, 4 * 16, 10 * 16)
