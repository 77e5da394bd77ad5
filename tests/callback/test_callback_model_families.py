"""The monitor on the models people train now, with real Trainers: Hugging Face encoders and decoders
fed padded dict batches, compiled modules, and every block of timm models."""
from __future__ import annotations

import warnings

import lightning.pytorch as L
import pytest
import timm
import torch
from dse_callback_models import LitClassifier, TinyCNN, make_data, trainer_kwargs
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch._dynamo.utils import counters
from torch.utils.data import DataLoader

from dse_monitor import DSEMonitor, diffusion_spectral_entropy
from dse_monitor.monitor import DSEMonitorWarning

WORDS = [f"w{i}" for i in range(90)]


def _fit(tmp_path, model, monitor, **kw):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        L.Trainer(callbacks=[monitor], **trainer_kwargs(tmp_path, **kw)).fit(model)
    return [str(w.message) for w in record if issubclass(w.category, DSEMonitorWarning)]


# ----------------------------------------------------------------------------- Hugging Face
@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(24):
        n = int(torch.randint(1, 12, (1,), generator=g))
        text = " ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (n,), generator=g).tolist())
        samples.append(dict(tokenizer(text), labels=i % 3))
    return transformers, tokenizer, samples


class LitHF(L.LightningModule):
    """A LightningModule around a Hugging Face model, trained on collated dict batches."""

    def __init__(self, model, tokenizer, samples, max_length):
        super().__init__()
        self.model = model
        from transformers import DataCollatorWithPadding

        collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
        self.loader = lambda: DataLoader(samples, batch_size=8, collate_fn=collate)

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)

    def training_step(self, batch, batch_idx):
        return self(batch["input_ids"], batch["attention_mask"]).logits.float().mean()  # lr 0: any scalar

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)  # keep the weights: compare with a fresh forward

    def train_dataloader(self):
        return self.loader()

    def val_dataloader(self):
        return self.loader()


def _masked(hidden, mask, how):
    """Independent reference, one sample at a time over its real tokens (right padding)."""
    rows = []
    for h, m in zip(hidden, mask):
        real = h[: int(m.sum())]
        rows.append(real.mean(dim=0) if how == "mean" else real[-1])
    return torch.stack(rows).float()


def _run_hf(tmp_path, hf, make_model, max_length, **monitor_kw):
    transformers, tokenizer, samples = hf
    torch.manual_seed(0)
    module = LitHF(make_model(transformers), tokenizer, samples, max_length)
    monitor = DSEMonitor(num_samples=None, sigma="median", **monitor_kw)
    messages = _fit(tmp_path / str(max_length), module, monitor, max_epochs=1, limit_train_batches=1,
                    limit_val_batches=0)
    return module, monitor, messages


def _bert(transformers):
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=64, num_labels=3)
    return transformers.BertForSequenceClassification(config)


def test_bert_dict_batches_masked_and_unchanged_by_padding(tmp_path, hf):
    kw = dict(layers=["model.bert.encoder.layer.1", "penultimate"], metrics=["dse", "dsmi_y", "dsmi_x"])
    module, monitor, messages = _run_hf(tmp_path, hf, _bert, 16, **kw)
    _, monitor64, _ = _run_hf(tmp_path, hf, _bert, 64, **kw)
    # token ids are no X: said once, DSMI(Z;X) not logged; DSMI(Z;Y) from the batch's per-sample labels
    assert sum("token ids" in m and "DSMI(Z;X)" in m for m in messages) == 1, messages
    values = monitor.history[0]
    assert "dse/model.bert.encoder.layer.1/dsmi_x" not in values and "dse/penultimate/dsmi_y" in values
    batch = next(iter(module.loader()))
    bert = module.model.bert.eval()
    with torch.no_grad():
        out = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    expected = {
        "model.bert.encoder.layer.1": _masked(out.hidden_states[2], batch["attention_mask"], "mean"),
        "penultimate": out.pooler_output,  # the classifier's input
    }
    ids = torch.cat([b["input_ids"] for b in module.loader()])
    assert ids.shape == (24, 16)
    for layer, z in expected.items():
        full = torch.cat([z] + [_layer_rows(module, b, layer) for b in list(module.loader())[1:]])
        dse = float(diffusion_spectral_entropy(full, "median"))
        assert values[f"dse/{layer}/dse"] == pytest.approx(dse, abs=1e-6)
        # the same samples padded to 64 tokens give the same values
        assert monitor64.history[0][f"dse/{layer}/dse"] == pytest.approx(values[f"dse/{layer}/dse"], abs=1e-6)
        assert monitor64.history[0][f"dse/{layer}/dsmi_y"] == pytest.approx(values[f"dse/{layer}/dsmi_y"], abs=1e-6)


def _layer_rows(module, batch, layer):
    with torch.no_grad():
        out = module.model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                output_hidden_states=True)
    if layer == "penultimate":
        return out.pooler_output
    return _masked(out.hidden_states[2], batch["attention_mask"], "mean")


def _gpt2(transformers):
    config = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, pad_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def test_causal_lm_last_token_of_the_lm_head_input(tmp_path, hf):
    module, monitor, _ = _run_hf(tmp_path, hf, _gpt2, 16, layers="penultimate", metrics=["dse", "dsmi_y"],
                                 pooling="last_token")
    _, monitor64, _ = _run_hf(tmp_path, hf, _gpt2, 64, layers="penultimate", metrics=["dse", "dsmi_y"],
                              pooling="last_token")
    rows = []
    with torch.no_grad():
        for b in module.loader():
            base = module.model.eval().transformer(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            rows.append(_masked(base.last_hidden_state, b["attention_mask"], "last"))
    dse = float(diffusion_spectral_entropy(torch.cat(rows), "median"))
    assert monitor.history[0]["dse/penultimate/dse"] == pytest.approx(dse, abs=1e-6)
    assert monitor64.history[0]["dse/penultimate/dse"] == pytest.approx(dse, abs=1e-6)
    assert monitor64.history[0]["dse/penultimate/dsmi_y"] == pytest.approx(
        monitor.history[0]["dse/penultimate/dsmi_y"], abs=1e-6)


# ----------------------------------------------------------------------------- compiled
class GraphCount(L.Callback):
    """Records dynamo's count of compiled graphs at every hook the monitor measures in."""

    def __init__(self):
        self.counts: list[int] = []

    def on_train_start(self, trainer, pl_module):
        self.counts.append(counters["stats"]["unique_graphs"])

    on_train_epoch_end = on_train_start


def test_compiled_submodule_is_probed_eagerly_without_recompiling(tmp_path):
    def run(compiled):
        torch.manual_seed(0)
        net = TinyCNN()
        if compiled:
            net = torch.compile(net, backend="eager")
        monitor = DSEMonitor(num_samples=32, metrics="dse", layers=["penultimate", "net.features"])
        before, after = GraphCount(), GraphCount()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            L.Trainer(callbacks=[before, monitor, after], **trainer_kwargs(tmp_path / str(compiled), max_epochs=2)).fit(
                LitClassifier(net=net))
        return monitor, [str(w.message) for w in record], before.counts, after.counts

    eager_monitor, _, _, _ = run(False)
    compiled_monitor, messages, before, after = run(True)
    assert not any("did not run" in m for m in messages)
    assert sorted(compiled_monitor.history) == [0, 1, 2]
    for step, values in eager_monitor.history.items():
        for key, value in values.items():
            assert compiled_monitor.history[step][key] == pytest.approx(value, abs=1e-6), (step, key)
    # training compiled its graphs, the probe passes (between before and after) compiled none
    assert before[-1] > 0 and before == after


# ----------------------------------------------------------------------------- layer sets
@pytest.mark.parametrize("name, kwargs, blocks, check", [
    ("resnet10t", {}, ["net.layer1", "net.layer2", "net.layer3", "net.layer4"], "net.layer3"),
    ("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "depth": 2}, ["net.blocks.0", "net.blocks.1"],
     "net.blocks.1"),
])
def test_blocks_preset_on_timm_logs_every_block_and_a_heat_map(tmp_path, name, kwargs, blocks, check):
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=4, **kwargs)
    model = LitClassifier(net=net, lr=0.0)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    monitor = DSEMonitor(layers="blocks", num_samples=32, metrics=["dse"], sigma="median")
    _fit(tmp_path, model, monitor, max_epochs=1, logger=logger)
    assert sorted(k.split("/")[1] for k in monitor.history[0] if k.endswith("/dse")) == blocks
    # one value, independently: the block's output pooled as the monitor pools it
    out = {}
    module = dict(model.named_modules())[check]
    hook = module.register_forward_hook(lambda m, i, o: out.setdefault("z", o))
    x = torch.stack([make_data(64, 16, seed=2)[i][0] for i in monitor.probe_indices])
    with torch.no_grad():
        model.eval()(x)
    hook.remove()
    z = out["z"].mean(dim=(2, 3)) if out["z"].ndim == 4 else out["z"].mean(dim=1)
    # (after the epoch: BatchNorm's running statistics moved during it, the weights did not: lr 0)
    assert monitor.history[1][f"dse/{check}/dse"] == pytest.approx(
        float(diffusion_spectral_entropy(z, "median")), abs=1e-6)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload()
    assert "dse/heatmap/dse" in events.Tags()["images"]
    image = events.Images("dse/heatmap/dse")[-1]
    assert image.width >= 400  # the labelled figure (tests/monitor/test_heatmap.py reads it)
