"""The textbook trainer distill is measured against: torchvision's ImageFolder with per-image
RandomCrop/Flip/ToTensor/Normalize transforms, a DataLoader with worker processes, fp32, one
epoch of the same model and optimizer on the same number of images, validation on held-out
images, then the weights saved. Run as a command (bench/time_split.py --compare times it from
process start to exit next to `distill teacher train`):

  python bench/dataloader_trainer.py --data DIR --train-size 10000 --val-size 5000 --out m.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from distill.optim import make_optimizer
from distill.recipes import get_recipe
from distill.registry import create_model

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--arch", default="resnet18-quarter")
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--val-size", type=int, default=5_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    root = args.data / "train" if (args.data / "train").is_dir() else args.data
    normalize = T.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_tf = T.Compose(
        [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
    )
    val_tf = T.Compose([T.ToTensor(), normalize])
    order = torch.randperm(len(ImageFolder(str(root))), generator=torch.Generator().manual_seed(0))
    val_idx = order[: args.val_size].tolist()
    train_idx = order[args.val_size : args.val_size + args.train_size].tolist()
    train = DataLoader(
        Subset(ImageFolder(str(root), train_tf), train_idx),
        args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
    )
    val = DataLoader(Subset(ImageFolder(str(root), val_tf), val_idx), 500, num_workers=args.workers)
    model = create_model(args.arch, 10)
    recipe = get_recipe("quick")
    optimizer = make_optimizer(model, recipe, recipe.lr)
    model.train()
    for x, y in train:
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    correct = seen = 0
    with torch.inference_mode():
        for x, y in val:
            correct += int((model(x).argmax(1) == y).sum())
            seen += len(y)
    torch.save(model.state_dict(), args.out)
    print(f"val top-1 {correct / seen:.2%}")


if __name__ == "__main__":
    main()
