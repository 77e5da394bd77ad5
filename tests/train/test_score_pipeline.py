"""One measurement, two callers: for the same model, probe and settings, `score`'s values equal the
callback's (from a real Trainer fit: at init, and after one epoch) to 1e-6 bits, for every registry
metric, on image batches and on Hugging Face dict batches from DataCollatorWithPadding."""
from __future__ import annotations

import copy
import math

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dse_monitor
from dse_monitor import DSEMonitor
from dse_monitor.monitor import MonitorConfig
from dse_monitor.registry import METRICS, logged_names

TOL = 1e-6  # bits
ALL = list(METRICS)


class Classifier(L.LightningModule):
    """Any ``net`` trained with cross-entropy; batches are (x, y) tuples or dicts with ``labels``."""

    def __init__(self, net: nn.Module, train: DataLoader, val: DataLoader) -> None:
        super().__init__()
        self.net, self.train_loader, self.val_loader = net, train, val

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, batch):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return self.train_loader

    def val_dataloader(self):
        return self.val_loader


def _fit(module: L.LightningModule, monitor: DSEMonitor) -> L.LightningModule:
    """One epoch with the monitor (at init and at the epoch's end); returns the module as it was at init."""
    initial = copy.deepcopy(module)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[monitor])
    trainer.fit(module)
    assert sorted(monitor.history) == [0, 1]
    return initial


def _assert_same(row: dict, logged: dict, layer: str, not_measured: tuple[str, ...] = ()) -> None:
    names = [n for metric in ALL if metric != "cka_prev" for n in logged_names(metric, MonitorConfig().settings())]
    for name in names:  # cka_prev compares with the previous measurement: score measures each model once
        key = f"dse/{layer}/{name}"
        if name in not_measured or key not in logged:  # said once, never given a made-up value: absent in both
            assert key not in logged and row[name] is None, name
            continue
        assert abs(row[name] - logged[key]) <= TOL, (name, row[name], logged[key])
    assert row["cka_prev"] is None
    assert 1 < row["dse"] < math.log2(row["n"]) - 0.5 and 0.01 < row["dsmi_y"]  # not a degenerate case


def test_image_batches_score_equals_the_callback_at_init_and_after_an_epoch():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(96) % 4
    x = torch.randn(96, 3, 12, 12, generator=g) + 0.7 * y[:, None, None, None]
    train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16, shuffle=True)
    val = DataLoader(TensorDataset(x[48:], y[48:]), batch_size=16)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    module = Classifier(net, train, val)
    settings = dict(num_samples=40, sigma="median", x_size=6, seed=3)
    monitor = DSEMonitor(metrics=ALL, **settings)  # the monitor's own defaults otherwise (float32, ...)
    initial = _fit(module, monitor)

    rows = dse_monitor.score([("init", initial), ("epoch1", module)], val, metrics=ALL, dtype="float32",
                             progress=False, **settings)
    assert rows.failed == {} and [r["n"] for r in rows] == [40, 40]
    _assert_same(rows[0], monitor.history[0], "penultimate")
    _assert_same(rows[1], monitor.history[1], "penultimate")
    assert rows[0]["dse"] != rows[1]["dse"]  # the epoch changed the features: two real comparisons
    # the Trainer-free measurement is the same one, any layer
    m = dse_monitor.measure(module, val, layers=["net.4"], metrics=["dse", "dsmi_x"], **settings)
    assert m.shapes == {"net.4": (40, 8)}
    assert m.values.keys() == {"dse/net.4/dse", "dse/net.4/dsmi_x", "dse/net.4/sigma_ratio"}


def test_score_of_unlabelled_batches_stops_at_the_first_model_naming_the_labels(tmp_path):
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    unlabelled = TensorDataset(torch.randn(30, 4))
    with pytest.raises(ValueError, match=r"metrics \['dsmi_y'\] need labels"):
        dse_monitor.score([("a", net), ("b", net)], unlabelled, tmp_path, metrics=["dse", "dsmi_y"], progress=False)
    assert not (tmp_path / "scores.csv").exists()
    rows = dse_monitor.score([("a", net)], unlabelled, metrics=["dse", "dse_norm"], progress=False)
    assert rows[0]["accuracy"] is None and rows[0]["dse_norm"] == rows[0]["dse"] / math.log2(30)


transformers = pytest.importorskip("transformers")
WORDS = [f"w{i}" for i in range(40)]


def _tokenizer(folder):
    """A BERT WordPiece tokenizer from a vocabulary file written here (no download)."""
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return transformers.BertTokenizerFast(vocab_file=str(vocab))


class TextClassifier(Classifier):
    """A tiny BERT called as Hugging Face models are: ``model(**batch)``, padding in ``attention_mask``."""

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        return self.net(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    def _loss(self, batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return F.cross_entropy(self(**inputs), batch["labels"])


def test_hugging_face_dict_batches_score_equals_the_callback(tmp_path):
    tok = _tokenizer(tmp_path)
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(64):  # the label is which third of the vocabulary the words come from; lengths vary
        label, n = i % 3, 2 + i % 9
        words = torch.randint(13 * label, 13 * label + 13, (n,), generator=g).tolist()
        samples.append(dict(tok(" ".join(WORDS[w] for w in words)), label=label))
    collate = transformers.DataCollatorWithPadding(tok)
    train = DataLoader(samples[:32], batch_size=8, shuffle=True, collate_fn=collate)
    val = DataLoader(samples[32:], batch_size=8, collate_fn=collate)
    assert isinstance(next(iter(val)), transformers.BatchEncoding)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=37, max_position_embeddings=32,
                                     num_labels=3)
    module = TextClassifier(transformers.BertForSequenceClassification(config), train, val)
    settings = dict(num_samples=None, sigma="median", seed=1)
    token_layer = "net.bert.encoder.layer.1"  # [B, T, 32] token states: mean over the real tokens
    monitor = DSEMonitor(layers=["penultimate", token_layer], metrics=ALL, **settings)
    initial = _fit(module, monitor)

    rows = dse_monitor.score([("init", initial), ("epoch1", module)], val, metrics=ALL, dtype="float32",
                             progress=False, **settings)
    assert rows.failed == {} and [r["n"] for r in rows] == [32, 32] and rows[0]["dim"] == 32
    assert rows[0]["accuracy_source"] == "probe"  # logits [B, 3] against the collator's labels
    no_x = ("dsmi_x", "csmi_x")  # token ids have no distances: neither caller gives DSMI(Z;X)
    _assert_same(rows[0], monitor.history[0], "penultimate", no_x)
    _assert_same(rows[1], monitor.history[1], "penultimate", no_x)
    assert "token ids" in rows[0]["note"]
    # the token layer through the Trainer-free measurement, masked pooling included
    m = dse_monitor.measure(module, val, layers=[token_layer], metrics=ALL, **settings)
    logged = monitor.history[1]
    # a first measurement has no cka_prev (the callback's second one has)
    assert {k for k in logged if token_layer in k} - {f"dse/{token_layer}/cka_prev"} == set(m.values)
    for key, value in m.values.items():
        assert abs(value - logged[key]) <= TOL, key
