"""Teacher factories: published CIFAR ResNets, far over the student budget."""

from students.catalog import register_model
from students.resnet import ResNetConfig, plan


@register_model("resnet18", "teacher")
def resnet18(num_classes: int = 10) -> ResNetConfig:
    return plan("basic", (2, 2, 2, 2), (64, 128, 256, 512), num_classes=num_classes)


@register_model("resnet34", "teacher")
def resnet34(num_classes: int = 10) -> ResNetConfig:
    return plan("basic", (3, 4, 6, 3), (64, 128, 256, 512), num_classes=num_classes)


@register_model("resnet18x2", "teacher", notes="doubled filters, 64-channel stem")
def resnet18x2(num_classes: int = 10) -> ResNetConfig:
    # The published 44.60M model doubles the stage widths but keeps ResNet-18's 64-channel stem,
    # so its first block widens 64 -> 128 through a 1x1 projection: 44,595,786 parameters.
    return plan("basic", (2, 2, 2, 2), (128, 256, 512, 1024), num_classes=num_classes)


# The CRD benchmark's teachers (Tian et al. 2020, as mdistiller ships them).
@register_model("resnet32x4", "teacher", notes="CRD benchmark, 7.43M at 100 classes")
def resnet32x4(num_classes: int = 10) -> ResNetConfig:
    return plan("basic", (5, 5, 5), (64, 128, 256), stem_width=32, num_classes=num_classes)


@register_model("wrn-40-2", "teacher", notes="CRD benchmark wide ResNet, 2.25M at 100 classes")
def wrn_40_2(num_classes: int = 10) -> ResNetConfig:
    return plan("preact", (6, 6, 6), (32, 64, 128), stem_width=16, num_classes=num_classes)
