"""The plots of an analysis: the confusion matrix, the error curves of a training log,
and the most confident mistakes beside their reconstructions."""

from capsnet_chainer.evaluation import plots  # before chainer: restores numpy.sctypes

import numpy
from chainer import testing

from capsnet_chainer.evaluation import figures
from conftest import independent_decode
from conftest import row_cmaps


def test_plot_confusion():
    matrix = numpy.array([[8, 2], [0, 5]])
    ax = plots.plot_confusion(matrix)
    numpy.testing.assert_allclose(ax.images[0].get_array(), [[0.8, 0.2], [0, 1]])
    assert sorted(text.get_text() for text in ax.texts) == ['2', '5', '8']
    assert '15 test images' in ax.get_title()


LOG = [{'epoch': 1, 'main/accuracy': 0.9, 'validation/main/accuracy': 0.95},
       {'epoch': 2, 'main/accuracy': 0.99, 'validation/main/accuracy': 0.995,
        'heldout/main/accuracy': 0.996},
       {'epoch': 3, 'main/loss': 0.1}]


def test_error_curves_are_percent_errors_of_the_entries_that_have_them():
    curves = plots.error_curves(LOG)
    assert list(curves) == ['main/accuracy', 'heldout/main/accuracy',
                            'validation/main/accuracy']
    numpy.testing.assert_allclose(curves['main/accuracy'][0], [1, 2])
    numpy.testing.assert_allclose(curves['main/accuracy'][1], [10, 1])
    numpy.testing.assert_allclose(curves['heldout/main/accuracy'][0], [2])
    numpy.testing.assert_allclose(curves['heldout/main/accuracy'][1], [0.4])
    numpy.testing.assert_allclose(curves['validation/main/accuracy'][1], [5, 0.5])
    assert plots.error_curves([{'epoch': 1, 'main/loss': 0.1}]) == {}


def test_plot_error_curves_marks_the_kept_model_and_the_targets():
    ax = plots.plot_error_curves(LOG, kept=('validation/main/accuracy', 2),
                                 targets=plots.MNIST_ERRORS)
    train, heldout, test, mark, paper, reference = ax.lines
    numpy.testing.assert_allclose(test.get_ydata(), [5, 0.5])
    numpy.testing.assert_allclose(heldout.get_xydata(), [[2, 0.4]])
    numpy.testing.assert_allclose(mark.get_xydata(), [[2, 0.5]])
    assert paper.get_ydata()[0] == 0.25 and reference.get_ydata()[0] == 0.34
    assert ax.get_yscale() == 'log'
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert 'the kept model: epoch 2, 0.50%' in labels
    assert 'paper (Table 1): 0.25%' in labels


def test_plot_error_curves_without_the_kept_epoch_draws_no_mark():
    ax = plots.plot_error_curves(LOG, kept=('validation/main/accuracy', 7))
    assert len(ax.lines) == 3


def test_plot_misclassified(model, samples):
    x, t = samples
    scores = numpy.full((20, 10), 0.1, numpy.float32)
    scores[numpy.arange(20), (t + 1) % 10] = 0.9  # every prediction is the next digit
    index = [5, 0, 12]
    ax = plots.plot_misclassified(model, x, t, scores, index)
    pred = (t[index] + 1) % 10
    tiles = numpy.stack((x[index, 0], independent_decode(model, x[index], pred),
                         independent_decode(model, x[index], t[index])))
    names = row_cmaps([figures.GIVEN_CMAP, figures.RECON_CMAP, figures.RECON_CMAP], 3)
    R, C = 3, 3
    assert len(ax.images) == R * C
    for k, image in enumerate(ax.images):
        r, c = divmod(k, C)
        numpy.testing.assert_allclose(image.get_array(), tiles[r, c], atol=1e-6)
        assert image.get_cmap().name == names[r][c]
    titles = [text.get_text() for text in ax.texts]
    assert titles == ['true {}\npred {}\n0.90'.format(t[i], (t[i] + 1) % 10) for i in index]
    empty = plots.plot_misclassified(model, x, t, scores, [])
    assert len(empty.images) == 0 and 'no misclassified' in empty.texts[0].get_text()


def test_misclassified_tiles_are_inputs_and_reconstructions_as_predicted_and_true(
        model, samples):
    x, t = samples
    scores = numpy.full((20, 10), 0.1, numpy.float32)
    scores[numpy.arange(20), (t + 3) % 10] = 0.9
    index = [7, 2]
    tiles = plots.misclassified_tiles(model, x, t, scores, index)
    assert tiles.shape == (3, 2, 28, 28)
    numpy.testing.assert_array_equal(tiles[0], x[index, 0])
    numpy.testing.assert_allclose(tiles[1], independent_decode(model, x[index],
                                                               (t[index] + 3) % 10),
                                  atol=1e-6)
    numpy.testing.assert_allclose(tiles[2], independent_decode(model, x[index], t[index]),
                                  atol=1e-6)


def test_plot_misclassified_without_reconstructions_draws_the_inputs_alone(samples):
    x, t = samples
    scores = numpy.zeros((20, 10), numpy.float32)
    scores[numpy.arange(20), (t + 1) % 10] = 2.5  # logits of a CNN
    ax = plots.plot_misclassified(None, x, t, scores, [4, 9], reconstructions=False)
    assert len(ax.images) == 2
    numpy.testing.assert_array_equal(ax.images[1].get_array(), x[9, 0])
    assert ax.images[0].get_cmap().name == figures.GIVEN_CMAP
    assert [text.get_text() for text in ax.texts] == [
        'true {}\npred {}\n2.50'.format(t[i], (t[i] + 1) % 10) for i in (4, 9)]


def test_the_targets_and_the_curves_of_a_log():
    assert plots.MNIST_ERRORS == (('paper (Table 1)', 0.25), ('reference implementation', 0.34))
    assert [key for key, _ in plots.ERROR_CURVES] == [
        'main/accuracy', 'heldout/main/accuracy', 'validation/main/accuracy']


def test_plot_confusion_of_no_images_has_no_accuracy():
    ax = plots.plot_confusion(numpy.zeros((3, 3), int))
    assert len(ax.texts) == 0
    assert '0 test images, accuracy nan' in ax.get_title()


testing.run_module(__name__, __file__)
