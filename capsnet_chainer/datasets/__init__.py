"""The data: the IDX files of MNIST and Fashion-MNIST and where they come from, the
shift augmentation, MultiMNIST's pairs, the affNIST experiment's canvases and test
sets, and the protocol of each ``--dataset`` (:mod:`~capsnet_chainer.datasets.protocols`).
"""

from capsnet_chainer.datasets.augment import RandomShift  # NOQA
from capsnet_chainer.datasets.augment import shift_images  # NOQA
from capsnet_chainer.datasets.idx import DatasetError  # NOQA
from capsnet_chainer.datasets.mnist import get_dataset  # NOQA
from capsnet_chainer.datasets.mnist import get_fashion_mnist  # NOQA
from capsnet_chainer.datasets.mnist import get_mnist  # NOQA
from capsnet_chainer.datasets.multimnist import PairSampler  # NOQA
from capsnet_chainer.datasets.placement import RandomPlacement  # NOQA
from capsnet_chainer.datasets.protocols import PROTOCOLS  # NOQA
