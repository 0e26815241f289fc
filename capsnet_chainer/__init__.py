"""capsnet-chainer: CapsNet (Sabour, Frosst & Hinton, NIPS 2017) in Chainer."""

from capsnet_chainer import compat  # noqa: F401  (must precede every chainer import)

from capsnet_chainer.model import CapsNet  # noqa: E402,F401
from capsnet_chainer.modelfile import load_model  # noqa: E402,F401
from capsnet_chainer.modelfile import save_model  # noqa: E402,F401

__version__ = '0.1.0'
