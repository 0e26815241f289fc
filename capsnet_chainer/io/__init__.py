"""Files of trained networks: our model files (and trainer snapshots as model files),
the reference implementation's format, and the provenance they record."""

from capsnet_chainer.io.modelfile import load_model  # NOQA
from capsnet_chainer.io.modelfile import ModelFileError  # NOQA
from capsnet_chainer.io.modelfile import save_model  # NOQA
