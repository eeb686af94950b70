"""Student factories: sub-5M CIFAR ResNets from published reports, plus small CPU variants."""

from students.catalog import register_model
from students.resnet import ResNetConfig, plan


@register_model("resnet18-5m", "student")
def resnet18_5m(num_classes: int = 10) -> ResNetConfig:
    return plan("basic", (2, 2, 2, 2), (64, 128, 232, 268), num_classes=num_classes)


@register_model("resnet18-wide", "student")
def resnet18_wide(num_classes: int = 10) -> ResNetConfig:
    return plan("basic", (2, 2, 2, 2), (64, 192, 192, 256), num_classes=num_classes)


@register_model("resnet20-4m", "student")
def resnet20_4m(num_classes: int = 10) -> ResNetConfig:
    return plan("basic", (2, 3, 2, 2), (64, 128, 192, 256), num_classes=num_classes)


@register_model("resnet22-maxpool", "student", notes="MaxPool(2) + 1x1 conv downsampling")
def resnet22_maxpool(num_classes: int = 10) -> ResNetConfig:
    return plan(
        "basic",
        (2, 2, 2, 2, 2),
        (64, 128, 144, 192, 256),
        num_classes=num_classes,
        downsample="maxpool",
    )


@register_model("resnet50-5m", "student", notes="bottleneck x4")
def resnet50_5m(num_classes: int = 10) -> ResNetConfig:
    return plan("bottleneck", (3, 4, 6, 3), (64, 96, 128, 190), num_classes=num_classes)


@register_model("seresnet24", "student", notes="squeeze-excitation, dropout 0.1")
def seresnet24(num_classes: int = 10) -> ResNetConfig:
    return plan("se", (4, 4, 3), (64, 128, 256), num_classes=num_classes, dropout=0.1)


@register_model("preact-resnet42", "student", notes="pre-activation")
def preact_resnet42(num_classes: int = 10) -> ResNetConfig:
    return plan("preact", (4, 6, 8, 2), (32, 64, 128, 256), stem_width=32, num_classes=num_classes)


@register_model("resnet18-half", "student")
def resnet18_half(num_classes: int = 10) -> ResNetConfig:
    return plan("basic", (2, 2, 2, 2), (32, 64, 128, 256), stem_width=32, num_classes=num_classes)


@register_model("resnet18-quarter", "student", notes="for CPU demos and tests")
def resnet18_quarter(num_classes: int = 10) -> ResNetConfig:
    return plan("basic", (2, 2, 2, 2), (16, 32, 64, 128), stem_width=16, num_classes=num_classes)


# The CRD benchmark's students (Tian et al. 2020, github.com/HobbitLong/RepDistiller, as mdistiller
# ships them): the published CIFAR-100 table distils into these.
@register_model("resnet8x4", "student", notes="CRD benchmark, 1.23M at 100 classes")
def resnet8x4(num_classes: int = 10) -> ResNetConfig:
    return plan("basic", (1, 1, 1), (64, 128, 256), stem_width=32, num_classes=num_classes)


@register_model("wrn-16-2", "student", notes="CRD benchmark wide ResNet, 0.70M at 100 classes")
def wrn_16_2(num_classes: int = 10) -> ResNetConfig:
    # Wide ResNets are pre-activation nets: depth 6n + 4 with n blocks per stage, widths 16k.
    return plan("preact", (2, 2, 2), (32, 64, 128), stem_width=16, num_classes=num_classes)
