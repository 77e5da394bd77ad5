"""`dse-monitor score` for real: checkpoints of different quality trained by the main job on the
embedded digits default (several epochs, permuted labels), scored through the CLI, checked against
their own validation accuracy, an independent feature read (timm's forward_head), scipy on the CSV,
the PNG, a rerun that skips everything, refused setting changes, and failures that do not stop the rest."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import dse_monitor
from dse_monitor.functional import diffusion_spectral_entropy, diffusion_spectral_mutual_information
from dse_monitor.train.cli import main
from dse_monitor.train.compare import read_run
from dse_monitor.train.data import ImageDataModule
from dse_monitor.train.model import ImageClassifier
from dse_monitor.train.score_models import WeightsNotFoundError, load_model

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT_EVERY_EPOCH = ('[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", '
                          '"init_args": {"save_top_k": -1, "every_n_epochs": 1}}]')
FAST = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--data.image_size", "16", "--model.backbone_kwargs", '{"channels": [8, 16, 32, 64], "stem_width": 8}',
        "--model.lr", "0.005", "--model.warmup_epochs", "0.5", "--trainer.enable_checkpointing", "true", "--trainer.callbacks", CHECKPOINT_EVERY_EPOCH]
DATA = ["--data.image_size", "16"]


def _fit(config: str, root: Path, epochs: int) -> tuple[list[str], dict[int, float]]:
    """Train with the main job (monitor replaced by a checkpoint per epoch); checkpoints and val_acc by epoch."""
    main(["fit", "--config", str(REPO / "configs" / config), "--trainer.max_epochs", str(epochs),
          "--trainer.default_root_dir", str(root), *FAST])
    log_dir = root / "lightning_logs" / "version_0"
    ckpts = sorted((log_dir / "checkpoints").glob("*.ckpt"), key=lambda p: int(p.name.split("-")[0][6:]))
    return [str(p) for p in ckpts], read_run(log_dir).curves["val_acc"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Five checkpoints: clean labels after 1-3 epochs, permuted labels after 1-2; val_acc of each."""
    root = tmp_path_factory.mktemp("fits")
    clean, clean_acc = _fit("digits.yaml", root / "clean", 3)
    permuted, permuted_acc = _fit("digits_overfit.yaml", root / "permuted", 2)
    assert len(clean) == 3 and len(permuted) == 2
    val_acc = {c: clean_acc[i + 1] for i, c in enumerate(clean)} | {c: permuted_acc[i + 1] for i, c in enumerate(permuted)}
    return clean + permuted, val_acc


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_score_checkpoints_rows_accuracy_correlation_png_and_rerun(trained, tmp_path, capsys):
    ckpts, val_acc = trained
    out = tmp_path / "scores"
    args = ["score", *ckpts, "--config", str(REPO / "configs" / "digits.yaml"), *DATA, "--out", str(out),
            "--x-size", "16", "--metrics", "dse,dsmi_y,dsmi_x,cse"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rows = _rows(out / "scores.csv")
    assert [r["model"] for r in rows] == ckpts  # one row per model, as given, in order
    for r in rows:
        # the whole validation split (359 < 1,000): the probe accuracy is the checkpoint's own val_acc
        assert r["accuracy_source"] == "probe" and abs(float(r["accuracy"]) - val_acc[r["model"]]) < 1e-6
        assert (r["n"], r["dim"], float(r["sigma_value"])) == ("359", "64", 8.0)  # sigma = sqrt(D)
        assert 0 <= float(r["dse"]) <= math.log2(359) + 1e-9 and 0 <= float(r["cse"]) <= math.log2(359) + 1e-9
        assert (r["split"], r["sigma"], r["n_clusters"], r["x_size"]) == ("val", "sqrt_dim", "classes", "16")
    accuracy = np.array([float(r["accuracy"]) for r in rows])
    assert accuracy.max() > 0.5 and accuracy[-1] < 0.3  # the runs differ in quality
    best_clean, last_permuted = rows[int(np.argmax(accuracy[:3]))], rows[-1]
    assert float(best_clean["dsmi_y"]) > float(last_permuted["dsmi_y"])

    # an independent read of one checkpoint: timm's pre-logits features and the functional core
    model = ImageClassifier.load_from_checkpoint(best_clean["model"], map_location="cpu").eval()
    dm = ImageDataModule("digits", image_size=16)
    dm.setup("fit")
    x = torch.stack([dm.val_dataset[i][0] for i in range(len(dm.val_dataset))])
    y = torch.tensor(dm.val_dataset.targets)
    with torch.no_grad():
        z = model.backbone.forward_head(model.backbone.forward_features(x), pre_logits=True)
    assert abs(float(diffusion_spectral_entropy(z, "sqrt_dim", solver="auto")) - float(best_clean["dse"])) < 1e-6
    mi = diffusion_spectral_mutual_information(z, y, sigma="sqrt_dim", seed=0, solver="auto")
    assert abs(float(mi) - float(best_clean["dsmi_y"])) < 1e-6

    # the correlation table is scipy on the CSV, and it is printed
    table = {r["metric"]: r for r in _rows(out / "correlation.csv")}
    assert list(table) == ["dse", "dsmi_y", "dsmi_x", "cse"]
    for metric, entry in table.items():
        values = [float(r[metric]) for r in rows]
        pearson, spearman = stats.pearsonr(values, accuracy), stats.spearmanr(values, accuracy)
        assert int(entry["n"]) == 5
        assert math.isclose(float(entry["pearson"]), pearson.statistic, abs_tol=1e-9)
        assert math.isclose(float(entry["pearson_p"]), pearson.pvalue, rel_tol=1e-6)
        assert math.isclose(float(entry["spearman"]), spearman.statistic, abs_tol=1e-9)
        assert math.isclose(float(entry["spearman_p"]), spearman.pvalue, rel_tol=1e-6)
        line = next(ln for ln in printed.splitlines() if ln.startswith(entry["title"] + " "))
        assert f"{pearson.statistic:.3f}" in line and f"{spearman.statistic:.3f}" in line
    assert "model" in printed and "DSMI(Z;Y)" in printed and Path(ckpts[0]).name in printed

    # the PNG: one panel per metric, three a row, drawn (not blank)
    png = Image.open(out / "scores.png").convert("L")
    assert png.size[0] < 3 * png.size[1] and np.asarray(png).std() > 10  # a grid (three a row), not one long row

    # a rerun skips every model and leaves the files as they were
    before = (out / "scores.csv").read_bytes()
    assert main(args) == 0
    assert "5 of 5 models already in" in capsys.readouterr().out
    assert (out / "scores.csv").read_bytes() == before
    # a rerun on some of them: the correlation still covers every model of scores.csv
    correlation = (out / "correlation.csv").read_bytes()
    assert main(["score", *ckpts[:2], *args[1 + len(ckpts):]]) == 0
    assert (out / "correlation.csv").read_bytes() == correlation

    # a changed setting is refused, naming it; nothing is appended
    assert main([*args, "--sigma", "10"]) == 2
    assert "sigma='sqrt_dim'" in capsys.readouterr().err
    assert main([*args, "--data.image_size", "20"]) == 2
    assert "data.image_size=16" in capsys.readouterr().err
    assert (out / "scores.csv").read_bytes() == before


def test_failures_are_reported_the_rest_goes_on_and_a_model_list_and_accuracy_file_work(trained, empty_caches,
                                                                                        tmp_path, capsys):
    import timm

    ckpts, val_acc = trained
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    weights = tmp_path / "test_resnet.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet").state_dict(), weights)
    listing = tmp_path / "models.txt"
    listing.write_text(f"# checkpoints and a timm model from a local file\n{ckpts[0]}\n{broken}\n"
                       f"timm:test_resnet\ntimm:test_resnet={weights}\n")
    accuracy = tmp_path / "top1.csv"
    accuracy.write_text(f"model,top1_acc\ntimm:test_resnet={weights},0.42\n")
    out = tmp_path / "out"
    args = ["score", str(listing), "--out", str(out), "--config", str(REPO / "configs" / "digits.yaml"), *DATA,
            "--accuracy", str(accuracy), "--x-size", "16"]
    assert main(args) == 1  # some failed: exit status 1 at the end
    captured = capsys.readouterr()
    rows = {r["model"]: r for r in _rows(out / "scores.csv")}
    assert list(rows) == [ckpts[0], f"timm:test_resnet={weights}"]
    assert abs(float(rows[ckpts[0]]["accuracy"]) - val_acc[ckpts[0]]) < 1e-6
    timm_row = rows[f"timm:test_resnet={weights}"]
    assert (timm_row["accuracy"], timm_row["accuracy_source"], timm_row["kind"]) == ("0.42", "file", "timm")
    assert timm_row["dim"] == "96"  # test_resnet's pre-logits width: its head (1,000 classes) gives no accuracy
    failures = {r["model"]: r["error"] for r in _rows(out / "failures.csv")}
    assert set(failures) == {str(broken), "timm:test_resnet"}
    assert "are not on this machine" in failures["timm:test_resnet"]
    assert str(empty_caches / "hf") in failures["timm:test_resnet"]  # where to put it
    assert "timm:test_resnet=/path/to/weights" in failures["timm:test_resnet"]
    assert str(broken) in captured.err and "timm:test_resnet" in captured.err
    # the rerun skips the two scored models and retries the two failed ones
    assert main(args) == 1
    assert "2 of 4 models already in" in capsys.readouterr().out
    assert len(_rows(out / "scores.csv")) == 2


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Fresh Hugging Face and torch hub caches (whatever this machine has cached stays out of the test)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    return tmp_path


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_torchvision_weights_offline_error_names_the_hub_path_then_cache_and_file_load(empty_caches):
    from torchvision import models as tvm

    weights = tvm.get_model_weights("mobilenet_v3_small").DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    with pytest.raises(WeightsNotFoundError) as err:
        load_model("torchvision:mobilenet_v3_small")
    assert f"at {cached}" in str(err.value) and "mobilenet_v3_small=/path/to/weights.pth" in str(err.value)
    reference = tvm.get_model("mobilenet_v3_small", num_classes=1000)
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)  # where the error said: now it loads, offline
    assert _same_outputs(load_model("torchvision:mobilenet_v3_small"), reference)
    other = empty_caches / "mnv3.pth"
    cached.rename(other)
    assert _same_outputs(load_model(f"torchvision:mobilenet_v3_small={other}"), reference)


def test_timm_weights_offline_error_then_the_hugging_face_cache_loads(empty_caches):
    import timm
    from safetensors.torch import save_file

    with pytest.raises(WeightsNotFoundError) as err:
        load_model("test_resnet")  # a bare timm name
    assert str(empty_caches / "hf") in str(err.value) and "timm/test_resnet.r160_in1k" in str(err.value)
    reference = timm.create_model("test_resnet")
    repo = empty_caches / "hf" / "models--timm--test_resnet.r160_in1k"  # the hub's cache layout
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    save_file(reference.state_dict(), str(repo / "snapshots" / "abc123" / "model.safetensors"))
    assert _same_outputs(load_model("timm:test_resnet"), reference)


def test_python_api_modules_and_settings(tmp_path):
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 3
    data = DataLoader(TensorDataset(torch.randn(120, 6, generator=g) + 3 * labels[:, None], labels), batch_size=32)
    torch.manual_seed(0)
    matching = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    other_head = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 5))
    rows = dse_monitor.score([("three", matching), ("five", other_head)], data, tmp_path, num_samples=100,
                             sigma="median", metrics=["dse", "dsmi_y", "dsmi_x", "csmi_y"], x_size=None,
                             progress=False)
    assert [r["model"] for r in rows] == ["three", "five"] and rows.failed == {}
    assert rows[0]["accuracy_source"] == "probe" and rows[1]["accuracy"] is None  # a 5-way head on 3 classes
    assert all(r["n"] == 100 and r["dim"] == 16 and r["sigma"] == "median" for r in rows)
    assert rows[0]["sigma_value"] != rows[1]["sigma_value"]  # each model's own median distance
    written = _rows(tmp_path / "scores.csv")
    assert [r["model"] for r in written] == ["three", "five"] and written[1]["accuracy"] == ""
    with pytest.raises(ValueError, match="score measures each model once"):
        dse_monitor.score([("three", matching)], data, sigma="median_init", progress=False)
    with pytest.raises(ValueError, match="metrics must be distinct names"):
        dse_monitor.score([("three", matching)], data, metrics=["dse", "entropy"], progress=False)
