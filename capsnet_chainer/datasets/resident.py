"""The training set kept on the device and shifted there: :class:`ResidentShift`, the
converter of :class:`~capsnet_chainer.datasets.augment.RandomShift`'s batches for a
set that lives on a GPU; and a test set kept there, :class:`ResidentBatches`.

Today's converter concatenates each batch on the host, shifts it there and copies it to
the device (800 KB a step at batch 256). :class:`ResidentShift` sends the whole set to
the device once; each step it takes the batch as indices into the set (from an
iterator over :func:`index_dataset`), draws the shifts from the same random state, in
the same order, as :class:`~capsnet_chainer.datasets.augment.RandomShift`, sends the
indices and shifts (a few KB) and gathers and shifts the images on the device, on a GPU
in one kernel (:data:`GATHER_SHIFT_SOURCE`). The batches are those of
:class:`~capsnet_chainer.datasets.augment.RandomShift`, value for value (shifting only
copies), and its state in snapshots is the same: a snapshot of either resumes with the
other.
"""

import chainer
import numpy

from capsnet_chainer.datasets.augment import RandomShift
from capsnet_chainer.datasets.augment import shift_each
from capsnet_chainer.kernels.base import cuda_source
from capsnet_chainer.kernels.base import launch
from capsnet_chainer.kernels.base import on_cuda

#: The gather-and-shift kernel (CUDA C), for ``T`` = ``float`` or ``double``: output
#: element ``(b, c, i, j)`` of ``n = B * C * H * W`` is image ``plan[b]``'s pixel ``(c, i
#: - dy, j - dx)``, 0 outside the image; ``plan`` holds the ``B`` indices, then the shift
#: ``(dy, dx)`` of the batch (``per_image`` 0) or of each image in turn (1).
GATHER_SHIFT_SOURCE = r'''
extern "C" __global__ void capsnet_gather_shift_{T}(
        const {T}* __restrict__ x, const int* __restrict__ plan, {T}* __restrict__ y,
        long long n, int B, int C, int H, int W, int per_image) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        int j = (int)(i % W);
        long long r = i / W;
        int h = (int)(r % H);
        r /= H;
        int c = (int)(r % C);
        int b = (int)(r / C);
        const int* shift = plan + B + (per_image ? 2 * b : 0);
        int si = h - shift[0], sj = j - shift[1];
        {T} v = 0;
        if (si >= 0 && si < H && sj >= 0 && sj < W) {
            v = x[(((long long)plan[b] * C + c) * H + si) * W + sj];
        }
        y[i] = v;
    }
}
'''


def kernel_source(dtype):
    """The CUDA source of the gather-and-shift kernel for ``dtype``, and its name."""
    return cuda_source(GATHER_SHIFT_SOURCE, 'capsnet_gather_shift', dtype)


def example_arrays(dataset):
    """The arrays of a dataset of ``(x, t, ...)`` examples, one per position: a
    ``TupleDataset``'s own, else the examples concatenated."""
    if isinstance(dataset, chainer.datasets.TupleDataset):
        return tuple(numpy.asarray(a) for a in dataset._datasets)
    arrays = chainer.dataset.concat_examples([dataset[i] for i in range(len(dataset))])
    return arrays if isinstance(arrays, tuple) else (arrays,)


def index_dataset(n):
    """The dataset of the indices ``0 .. n - 1``, for an iterator to batch in the order
    it would batch ``n`` examples."""
    return numpy.arange(n)


def gather_shift(x, plan, n_image, per_image, device_plan=None):
    """Images ``x[plan[:n_image]]`` shifted by the shifts in the rest of ``plan``.

    Args:
        x (:ref:`ndarray`): All the images, ``(N, C, H, W)``.
        plan (numpy.ndarray): Int32: the ``n_image`` indices, then ``(dy, dx)`` once or,
            with ``per_image``, for each image.
        n_image (int): The batch size.
        per_image (bool): One shift per image.
        device_plan (:ref:`ndarray`): ``plan`` already on ``x``'s device, if it is.

    Returns:
        :ref:`ndarray`: ``(n_image, C, H, W)``, a new array on ``x``'s device.
    """
    xp = chainer.backend.get_array_module(x)
    if not on_cuda(True, x) or not x.flags.c_contiguous:  # no kernel for it: array ops
        index = xp.asarray(plan[:n_image]) if device_plan is None else device_plan[:n_image]
        shifts = plan[n_image:].reshape((-1, 2))  # on the host, where shift_each reads them
        shifts = shifts if per_image else (int(shifts[0, 0]), int(shifts[0, 1]))
        return shift_each(x[index], shifts)
    if device_plan is None:
        device_plan = xp.asarray(plan)
    B, (C, H, W) = n_image, x.shape[1:]
    y = xp.empty((B, C, H, W), x.dtype)
    launch(*kernel_source(x.dtype), y.size, (
        x, device_plan, y, numpy.int64(y.size), numpy.int32(B), numpy.int32(C),
        numpy.int32(H), numpy.int32(W), numpy.int32(bool(per_image))))
    return y


class ResidentShift(RandomShift):
    """:class:`~capsnet_chainer.datasets.augment.RandomShift` over a training set kept
    on ``device``: batches of indices in, shifted batches ``(x, t, ...)`` out.

    Use it with an iterator over :func:`index_dataset` of the set's length, in place of
    an iterator over the set and ``shift``: the same order and the same random state
    give the same batches. Its random state is ``shift``'s own (not a copy).

    Args:
        shift (RandomShift): The converter it stands for: its largest shift, per image
            or per batch, part of the global batch and random state.
        dataset: The training set of ``(x, t, ...)`` examples, ``x`` ``(C, H, W)``.
        device (~chainer.backend.Device): Where to keep it.
    """

    def __init__(self, shift, dataset, device):
        super().__init__(shift.max_shift, per_image=shift.per_image, part=shift.part)
        self.random_state = shift.random_state
        self.device = device
        self.arrays = tuple(device.send(a) for a in example_arrays(dataset))

    def on_host(self, batch):
        """The plan of a batch of indices (:func:`gather_shift`), and the batch size:
        the indices and the shifts drawn for them, int32."""
        index = numpy.asarray(batch, numpy.int32).reshape((-1,))
        if self.max_shift > 0:
            shifts = numpy.asarray(self.draw_shifts(len(index)), numpy.int32)
        else:
            shifts = numpy.zeros(2, numpy.int32)
        return numpy.concatenate((index, shifts.reshape((-1,)))), len(index)

    def to_device(self, planned, device):
        """The batch of :meth:`on_host`'s plan, gathered and shifted on the set's device
        (one copy of the plan to it), then sent to ``device``."""
        plan, n = planned
        device_plan = self.device.send(plan)
        x = gather_shift(self.arrays[0], plan, n, self.per_image and self.max_shift > 0,
                         device_plan)
        index = device_plan[:n]
        return super().to_device((x,) + tuple(a[index] for a in self.arrays[1:]), device)


class ResidentBatches(chainer.dataset.Iterator):
    """A test set kept on ``device``, batch by batch in order, once per :meth:`reset`:
    the batches of ``SerialIterator(dataset, batch_size, repeat=False, shuffle=False)``
    as its converter, :func:`~chainer.dataset.concat_examples`, gives them, but as views
    of arrays sent to the device once, not copied to it batch by batch (on a GPU each
    copy from pageable host memory can make the host wait for the GPU). Evaluate with
    :func:`as_batch` as the converter.

    Args:
        dataset: The ``(x, t, ...)`` examples.
        batch_size (int): Examples per batch (the last one may hold fewer).
        device (~chainer.backend.Device): Where to keep them.
    """

    def __init__(self, dataset, batch_size, device):
        self.arrays = tuple(device.send(a) for a in example_arrays(dataset))
        self.batch_size = batch_size
        self.size = len(dataset)
        self.reset()

    def __next__(self):
        start = self.current
        if start >= self.size:
            raise StopIteration
        self.current = min(start + self.batch_size, self.size)
        return tuple(a[start:self.current] for a in self.arrays)

    def reset(self):
        self.current = 0

    @property
    def epoch_detail(self):
        return self.current / max(self.size, 1)


def as_batch(batch, device=None):
    """The converter of :class:`ResidentBatches`' batches: already arrays on the
    device, passed on as they are."""
    return batch
