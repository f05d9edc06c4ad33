"""Datasets: the built-in Pathfinder-lite task, ImageFolder and CIFAR from a local root, Fashion-MNIST from
Debian's dataset-fashion-mnist (IDX files read by :mod:`focalexp.data.idx`)."""
