"""capsnet-chainer: CapsNet (Sabour, Frosst & Hinton, NIPS 2017) in Chainer.

Shape letters, the same in every module:

=====  ===========================================================
``B``  batch (or any number of examples, e.g. a test set)
``C``  image or feature channels (1 for MNIST; 256 after conv1)
``H``  ``W``: image or feature-map height and width
``T``  primary capsule types (32)
``N``  grid cells of a type (6 x 6 = 36)
``I``  primary capsules, ``I = T * N`` (1152)
``P``  dimensions of a primary capsule (8)
``J``  digit capsules, one per class (10)
``D``  dimensions of a digit capsule (16)
=====  ===========================================================

Figures lay out their tiles as ``(rows, cols, H, W)``; the convolution kernel names its
output channels ``O``.

The data's way from image to loss (:class:`~capsnet_chainer.model.CapsNet`)::

    image x (B, 1, 28, 28)
      -> conv1 9x9, leaky ReLU           (B, 256, 20, 20)    links.Convolution2D
      -> primary capsules 9x9 stride 2   u (B, I, P)         links.PrimaryCapsules
      -> predictions W_ij u_i            u_hat (B, J, I, D)  functions.prediction_vectors
      -> routing (Procedure 1)           v (B, J, D)         functions.routing
      -> lengths |v_j|                   (B, J)              functions.capsule_length
      -> margin loss (Eq. 4)             scalar              functions.margin_loss
    v masked to one digit (B, J, D)
      -> decoder FC 512, 1024, 784       (B, 1, 28, 28)      links.Decoder
      -> reconstruction loss             scalar              functions.reconstruction_loss

The layers, bottom up (a module imports only from the layers below it):

* leaves: :mod:`~capsnet_chainer.compat` (Chainer 7.8.1 on today's Python and NumPy),
  :mod:`~capsnet_chainer.errors`, :mod:`~capsnet_chainer.fileio` (atomic writes),
  :mod:`~capsnet_chainer.random_state`, :mod:`~capsnet_chainer.inference` (batched
  test-time inference);
* the network: :mod:`~capsnet_chainer.functions` (the paper's equations),
  :mod:`~capsnet_chainer.kernels` (the fast FunctionNodes), :mod:`~capsnet_chainer.links`
  (the layers), :mod:`~capsnet_chainer.model` and :mod:`~capsnet_chainer.baseline_cnn`;
  :mod:`~capsnet_chainer.device` (which device, and which convolution runs there);
* beside it, never imported by it: :mod:`~capsnet_chainer.datasets`,
  :mod:`~capsnet_chainer.evaluation`, :mod:`~capsnet_chainer.io` (model files) and,
  above those, :mod:`~capsnet_chainer.training`;
* :mod:`~capsnet_chainer.cli`: what ``train.py`` and ``analyze.py`` share; the library
  never imports it.
"""

from capsnet_chainer import compat  # noqa: F401  (must precede every chainer import)

from capsnet_chainer.baseline_cnn import BaselineCNN  # noqa: E402,F401
from capsnet_chainer.datasets import DatasetError  # noqa: E402,F401
from capsnet_chainer.datasets import get_dataset  # noqa: E402,F401
from capsnet_chainer.datasets import get_fashion_mnist  # noqa: E402,F401
from capsnet_chainer.datasets import get_mnist  # noqa: E402,F401
from capsnet_chainer.datasets import RandomShift  # noqa: E402,F401
from capsnet_chainer.datasets import shift_images  # noqa: E402,F401
from capsnet_chainer.errors import CapsNetError  # noqa: E402,F401
from capsnet_chainer.errors import SettingError  # noqa: E402,F401
from capsnet_chainer.functions import capsule_length  # noqa: E402,F401
from capsnet_chainer.functions import margin_loss  # noqa: E402,F401
from capsnet_chainer.functions import prediction_vectors  # noqa: E402,F401
from capsnet_chainer.functions import reconstruction_loss  # noqa: E402,F401
from capsnet_chainer.functions import routing  # noqa: E402,F401
from capsnet_chainer.functions import shared_routing  # noqa: E402,F401
from capsnet_chainer.functions import squash  # noqa: E402,F401
from capsnet_chainer.io import load_model  # noqa: E402,F401
from capsnet_chainer.io import ModelFileError  # noqa: E402,F401
from capsnet_chainer.io import save_model  # noqa: E402,F401
from capsnet_chainer.model import CapsNet  # noqa: E402,F401
from capsnet_chainer.training import NonFiniteError  # noqa: E402,F401

__version__ = '0.1.0'
