"""The training set on the device: ResidentShift's batches are RandomShift's, value for
value, epoch after epoch and across a snapshot; its CUDA kernel compiles, and its index
arithmetic, rewritten in NumPy, gives the same images. The test set on the device:
ResidentBatches are the SerialIterator's batches, and evaluate the same."""

from types import SimpleNamespace

import numpy
import pytest

from capsnet_chainer.datasets import resident  # before chainer: restores numpy.sctypes

import chainer
from chainer import testing

from capsnet_chainer.datasets.augment import RandomShift
from capsnet_chainer.kernels.base import C_TYPES
from capsnet_chainer.training import distributed
from capsnet_chainer.training.iterators import SeededShuffleIterator
from capsnet_chainer.training.updater import ConverterStateUpdater
from conftest import get_device
from conftest import nvcc_compile

NUMPY = chainer.get_device('@numpy')


def image_set(n=37, size=7, channels=1, seed=0):
    rs = numpy.random.RandomState(seed)
    x = (rs.rand(n, channels, size, size) + 0.5).astype(numpy.float32)  # no zeros
    t = rs.randint(0, 10, size=n).astype(numpy.int32)
    return chainer.datasets.TupleDataset(x, t)


def pipelines(dataset, batch, max_shift, per_image, seed=5, device=NUMPY):
    """Today's (iterator over the set, RandomShift) and the resident one, alike."""
    host = (SeededShuffleIterator(dataset, batch, seed),
            RandomShift(max_shift, per_image=per_image, seed=seed))
    shift = RandomShift(max_shift, per_image=per_image, seed=seed)
    on_device = (SeededShuffleIterator(resident.index_dataset(len(dataset)), batch, seed),
                 resident.ResidentShift(shift, dataset, device))
    return host, on_device


def batches(pipeline, n, device=NUMPY):
    iterator, converter = pipeline
    return [converter(iterator.next(), device) for _ in range(n)]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            u = chainer.backends.cuda.to_cpu(u)
            assert u.dtype == v.dtype and u.shape == v.shape
            numpy.testing.assert_array_equal(u, v)


@pytest.mark.parametrize('per_image', [False, True])
@pytest.mark.parametrize('max_shift', [0, 2, 3])
@pytest.mark.parametrize('batch', [8, 37])
def test_resident_batches_are_random_shift_batches(per_image, max_shift, batch):
    """Over 4 epochs of 37 images (batches wrap across epochs)."""
    host, on_device = pipelines(image_set(), batch, max_shift, per_image)
    n = 4 * -(-37 // batch)
    expected = batches(host, n)
    got = batches(on_device, n)
    assert_same_batches(got, expected)
    if max_shift:  # the shifts really moved the images
        assert any((b[0] == 0).any() for b in expected)


def test_resident_keeps_every_array_of_an_example():
    x = numpy.random.RandomState(1).rand(6, 2, 5, 5).astype(numpy.float32)
    t, w = numpy.arange(6, dtype=numpy.int32), numpy.linspace(0, 1, 6)
    dataset = [(x[i], t[i], w[i]) for i in range(6)]  # a list, not a TupleDataset
    host, on_device = pipelines(dataset, 4, 2, True)
    assert_same_batches(batches(on_device, 5), batches(host, 5))


def snapshot(updater, path):
    chainer.serializers.save_npz(path, updater)
    with numpy.load(path) as f:
        return {k: f[k] for k in f.files}


def updater_of(pipeline):
    """An updater over ``pipeline`` whose model records each batch it trains on."""
    seen = []

    class Recorder(chainer.Link):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.w = chainer.Parameter(numpy.zeros(1, numpy.float32))

        def forward(self, x, t):
            seen.append((x.copy(), t.copy()))
            return chainer.functions.sum(self.w * 0)

    model = Recorder()
    optimizer = chainer.optimizers.SGD()
    optimizer.setup(model)
    iterator, converter = pipeline
    return ConverterStateUpdater(iterator, optimizer, converter=converter,
                                 device=NUMPY), seen


@pytest.mark.parametrize('per_image', [False, True])
@pytest.mark.parametrize('direction', ['resident->host', 'host->resident'])
def test_snapshots_resume_across_the_two_pipelines(tmp_path, per_image, direction):
    """A snapshot taken mid-epoch by one pipeline resumes in the other with the batches
    the first would have given; the snapshots hold the same keys and values."""
    dataset = image_set()
    first, second = pipelines(dataset, 8, 2, per_image)
    if direction == 'host->resident':
        first, second = second, first
    # Both pipelines run 7 steps (past one epoch of 5 batches); the second then goes on
    # from the first's snapshot
    u1, seen1 = updater_of(first)
    u2, seen2 = updater_of(second)
    for _ in range(7):
        u1.update()
        u2.update()
    keys = snapshot(u1, str(tmp_path / 'a.npz'))
    other = snapshot(u2, str(tmp_path / 'b.npz'))
    assert keys.keys() == other.keys()
    for k in keys:
        numpy.testing.assert_array_equal(keys[k], other[k], err_msg=k)
    resumed = pipelines(dataset, 8, 2, per_image, seed=99)[
        0 if direction == 'resident->host' else 1]
    u3, seen3 = updater_of(resumed)
    chainer.serializers.load_npz(str(tmp_path / 'a.npz'), u3)
    for _ in range(6):
        u1.update()
        u3.update()
    assert_same_batches(seen3, seen1[7:])


def kernel_twin(x, plan, n_image, per_image):
    """The kernel's arithmetic for every output element ``i`` at once, in NumPy."""
    N, C, H, W = x.shape
    b, c, h, j = numpy.unravel_index(numpy.arange(n_image * C * H * W), (n_image, C, H, W))
    offset = n_image + (2 * b if per_image else 0)
    si, sj = h - plan[offset], j - plan[offset + 1]
    inside = (si >= 0) & (si < H) & (sj >= 0) & (sj < W)
    flat = ((plan[b].astype(numpy.int64) * C + c) * H + numpy.where(inside, si, 0)) * W \
        + numpy.where(inside, sj, 0)
    return numpy.where(inside, x.reshape((-1,))[flat], 0).reshape((n_image, C, H, W))


@pytest.mark.parametrize('per_image', [False, True])
@pytest.mark.parametrize('channels', [1, 3])
def test_the_kernels_index_arithmetic_gives_the_same_images(per_image, channels):
    rs = numpy.random.RandomState(0)
    x = rs.rand(20, channels, 6, 5).astype(numpy.float32)
    n = 9
    index = rs.randint(0, 20, n).astype(numpy.int32)
    shifts = rs.randint(-3, 4, (n if per_image else 1, 2)).astype(numpy.int32)
    shifts[0] = (5, -6)  # a shift past the image's height or width
    plan = numpy.concatenate((index, shifts.reshape((-1,))))
    numpy.testing.assert_array_equal(resident.gather_shift(x, plan, n, per_image),
                                     kernel_twin(x, plan, n, per_image))


@pytest.mark.parametrize('dtype', sorted(C_TYPES, key=str))
def test_the_kernel_compiles_for_hopper(tmp_path, dtype):
    source, name = resident.kernel_source(dtype)
    assert name in source
    nvcc_compile(source, tmp_path)


class StatefulSet(list):
    """A training set with a random state of its own (as MultiMNIST's pair sampler)."""

    def serialize(self, serializer):
        pass


def test_train_pipeline_keeps_the_set_on_a_gpu_only(monkeypatch):
    monkeypatch.setattr(distributed, 'RESIDENT_ON_GPU', True)
    dataset = image_set()
    data = SimpleNamespace(train=dataset, converter=RandomShift(2, seed=1))
    iterator, converter = distributed.train_pipeline(data, 8, 1, None, NUMPY)
    assert converter is data.converter and iterator.dataset is dataset
    gpu = SimpleNamespace(xp=SimpleNamespace(), send=lambda a: a)  # a stand-in GPU
    iterator, converter = distributed.train_pipeline(data, 8, 1, None, gpu)
    assert isinstance(converter, resident.ResidentShift)
    assert converter.random_state is data.converter.random_state
    numpy.testing.assert_array_equal(iterator.dataset, numpy.arange(len(dataset)))
    # Not under MPI, not for other converters, not for a set with a state of its own
    one_rank = SimpleNamespace(rank=0, size=1)
    for case in (dict(comm=one_rank),
                 dict(data=SimpleNamespace(train=dataset,
                                           converter=chainer.dataset.concat_examples)),
                 dict(data=SimpleNamespace(train=StatefulSet(dataset[:]),
                                           converter=data.converter))):
        args = dict(dict(data=data, batchsize=8, seed=1, comm=None, device=gpu), **case)
        iterator, converter = distributed.train_pipeline(**args)
        assert converter is args['data'].converter
        assert iterator.dataset is args['data'].train


def test_train_pipeline_can_be_switched_off_and_bounded(monkeypatch):
    data = SimpleNamespace(train=image_set(), converter=RandomShift(2, seed=1))
    gpu = SimpleNamespace(xp=SimpleNamespace(), send=lambda a: a)
    assert distributed.train_pipeline(data, 8, 1, None, gpu)[1] is data.converter  # off
    monkeypatch.setattr(distributed, 'RESIDENT_ON_GPU', True)
    monkeypatch.setattr(distributed, 'RESIDENT_MAX_BYTES', 37 * 49 * 4 - 1)
    assert distributed.train_pipeline(data, 8, 1, None, gpu)[1] is data.converter
    monkeypatch.setattr(distributed, 'RESIDENT_MAX_BYTES', 37 * 49 * 4)
    assert distributed.train_pipeline(data, 8, 1, None, gpu)[1] is not data.converter
    monkeypatch.setattr(distributed, 'RESIDENT_ON_GPU', False)
    assert distributed.train_pipeline(data, 8, 1, None, gpu)[1] is data.converter


@pytest.mark.gpu
@pytest.mark.parametrize('per_image', [False, True])
def test_resident_batches_on_gpu_are_the_cpu_batches(per_image):
    device = get_device('@cupy:0')
    dataset = image_set(n=300, size=28)
    host, on_device = pipelines(dataset, 64, 2, per_image, device=device)
    got = batches(on_device, 12, device)
    assert all(type(a).__module__.startswith('cupy') for b in got for a in b)
    assert_same_batches(got, batches(host, 12))


# The test set on the device


class _Scorer(chainer.Chain):
    """Reports the mean of ``x`` per class of ``t`` and its count, batch by batch."""

    def forward(self, x, t):
        chainer.report({'mean': chainer.functions.mean(x), 'n': float(len(t)),
                        'first': t[0].astype(numpy.float32)}, self)
        return chainer.functions.mean(x)


def serial_batches(dataset, batch):
    it = chainer.iterators.SerialIterator(dataset, batch, repeat=False, shuffle=False)
    return [chainer.dataset.concat_examples(b) for b in it]


@pytest.mark.parametrize('batch', [8, 37, 50])
def test_resident_test_batches_are_the_serial_iterators(batch):
    dataset = image_set(n=37)
    it = resident.ResidentBatches(dataset, batch, NUMPY)
    for _ in range(2):  # a pass, then again after reset
        got = [resident.as_batch(b) for b in it]
        assert_same_batches(got, serial_batches(dataset, batch))
        assert it.epoch_detail == 1.0
        it.reset()
        assert it.epoch_detail == 0.0


def test_an_evaluator_over_them_gives_the_same_results():
    dataset = image_set(n=23)
    results = []
    for resident_on in (False, True):
        it = (resident.ResidentBatches(dataset, 5, NUMPY) if resident_on else
              chainer.iterators.SerialIterator(dataset, 5, repeat=False, shuffle=False))
        converter = resident.as_batch if resident_on else chainer.dataset.concat_examples
        ev = chainer.training.extensions.Evaluator(it, _Scorer(), converter=converter)
        results.append([ev() for _ in range(2)])
    assert results[0] == results[1]
    assert results[0][0]['main/n'] == 23 / 5  # 5 batches, the last of 3


def test_test_iterator_keeps_the_set_on_a_gpu_only(monkeypatch):
    dataset = image_set(n=11)
    gpu = SimpleNamespace(xp=SimpleNamespace(), send=lambda a: a)  # a stand-in GPU
    assert isinstance(distributed.test_iterator(dataset, 4, None, gpu),
                      chainer.iterators.SerialIterator)  # off until measured
    monkeypatch.setattr(distributed, 'RESIDENT_ON_GPU', True)
    it = distributed.test_iterator(dataset, 4, None, gpu)
    assert isinstance(it, resident.ResidentBatches)
    ev = distributed.evaluator(it, _Scorer(), None, None)
    assert ev.converter is resident.as_batch
    for device, comm in ((NUMPY, None), (None, None), (gpu, SimpleNamespace(rank=0, size=1))):
        it = distributed.test_iterator(dataset, 4, comm, device)
        assert isinstance(it, chainer.iterators.SerialIterator)
        assert distributed.evaluator(it, _Scorer(), None, None).converter \
            is chainer.dataset.concat_examples
    monkeypatch.setattr(distributed, 'RESIDENT_MAX_BYTES', 11 * 7 * 7 * 4 - 1)  # images
    assert isinstance(distributed.test_iterator(dataset, 4, None, gpu),
                      chainer.iterators.SerialIterator)


@pytest.mark.gpu
def test_resident_test_batches_on_gpu_evaluate_as_the_host_ones():
    device = get_device('@cupy:0')
    dataset = image_set(n=250, size=28)
    results = []
    for it in (resident.ResidentBatches(dataset, 100, device),
               chainer.iterators.SerialIterator(dataset, 100, repeat=False, shuffle=False)):
        converter = (resident.as_batch if isinstance(it, resident.ResidentBatches)
                     else chainer.dataset.concat_examples)
        ev = chainer.training.extensions.Evaluator(it, _Scorer(), converter=converter,
                                                   device=device)
        results.append({k: float(v) for k, v in ev().items()})
    assert results[0] == results[1]


testing.run_module(__name__, __file__)
