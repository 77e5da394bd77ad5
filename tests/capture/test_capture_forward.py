"""Calling the model as training does: keyword arguments for dict batches it accepts, inputs otherwise."""
from __future__ import annotations

from collections import UserDict

import pytest
import torch
from torch import nn

from dse_monitor.capture import ProbeBatch, call_module, split_batch, to_device


class Tokens(nn.Module):
    """forward(input_ids, attention_mask=None, labels=None): an HF-style signature."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.calls: list[dict] = []

    def forward(self, input_ids, attention_mask=None, labels=None):
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
        return self.emb(input_ids)


class Image(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))


IDS = torch.tensor([[1, 2, 0], [3, 0, 0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_dict_batch_with_accepted_keys_goes_in_as_keyword_arguments_without_labels():
    model = Tokens()
    for batch in ({"input_ids": IDS, "attention_mask": MASK, "labels": torch.tensor([1, 0])},
                  UserDict(input_ids=IDS, attention_mask=MASK, label=torch.tensor([1, 0]))):  # a Mapping, not a dict
        pb = split_batch(batch, model)
        assert pb.args == () and set(pb.kwargs) == {"input_ids", "attention_mask"}
        assert pb.labels.tolist() == [1, 0] and pb.attention_mask is MASK and pb.inputs_for_x is None
        call_module(model, pb)
        assert model.calls[-1]["attention_mask"] is MASK and model.calls[-1]["labels"] is None


def test_forward_taking_kwargs_and_required_labels():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Tokens()

        def forward(self, **batch):  # e.g. a LightningModule passing the batch on to an HF model
            return self.inner(**batch)

    pb = split_batch({"input_ids": IDS, "attention_mask": MASK, "labels": torch.tensor([1, 0])}, Wrapped())
    assert set(pb.kwargs) == {"input_ids", "attention_mask"}

    class NeedsLabels(nn.Module):
        def forward(self, input_ids, labels):
            return input_ids + labels[:, None]

    pb = split_batch({"input_ids": IDS, "labels": torch.tensor([1, 0])}, NeedsLabels())
    assert set(pb.kwargs) == {"input_ids", "labels"}  # required by forward: kept
    assert call_module(NeedsLabels(), pb).tolist() == [[2, 3, 1], [3, 0, 0]]


def test_image_batches_keep_todays_behaviour():
    x, y = torch.randn(2, 3, 2, 2), torch.tensor([1, 0])
    model = Image()
    for batch in ((x, y), [x, y, "meta"], {"image": x, "label": y}, {"pixel_values": x, "labels": y}):
        pb = split_batch(batch, model)
        assert pb.args[0] is x and pb.kwargs == {} and pb.labels is y
        assert pb.inputs_for_x is x and pb.why_no_x is None and pb.attention_mask is None
    pb = split_batch({"x": x, "y": y}, model)  # keys named like forward's parameters: by keyword
    assert pb.kwargs == {"x": x} and pb.labels is y and pb.inputs_for_x is x
    torch.testing.assert_close(call_module(model, pb), model(x))
    pb = split_batch(x, model)
    assert pb.args == (x,) and pb.labels is None
    with pytest.raises(ValueError, match="batch_fn.*forward_fn"):
        split_batch({"foo": x}, model)


def test_tuple_of_encoding_and_labels_and_batch_fn_forms():
    model = Tokens()
    pb = split_batch(({"input_ids": IDS, "attention_mask": MASK}, torch.tensor([1, 0])), model)
    assert set(pb.kwargs) == {"input_ids", "attention_mask"} and pb.labels.tolist() == [1, 0]
    raw = {"ids": IDS, "m": MASK, "cls": torch.tensor([0, 1])}
    pb = split_batch(raw, model, batch_fn=lambda b: (b["ids"], b["cls"], b["m"]))
    assert pb.args == (IDS,) and pb.attention_mask is MASK and pb.labels.tolist() == [0, 1] and pb.raw is raw
    pb = split_batch(raw, model, batch_fn=lambda b: ({"input_ids": b["ids"], "attention_mask": b["m"]}, b["cls"]))
    assert set(pb.kwargs) == {"input_ids", "attention_mask"} and pb.attention_mask is MASK
    own = ProbeBatch(args=(IDS,), labels=torch.tensor([0, 1]))
    assert split_batch(raw, model, batch_fn=lambda b: own).raw is raw
    with pytest.raises(ValueError, match="batch_fn must return"):
        split_batch(raw, model, batch_fn=lambda b: b["ids"])


def test_forward_fn_gets_the_raw_batch_and_to_moves_everything():
    model = Tokens()
    raw = {"input_ids": IDS, "attention_mask": MASK, "labels": torch.tensor([1, 0])}
    pb = split_batch(raw, model).to("cpu")
    out = call_module(model, pb, forward_fn=lambda m, b: m(b["input_ids"][:, :1]))
    assert out.shape == (2, 1, 4)
    converted = pb.convert_call(lambda obj: to_device(obj, "meta"))
    assert converted.kwargs["input_ids"].device.type == "meta" and converted.attention_mask.device.type == "cpu"
    moved = to_device(UserDict(a=torch.zeros(1)), "meta")
    assert isinstance(moved, UserDict) and moved["a"].device.type == "meta"


def test_token_ids_give_no_x_and_float_inputs_do():
    pb = split_batch((IDS, torch.tensor([0, 1])), Tokens())
    assert pb.inputs_for_x is None and "token ids" in pb.why_no_x
    images_u8 = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)  # integer, but an image
    assert split_batch((images_u8,), Image()).inputs_for_x is images_u8


def test_the_signature_of_a_compiled_module_is_its_original_forward():
    class TwoInputs(nn.Module):
        def forward(self, image, scale):
            return image * scale

    batch = {"image": torch.ones(2, 3), "scale": torch.tensor(2.0)}
    compiled = torch.compile(TwoInputs(), backend="eager")  # forward(*args, **kwargs) on the wrapper
    pb = split_batch(batch, compiled)
    assert set(pb.kwargs) == {"image", "scale"} and pb.inputs_for_x is batch["image"]
