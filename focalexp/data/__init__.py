"""Datasets: the built-in Pathfinder-lite task, ImageFolder and CIFAR from a local root, Fashion-MNIST from
Debian's dataset-fashion-mnist (IDX files read by :mod:`focalexp.data.idx`); for detection, the built-in
Shapes-det task (:mod:`focalexp.data.shapes_det`) and COCO roots (:mod:`focalexp.data.coco`), not yet wired
into the run config."""
