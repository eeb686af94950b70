"""Student architectures (sub-budget CIFAR ResNets) and the one parametrized ResNet class."""
