"""The fast kernels: FunctionNodes whose forward and backward are a few large matrix
products, each tested against the plain equations of :mod:`capsnet_chainer.functions`.

:mod:`~capsnet_chainer.kernels.conv` (a valid convolution on channels-last images, bias
and leaky ReLU fused), :mod:`~capsnet_chainer.kernels.prediction` (the prediction
vectors, Eq. 2), :mod:`~capsnet_chainer.kernels.routing` (routing by agreement, and
the predictions of shared maps fused with it) and
:mod:`~capsnet_chainer.kernels.margin_loss` (the capsules' lengths and their margin
loss, Eq. 4, in one node). Each kernel module has the name of the function of
:mod:`capsnet_chainer.functions` it computes, so that :mod:`capsnet_chainer.links` and
:mod:`capsnet_chainer.model` choose between them in one line (``if self.fast:``). The
``*_cuda`` modules hold CUDA kernels that the kernels call on CuPy arrays, each off
until measured on a GPU.
"""
