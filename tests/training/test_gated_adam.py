"""GatedAdam: Chainer's Adam bit for bit where its gate is open or absent; where the gate
is closed, the weights and Adam's moments stay as they were (on the CPU, and with its
own kernel on a GPU)."""

import inspect

import chainer
import chainer.links as L
import numpy
import pytest
from chainer import testing
from chainer.optimizers import adam

from capsnet_chainer.training import gated_adam
from capsnet_chainer.training.gated_adam import GatedAdam
from conftest import get_device
from conftest import nvcc_compile


class _Gate(object):
    """A gate whose verdict (``None``, or a boolean array of one element) the test
    sets."""

    def __init__(self, ok=None):
        self.ok = ok


def _model(seed=0):
    numpy.random.seed(seed)
    model = chainer.Sequential(L.Linear(3, 4), chainer.functions.tanh, L.Linear(4, 2))
    return model


def _losses(model, device, n, seed=1):
    """``n`` losses of ``model`` on fixed random batches."""
    rng = numpy.random.RandomState(seed)
    for _ in range(n):
        x = device.send(rng.uniform(-1, 1, (5, 3)).astype(numpy.float32))
        yield lambda x=x: chainer.functions.sum(model(x) ** 2)


def _train(optimizer_class, device, gate=None, closed=(), n=5):
    """Trains a small model ``n`` steps; the gate (if any) is closed in the steps
    numbered in ``closed`` (1-based) and open in the others, or left as it is with
    ``closed=None``. Returns the weights and Adam's state on the host, after each
    step."""
    model = _model()
    model.to_device(device)
    optimizer = optimizer_class(alpha=0.01)
    optimizer.setup(model)
    if gate is not None:
        optimizer.set_gate(gate)
    history = []
    for step, loss in enumerate(_losses(model, device, n), 1):
        if gate is not None and closed is not None:
            gate.ok = device.xp.asarray([step not in closed])
        optimizer.update(loss)
        history.append(_state(model))
    return history


def _state(model):
    out = {}
    for name, p in model.namedparams():
        out[name] = chainer.backend.CpuDevice().send(p.array).copy()
        for key, value in p.update_rule.state.items():
            out[name + '/' + key] = chainer.backend.CpuDevice().send(value).copy()
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        numpy.testing.assert_array_equal(a[key], b[key], err_msg=key)


#: The devices of each test: the CPU, and a GPU where there is one
DEVICES = ['@numpy', pytest.param('@cupy:0', marks=pytest.mark.gpu)]


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('gate', [lambda: None, _Gate], ids=['no-gate', 'open-gate'])
def test_without_a_gate_or_with_an_open_one_it_is_adam_bit_for_bit(device, gate):
    device = get_device(device)
    want = _train(chainer.optimizers.Adam, device)
    for got, expected in zip(_train(GatedAdam, device, gate=gate()), want):
        _assert_same(got, expected)


@pytest.mark.parametrize('device', DEVICES)
def test_a_closed_gate_leaves_weights_and_moments_as_they_were(device):
    device = get_device(device)
    history = _train(GatedAdam, device, gate=_Gate(), closed=(3, 4))
    _assert_same(history[2], history[1])
    _assert_same(history[3], history[1])
    moved = [k for k in history[4] if (history[4][k] != history[3][k]).any()]
    assert len(moved) == len(history[4])  # open again: every array moves


@pytest.mark.parametrize('device', DEVICES)
def test_a_gate_of_none_updates(device):
    device = get_device(device)
    want = _train(chainer.optimizers.Adam, device, n=2)
    gate = _Gate(None)
    got = _train(GatedAdam, device, gate=gate, closed=None, n=2)
    assert gate.ok is None  # what every update read
    _assert_same(got[-1], want[-1])


def _tokens(code):
    return ' '.join(code.replace('\n', ' ').split())


def test_the_kernel_is_chainers_plain_adam_kernel_inside_one_if():
    """The same arithmetic as the Adam kernel of the installed Chainer, hence the same
    weights bit for bit where the gate lets a step through."""
    source = inspect.getsource(adam.AdamRule.update_core_gpu)
    plain = source[source.index('AdamRule._kernel = cuda.elementwise('):]
    plain = plain[plain.index("'''") + 3:]
    plain = plain[:plain.index("'''")]
    body = gated_adam.KERNEL_BODY
    assert body.startswith('if (ok[0]) {') and body.endswith('}')
    assert _tokens(body[len('if (ok[0]) {'):-1]) == _tokens(plain)
    assert gated_adam.KERNEL_IN.startswith(
        'P grad, T alpha_t, T one_minus_beta1, T one_minus_beta2, T eps, T eta, '
        'T weight_decay_rate, raw T dummy')


def test_the_kernel_body_compiles_for_hopper(tmp_path):
    """The body in a kernel of CuPy's shape (T, P float; raw arrays as pointers)."""
    source = '''
typedef float T;
typedef float P;
extern "C" __global__ void gated_adam(
        const P* grad_, T alpha_t, T one_minus_beta1, T one_minus_beta2, T eps, T eta,
        T weight_decay_rate, const bool* ok, P* param_, P* m_, P* v_, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const P& grad = grad_[i];
    P& param = param_[i];
    P& m = m_[i];
    P& v = v_[i];
    BODY
}
'''.replace('BODY', gated_adam.KERNEL_BODY)
    nvcc_compile(source, tmp_path)


def test_set_gate_refuses_the_variants_without_a_gated_kernel():
    for kwargs in ({'amsgrad': True}, {'adabound': True}):
        with pytest.raises(ValueError, match='plain Adam only'):
            GatedAdam(**kwargs).set_gate(_Gate())
    GatedAdam(amsgrad=True).set_gate(None)  # no gate: nothing to refuse


def test_its_snapshot_is_adams():
    """Either optimizer resumes from the other's snapshot: the same keys and values."""
    model = _model()
    gated = GatedAdam()
    gated.setup(model)
    for loss in _losses(model, chainer.get_device('@numpy'), 2):
        gated.update(loss)
    a, b = {}, {}
    chainer.serializers.DictionarySerializer(a).save(gated)
    plain = chainer.optimizers.Adam()
    plain.setup(model)
    chainer.serializers.NpzDeserializer(a).load(plain)
    chainer.serializers.DictionarySerializer(b).save(plain)
    assert a.keys() == b.keys()
    for key in a:
        numpy.testing.assert_array_equal(a[key], b[key], err_msg=key)


testing.run_module(__name__, __file__)
