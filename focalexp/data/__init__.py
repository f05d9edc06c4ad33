"""Datasets: the built-in Pathfinder-lite task, ImageFolder and CIFAR from a local root."""
