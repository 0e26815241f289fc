"""A folder of one's own images: the layout, grey and colour, sizes, the held-out split,
and one clear error for each thing that can be wrong."""

import capsnet_chainer  # noqa: F401  (before chainer: restores numpy.sctypes)

import os

import numpy
import pytest
from chainer import testing

from capsnet_chainer.datasets import folder
from capsnet_chainer.datasets.idx import DatasetError
from capsnet_chainer.errors import SettingError
from official_files import write_image
from official_files import write_image_folder


def test_train_and_test_folders(tmp_path):
    root = write_image_folder(str(tmp_path), per_class=4, test=2)
    train, test = folder.read_folder(root)
    assert train.class_names == test.class_names == ('cat', 'dog', 'fish')
    assert train.images.shape == (12, 1, 20, 24) and test.images.shape == (6, 1, 20, 24)
    assert train.images.dtype == numpy.float32 and train.labels.dtype == numpy.int32
    assert sorted(numpy.bincount(train.labels)) == [4, 4, 4] and test.record == {}
    # each class's images are brighter than the one before: the labels follow the folders
    means = [train.images[train.labels == k].mean() for k in range(3)]
    assert means == sorted(means)
    # the pixels are the files' own, / 255
    from PIL import Image
    first = numpy.asarray(Image.open(os.path.join(root, 'train', 'cat', '0.png')))
    assert any(numpy.allclose(x[0], first / 255) for x in train.images)


def test_without_test_a_seeded_fraction_of_each_class_is_held_out(tmp_path):
    root = write_image_folder(str(tmp_path), per_class=10)
    train, test = folder.read_folder(root, test_fraction=0.3)
    assert len(train) == 21 and len(test) == 9
    assert sorted(numpy.bincount(test.labels)) == [3, 3, 3]
    assert test.record == {'test_fraction': 0.3, 'seed': folder.SPLIT_SEED}
    again = folder.read_folder(root, test_fraction=0.3)
    numpy.testing.assert_array_equal(again[1].images, test.images)
    # the default fraction, at least one image of each class
    assert len(folder.read_folder(root)[1]) == 6
    assert folder.read_folder(root, test_fraction=0.01)[1].record['test_fraction'] == 0.01
    assert len(folder.read_folder(root, test_fraction=0.01)[1]) == 3
    # the order is shuffled: the first images are of several classes
    assert len(set(train.labels[:6])) > 1


def test_colour_images_have_three_channels_and_a_mix_is_read_as_colour(tmp_path):
    root = write_image_folder(str(tmp_path / 'rgb'), colour=True, ext='.jpg')
    train, _ = folder.read_folder(root)
    assert train.images.shape[1] == 3 and train.notes == []
    root = write_image_folder(str(tmp_path / 'mix'), per_class=3)
    write_image(os.path.join(root, 'train', 'dog', 'colour.bmp'),
                numpy.full((20, 24, 3), [255, 0, 0], numpy.uint8))
    train, test = folder.read_folder(root, test_fraction=0.34)
    assert train.images.shape[1] == 3
    assert train.notes == ['9 of 10 images are grey and 1 in colour: all are read as RGB']
    red = [x for x in numpy.concatenate([train.images, test.images])
           if x[0].min() == 1.0 and x[1].max() == 0.0]
    assert len(red) == 1
    greys = [x for x in train.images if x[0].min() < 1.0]
    assert all(numpy.array_equal(x[0], x[1]) for x in greys)


@pytest.mark.parametrize('mode', ['RGBA', 'P', 'LA', 'I;16'])
def test_other_modes_are_read(tmp_path, mode):
    root = write_image_folder(str(tmp_path), per_class=2)
    path = os.path.join(root, 'train', 'cat', 'other.png')
    if mode == 'I;16':
        from PIL import Image
        Image.fromarray(numpy.full((20, 24), 257 * 200, numpy.uint16)).save(path)
    else:
        write_image(path, numpy.full((20, 24, 3), 200, numpy.uint8), mode)
    train, test = folder.read_folder(root, test_fraction=0.3)
    colour = mode in ('RGBA', 'P')
    assert train.images.shape[1] == (3 if colour else 1)
    images = numpy.concatenate([train.images, test.images])
    # (the web palette has no 200: the conversion to it dithers)
    assert any(abs(x.mean() - 200 / 255) < 0.02 and x.std() < (0.1 if mode == 'P' else 1e-6)
               for x in images)


def test_mixed_sizes_need_image_size(tmp_path):
    root = write_image_folder(str(tmp_path), per_class=3)
    write_image(os.path.join(root, 'train', 'fish', 'big.png'),
                numpy.zeros((30, 40), numpy.uint8))
    with pytest.raises(DatasetError) as e:
        folder.read_folder(root)
    message = str(e.value)
    assert 'images of different sizes' in message and 'is 20x24' in message
    assert os.path.join('fish', 'big.png') + ' is 30x40' in message
    assert '--image-size HxW' in message
    train, test = folder.read_folder(root, image_size=(17, 19))
    assert train.images.shape[2:] == test.images.shape[2:] == (17, 19)
    assert train.notes == ['images of 2 sizes resized to 17x19']


def test_a_truncated_image_is_named(tmp_path):
    root = write_image_folder(str(tmp_path), per_class=3)
    path = os.path.join(root, 'train', 'dog', '1.png')
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(DatasetError, match='^' + path + ': cannot read the image'):
        folder.read_folder(root)
    with open(path, 'wb') as f:
        f.write(b'not an image at all')
    with pytest.raises(DatasetError, match='^' + path + ': cannot read the image'):
        folder.read_folder(root)


def make_classes(root, *names, files=('0.png',)):
    for name in names:
        for f in files:
            write_image(os.path.join(root, name, f), numpy.zeros((20, 20), numpy.uint8))


def test_what_can_be_wrong_with_the_folder(tmp_path):
    root = str(tmp_path)
    with pytest.raises(DatasetError, match='--data-dir .*nothing: no such folder'):
        folder.read_folder(os.path.join(root, 'nothing'), data_dir_name='--data-dir')
    with pytest.raises(SettingError, match='is needed'):
        folder.read_folder(None)
    with pytest.raises(DatasetError, match='no train/ folder'):
        folder.read_folder(root)
    make_classes(os.path.join(root, 'train'), 'cat')
    with pytest.raises(DatasetError, match='only the class folder cat; a classifier needs '
                                           'at least two classes'):
        folder.read_folder(root)
    os.makedirs(os.path.join(root, 'train', 'dog'))
    with pytest.raises(DatasetError, match=r'train/dog: an empty class folder'):
        folder.read_folder(root)
    make_classes(os.path.join(root, 'train'), 'dog')
    with pytest.raises(DatasetError, match="1 image\\(s\\) of class 'cat': too few to hold "
                                           "out"):
        folder.read_folder(root)
    make_classes(os.path.join(root, 'test'), 'cat', 'emu')
    with pytest.raises(DatasetError, match='the classes of test/ differ from those of '
                                           'train/ \\(test/ lacks dog; train/ lacks emu\\)'):
        folder.read_folder(root)
    make_classes(os.path.join(root, 'test'), 'dog')
    os.rename(os.path.join(root, 'test', 'emu'), os.path.join(root, '.emu'))
    assert len(folder.read_folder(root)[1]) == 2
    with pytest.raises(SettingError, match='has a test/ folder') as e:
        folder.read_folder(root, test_fraction=0.5)
    assert e.value.setting == 'test_fraction'


def test_images_outside_class_folders_are_said(tmp_path):
    write_image(str(tmp_path / 'train' / 'loose.png'), numpy.zeros((20, 20), numpy.uint8))
    with pytest.raises(DatasetError, match='no class folders.*its 1 images outside a class '
                                           'folder are not read'):
        folder.read_folder(str(tmp_path))


testing.run_module(__name__, __file__)
