"""Training: the updater, the trainer's extensions, snapshots, the non-finite check, the
iterators and data-parallel training with ChainerMN. ``train.py`` puts them together in
its ``main()``, as Chainer's examples do."""

from capsnet_chainer.training.extensions import BestModelSaver  # NOQA
from capsnet_chainer.training.extensions import EpochLimit  # NOQA
from capsnet_chainer.training.iterators import SeededShuffleIterator  # NOQA
from capsnet_chainer.training.nonfinite import NonFiniteError  # NOQA
from capsnet_chainer.training.snapshots import Snapshot  # NOQA
from capsnet_chainer.training.updater import ConverterStateUpdater  # NOQA
