"""Run by tests/test_distributed.py, alone or under torchrun: train a BatchNorm-free micro ResNet
with `fit` on the tiny image folder and write its checkpoint (rank 0).

Without BatchNorm (or with SyncBN, which needs GPUs) a sample's gradient does not depend on the
other samples in its batch, so 2 processes x batch b and 1 process x batch 2b compute the same
mean gradient over the same images at every step: the classic DDP equivalence.
"""

import sys

import torch
from torch import nn

from distill import distributed
from distill.data import DataSettings, load_data
from distill.settings import AugmentSettings, Recipe, RunSettings
from distill.train import fit
from students.resnet import CifarResNet, plan


def without_batchnorm(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())
    return model


def micro_plan(num_classes: int):
    return plan("basic", (1, 1), (8, 16), stem_width=8, num_classes=num_classes)


def main(folder: str, cache: str, out: str, batch_size: int) -> None:
    data = load_data(DataSettings(folder, cache_dir=cache, val_size=20))
    torch.manual_seed(0)
    model = without_batchnorm(CifarResNet(micro_plan(data.num_classes)))
    # lr tuned at a global batch of 32: both layouts below run a global batch of 32.
    recipe = Recipe(
        "ddp-test",
        epochs=2,
        batch_size=batch_size,
        lr=0.05,
        lr_batch=32,
        schedule="constant",
        amp=False,
        augment=AugmentSettings(crop_pad=0, flip=False),
    )
    run = RunSettings(out, "cpu", quiet=True)
    fit(model, data, recipe, run, kind="teacher", arch="micro-nobn")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
    # As distill's own ranks do: an ordinary exit can abort in the destructors of gloo's
    # threads ("terminate called without an active exception"), failing the test at random.
    distributed.exit_now(0)
