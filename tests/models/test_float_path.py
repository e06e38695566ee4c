"""The float layer's record: rescaling a set's inputs keeps them where the store keeps activations."""

import torch

from dpq.models.activations import ActivationStore, OffloadedList
from dpq.models.float_path import FloatLayerRecord


def _record(store: ActivationStore) -> FloatLayerRecord:
    inputs = []
    for _ in range(2):
        lst = store.new_list()
        for b in range(3):
            lst.append(torch.full((1, 4, 5), float(b + 1)))
        inputs.append(lst)
    return FloatLayerRecord([], inputs, store.new_list, store.release)


def test_scaled_inputs_stay_offloaded_and_free_the_originals(tmp_path):
    store = ActivationStore(tmp_path)
    rec = _record(store)
    old_dir = rec.inputs[1].dir
    s = torch.tensor([1.0, 2.0, 4.0, 8.0, 0.5])
    rec.scale_inputs(1, s)
    assert isinstance(rec.inputs[1], OffloadedList) and not old_dir.exists()
    for b, x in enumerate(rec.inputs[1]):
        torch.testing.assert_close(x, torch.full((1, 4, 5), float(b + 1)) / s)
    assert rec.inputs[0][2].eq(3.0).all()  # the other set is untouched
    store.close()
    assert not any(tmp_path.iterdir())


def test_scaled_inputs_in_memory_by_default():
    rec = FloatLayerRecord([], [[torch.ones(1, 2, 3)]])
    rec.scale_inputs(0, torch.tensor([2.0, 4.0, 1.0]))
    assert isinstance(rec.inputs[0], list)
    torch.testing.assert_close(rec.inputs[0][0], torch.tensor([0.5, 0.25, 1.0]).expand(1, 2, 3))
