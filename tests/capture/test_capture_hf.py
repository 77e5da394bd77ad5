"""Hugging Face models built from tiny configs (no downloads), fed padded batches from a real collator.

The features the probe reads must equal masked features computed independently, and must
not change when the same samples are padded to 16 or to 64 tokens.
"""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from dse_monitor.capture import (  # noqa: E402
    FeatureCapture,
    call_module,
    eval_mode,
    resolve_layer,
    resolve_layers,
    split_batch,
    to_device,
)

WORDS = [f"w{i}" for i in range(90)]
LENGTHS = (3, 7, 11, 5, 1, 9)  # real tokens before [CLS]/[SEP]


def _tokenizer():
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


@pytest.fixture(scope="module")
def batches():
    """The same six labelled texts collated by DataCollatorWithPadding to 16 and to 64 tokens."""
    tok = _tokenizer()
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (n,), generator=g).tolist()) for n in LENGTHS]
    samples = [dict(tok(text), label=i % 3) for i, text in enumerate(texts)]
    return {
        length: transformers.DataCollatorWithPadding(tok, padding="max_length", max_length=length)(samples)
        for length in (16, 64)
    }


def _probe(model, spec, batch, pooling="mean"):
    """What the probe pass does: split the batch, resolve the layers, one forward with hooks."""
    pb = split_batch(batch, model)
    layers = resolve_layers(model, spec, lambda: call_module(model, pb))
    with torch.no_grad(), eval_mode(model), FeatureCapture(layers, pooling) as cap:
        cap.attention_mask = pb.attention_mask
        call_module(model, pb)
        return layers, cap.take()


def _masked_rows(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Independent reference: one sample at a time, real tokens only (right padding)."""
    rows = []
    for h, m in zip(hidden, mask):
        real = h[: int(m.sum())]
        rows.append({"mean": real.mean(dim=0), "cls": real[0], "last_token": real[-1]}[how])
    return torch.stack(rows).float()


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=64, num_labels=3,
    )
    return transformers.BertForSequenceClassification(config).eval()


def test_bert_batch_is_passed_as_keyword_arguments_without_labels(bert, batches):
    batch = batches[16]
    assert isinstance(batch, transformers.BatchEncoding) and "labels" in batch
    pb = split_batch(batch, bert)
    assert pb.args == () and sorted(pb.kwargs) == ["attention_mask", "input_ids"]
    assert pb.labels.tolist() == [0, 1, 2, 0, 1, 2] and pb.attention_mask is batch["attention_mask"]
    assert pb.inputs_for_x is None and "token ids" in pb.why_no_x
    moved = to_device(batch, "meta")  # a BatchEncoding stays one (forward_fn may read batch.input_ids)
    assert isinstance(moved, transformers.BatchEncoding) and moved.input_ids.device.type == "meta"
    assert isinstance(pb.to("cpu").raw, transformers.BatchEncoding)
    with torch.no_grad():
        out = call_module(bert, pb)
        expected = bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.loss is None  # labels were not passed
    torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=0)


@pytest.mark.parametrize("pooling", ["mean", "cls", "last_token"])
def test_bert_blocks_equal_masked_features_and_ignore_padding(bert, batches, pooling):
    layers, feats = _probe(bert, ["blocks", "penultimate"], batches[16], pooling)
    assert [layer.name for layer in layers] == ["bert.encoder.layer.0", "bert.encoder.layer.1", "penultimate"]
    assert layers[-1].module_name == "classifier" and layers[-1].read == "input"
    batch = batches[16]
    with torch.no_grad():
        out = bert.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    for i in range(2):
        expected = _masked_rows(out.hidden_states[i + 1], batch["attention_mask"], pooling)
        torch.testing.assert_close(feats[f"bert.encoder.layer.{i}"], expected, rtol=0, atol=1e-6)
    # the classifier reads BERT's pooler output, one vector per sample already
    torch.testing.assert_close(feats["penultimate"], out.pooler_output, rtol=0, atol=1e-6)
    # the same samples padded to 64 tokens: the same features
    _, feats64 = _probe(bert, ["blocks", "penultimate"], batches[64], pooling)
    assert batches[64]["input_ids"].shape == (6, 64)
    for name, z in feats.items():
        torch.testing.assert_close(feats64[name], z, rtol=0, atol=1e-6)


def test_unmasked_mean_would_differ(bert, batches):
    """The guard of the test above: without the mask, padding does change the mean."""
    layers = resolve_layers(bert, "bert.encoder.layer.1")
    means = []
    for length in (16, 64):
        pb = split_batch(batches[length], bert)
        with torch.no_grad(), FeatureCapture(layers) as cap:
            call_module(bert, pb)
            means.append(cap.take()["bert.encoder.layer.1"])
    assert (means[0] - means[1]).abs().max() > 1e-3


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def causal_lm(request):
    torch.manual_seed(0)
    if request.param == "llama":
        config = transformers.LlamaConfig(
            vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3,
        )
        return transformers.LlamaForCausalLM(config).eval(), "model.layers"
    config = transformers.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, pad_token_id=0, bos_token_id=2, eos_token_id=3
    )
    return transformers.GPT2LMHeadModel(config).eval(), "transformer.h"


@pytest.mark.parametrize("pooling", ["last_token", "mean"])
def test_causal_lm_penultimate_is_the_input_of_lm_head_pooled_over_real_tokens(causal_lm, batches, pooling):
    model, blocks = causal_lm
    batch = dict(batches[16])
    batch["labels"] = batch["input_ids"].clone()  # a causal LM's targets: per token, not per sample
    pb = split_batch(batch, model)
    assert "labels" not in pb.kwargs and pb.labels is None and "per token" in pb.why_no_labels
    layers, feats = _probe(model, ["penultimate", "blocks"], batch, pooling)
    assert [layer.name for layer in layers] == [f"{blocks}.0", f"{blocks}.1", "penultimate"]
    assert layers[-1].module_name == "lm_head" and layers[-1].read == "input"
    with torch.no_grad():
        base = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    expected = _masked_rows(base.last_hidden_state, batch["attention_mask"], pooling)  # what lm_head reads
    torch.testing.assert_close(feats["penultimate"], expected, rtol=0, atol=1e-6)
    _, feats64 = _probe(model, ["penultimate", "blocks"], batches[64], pooling)
    for name, z in feats.items():
        torch.testing.assert_close(feats64[name], z, rtol=0, atol=1e-6)


def test_decoder_classifier_score_with_last_token_is_what_the_model_classifies(batches):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, num_labels=3,
    )
    model = transformers.LlamaForSequenceClassification(config).eval()
    layer = resolve_layer(model, "penultimate")
    assert layer.module_name == "score" and layer.read == "input"
    _, feats = _probe(model, "penultimate", batches[16], "last_token")
    with torch.no_grad():
        logits = model(input_ids=batches[16]["input_ids"], attention_mask=batches[16]["attention_mask"]).logits
    # the model pools the last non-padding token before `score`: the same vector
    torch.testing.assert_close(model.score(feats["penultimate"]), logits, rtol=0, atol=1e-6)


def test_hf_image_classifier_reads_pixel_values_by_keyword_and_its_classifier_input():
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, num_labels=3,
    )
    model = transformers.ViTForImageClassification(config).eval()
    batch = {"pixel_values": torch.randn(4, 3, 16, 16), "labels": torch.tensor([0, 1, 2, 0])}
    pb = split_batch(batch, model)
    assert sorted(pb.kwargs) == ["pixel_values"] and pb.inputs_for_x is batch["pixel_values"]
    layers, feats = _probe(model, ["penultimate", "blocks"], batch)
    vit_layers = [name for name, m in model.named_modules() if type(m).__name__ == "ViTLayer"]  # vit.layers.N in v5
    assert [layer.name for layer in layers] == [*vit_layers, "penultimate"] and len(vit_layers) == 2
    assert layers[-1].module_name == "classifier"
    with torch.no_grad():
        out = model.vit(pixel_values=batch["pixel_values"], output_hidden_states=True)
    torch.testing.assert_close(feats["penultimate"], out.last_hidden_state[:, 0], rtol=0, atol=1e-6)  # the CLS token
    torch.testing.assert_close(feats[vit_layers[0]], out.hidden_states[1].mean(dim=1), rtol=0, atol=1e-6)
