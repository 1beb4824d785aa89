"""Applications built on the npuq library: the PTQ benchmark on Fashion-MNIST (``ptq_benchmark``) and
on a pretrained ImageNet network (``ptq_imagenet``), the training of the shipped Fashion-MNIST models
(``training``) and the demo (``demo``). The library itself never imports them."""
