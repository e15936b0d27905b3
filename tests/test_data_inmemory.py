"""The in-memory training path (pre-decoded uint8 tensor, tensor augmentation) equals the file path."""
from __future__ import annotations

import pytest
import torch

from irra_core.data import build_dataset
from irra_core.data.datasets import TrainDataset
from irra_core.data.synthetic import make_synthetic_pedes
from irra_core.data.transforms import build_transforms


@pytest.mark.parametrize("img_aug", [False, True])
def test_in_memory_items_equal_file_items_for_the_same_seed(tmp_path, img_aug):
    root = make_synthetic_pedes(tmp_path / "s", "CUHK-PEDES", 9, 2, seed=3)
    samples = build_dataset("CUHK-PEDES", root).train
    transform = build_transforms((64, 32), is_train=True, img_aug=img_aug)
    memory = TrainDataset(samples, transform, 32, mlm=True, seed=4)
    files = TrainDataset(samples, transform, 32, mlm=True, seed=4, cache_bytes=0)
    assert memory.in_memory and not files.in_memory
    for epoch in range(2):
        torch.manual_seed(11 + epoch)
        a = [memory[(i, epoch)] for i in range(len(samples))]
        torch.manual_seed(11 + epoch)
        b = [files[(i, epoch)] for i in range(len(samples))]
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            for key in x:
                assert torch.equal(torch.as_tensor(x[key]), torch.as_tensor(y[key])), key
    # the augmentation is random: two draws differ (flip/crop/erase), so equality above is not vacuous
    torch.manual_seed(0)
    first = torch.stack([memory[i]["images"] for i in range(len(samples))])
    second = torch.stack([memory[i]["images"] for i in range(len(samples))])
    assert not torch.equal(first, second)


def test_transforms_without_a_tensor_twin_stay_on_the_file_path(tmp_path):
    import torchvision.transforms as T

    root = make_synthetic_pedes(tmp_path / "s", "CUHK-PEDES", 9, 2, seed=3)
    samples = build_dataset("CUHK-PEDES", root).train
    odd = T.Compose([T.Resize((64, 32)), T.ColorJitter(0.2), T.ToTensor()])
    assert not TrainDataset(samples, odd, 32).in_memory
