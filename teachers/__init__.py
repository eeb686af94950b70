"""Teacher architectures: large CIFAR ResNets, registered in `teachers.zoo`."""
