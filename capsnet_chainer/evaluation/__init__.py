"""Evaluation of a trained network: metrics on a test set, the figures of its capsules
(the paper's Figs. 3 to 5) and the plots of an analysis."""

from capsnet_chainer.evaluation.metrics import classification_metrics  # NOQA
from capsnet_chainer.evaluation.metrics import score  # NOQA
