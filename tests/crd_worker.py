"""Run by tests/test_kd_methods.py, alone or under torchrun: one CRD training step of a
BatchNorm-free micro student on 16 fixed images (each rank takes its share), then rank 0 saves
the memory bank.

Without BatchNorm a sample's embedding does not depend on the rest of its batch, so two ranks
with 8 images each must leave the bank exactly as one process with all 16 does.
"""

import sys

import torch
from ddp_worker import micro_plan, without_batchnorm
from torch import nn

from distill import distributed
from distill.data.loader import Batch
from distill.kd.objective import KDObjective
from distill.settings import KDSettings, resolve_kd
from students.resnet import CifarResNet

IMAGES = 16
DATA_SIZE = 40


def main(out: str) -> None:
    distributed.init("cpu")
    torch.manual_seed(0)
    student = without_batchnorm(CifarResNet(micro_plan(4)))
    teacher = without_batchnorm(CifarResNet(micro_plan(4)))
    labels = torch.arange(DATA_SIZE) % 4
    kd = resolve_kd(KDSettings("crd", crd_negatives=6, crd_dim=8), 1, 4)
    objective = KDObjective(student, [teacher], kd, input_size=(3, 8, 8), train_labels=labels)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(IMAGES, 3, 8, 8, generator=g)
    index = torch.randperm(DATA_SIZE, generator=g)[:IMAGES]
    rank, world = distributed.rank(), distributed.world_size()
    mine = slice(rank * IMAGES // world, (rank + 1) * IMAGES // world)
    model = nn.parallel.DistributedDataParallel(student) if world > 1 else student
    batch = Batch(images[mine], labels[index[mine]], index[mine])
    _, loss = objective.forward_train(model, batch, 1.0)
    loss.backward()
    objective.sync_grads()
    if distributed.is_main():
        torch.save(
            {"student_bank": objective.bank.student, "teacher_bank": objective.bank.teacher},
            out,
        )
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
    # As distill's own ranks do: an ordinary exit can abort in the destructors of gloo's
    # threads ("terminate called without an active exception"), failing the test at random.
    distributed.exit_now(0)
