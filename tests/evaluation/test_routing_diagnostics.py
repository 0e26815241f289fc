"""The routing of a trained network recomputed (Procedure 1, iteration by iteration), and
its statistics, checked against the plain equations and naive loops."""

import json
import math

import numpy
import pytest

from capsnet_chainer.evaluation import routing_diagnostics as routing  # before chainer

import chainer
from chainer import testing

from capsnet_chainer.functions import routing_iterations
from capsnet_chainer.model import CapsNet


def _u_hat(seed=0):
    return numpy.random.RandomState(seed).normal(0, 0.3, (3, 4, 7, 5)).astype(numpy.float32)


@pytest.mark.parametrize('n_iteration,leak', [(1, False), (3, False), (3, True)])
def test_routing_trace_is_procedure_1(n_iteration, leak):
    u_hat = _u_hat()
    steps = routing.routing_trace(u_hat, n_iteration, leak)
    expected = list(routing_iterations(u_hat, n_iteration, none_of_the_above=leak))
    assert len(steps) == n_iteration
    for (c, v, a), (c0, v0) in zip(steps, expected):
        numpy.testing.assert_allclose(c, c0.array, atol=1e-6)
        numpy.testing.assert_allclose(v, v0.array, atol=1e-6)
        numpy.testing.assert_allclose(a, numpy.einsum('bjid,bjd->bji', u_hat, v0.array),
                                      atol=1e-5)


def test_routing_trace_with_none_of_the_above_drops_an_extra_zero_logit():
    u_hat = _u_hat(seed=1).astype(numpy.float64)
    steps = routing.routing_trace(u_hat, 3, none_of_the_above=True)
    b = numpy.zeros(u_hat.shape[:3])
    for c, v, a in steps:  # a naive softmax over the classes and one more logit at 0
        e = numpy.exp(numpy.concatenate([numpy.zeros_like(b[:, :1]), b], axis=1))
        numpy.testing.assert_allclose(c, (e / e.sum(axis=1, keepdims=True))[:, 1:])
        s = (c[..., None] * u_hat).sum(axis=2)
        n = numpy.linalg.norm(s, axis=2, keepdims=True)
        numpy.testing.assert_allclose(v, s * n / (1 + n ** 2), rtol=1e-6)
        b = b + (u_hat * v[:, :, None]).sum(axis=3)
    assert (steps[0][0].sum(axis=1) < 1).all()  # the dropped share


@pytest.fixture(scope='module', params=[
    {}, {'shared_weights': False},
    {'none_of_the_above': True, 'standardize': True, 'in_shape': (3, 28, 28),
     'n_primary_type': 8, 'capsule_dim': 8}], ids=['shared', 'unshared', 'adapted'])
def net(request):
    numpy.random.seed(0)  # the initial weights
    model = CapsNet(reconstruct=True, **request.param)
    C = model.config['in_shape'][0]
    x = numpy.random.RandomState(2).uniform(0, 1, (6, C, 28, 28)).astype(numpy.float32)
    return model, x


def test_trace_ends_at_the_networks_own_capsules(net):
    model, x = net
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        u, steps = routing.trace(model, x)
    T, rows, cols = routing.grid_shape(model)
    assert u.shape == (6, T * rows * cols, 8)
    assert len(steps) == model.config['n_iteration']
    v = model.digit_capsules(x).array  # the network runs whole again: no hook is left
    assert not model.digits.local_link_hooks
    numpy.testing.assert_allclose(steps[-1][1], v, atol=1e-5)
    uniform = 1 / (11 if routing.leaks(model) else 10)
    numpy.testing.assert_allclose(steps[0][0], uniform, atol=1e-7)  # b = 0


def test_primary_capsules_stop_before_the_routing(net, monkeypatch):
    model, x = net
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        scores, u_whole = routing.scores_and_primary_capsules(model, x)
        calls = []
        forward = model.digits.forward
        monkeypatch.setattr(model.digits, 'forward', lambda *a: calls.append(a) or forward(*a))
        u = routing.primary_capsules(model, x)
    assert not calls and not model.digits.local_link_hooks  # the class capsules never ran
    numpy.testing.assert_array_equal(u.array, u_whole.array)
    assert scores.shape == (6, 10)


def test_grid_shape_and_top_count():
    assert routing.grid_shape(CapsNet()) == (32, 6, 6)
    assert routing.grid_shape(CapsNet(in_shape=(1, 36, 36))) == (32, 10, 10)
    assert routing.n_top(1152) == 116 and routing.n_top(10) == 1 and routing.n_top(1) == 1


def test_projections_sum_to_the_length_of_s():
    u_hat = _u_hat(seed=3).astype(numpy.float64)
    c, v, a = routing.routing_trace(u_hat, 3)[-1]
    p = routing.projections(c, v, a)
    s = (c[..., None] * u_hat).sum(axis=2)
    numpy.testing.assert_allclose(p.sum(axis=2), numpy.linalg.norm(s, axis=2), rtol=1e-5)
    share = routing.top_share(p, 2)
    expected = numpy.sort(p, axis=2)[..., -2:].sum(axis=2) / p.sum(axis=2)
    numpy.testing.assert_allclose(share, expected)


def _naive(model, x, labels):
    """The statistics by loops over images and primary capsules."""
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        _, steps = routing.trace(model, x)
    c = numpy.stack([s[0] for s in steps], axis=1).astype(numpy.float64)  # (B, R, J, I)

    def categories(b, r, i):  # the classes' couplings, and the dropped one's
        return list(c[b, r, :, i]) + ([1 - c[b, r, :, i].sum()] if routing.leaks(model) else [])

    entropy = numpy.array([[numpy.mean([-sum(p * math.log(p) for p in categories(b, r, i))
                                        for i in range(c.shape[3])])
                            for r in range(c.shape[1])] for b in range(len(x))])
    c_last, v, a = (numpy.asarray(t, numpy.float64) for t in steps[-1])
    lengths = numpy.linalg.norm(v, axis=2)
    shares = []
    for b in range(len(x)):
        j = lengths[b].argmax()
        p = c_last[b, j] * a[b, j] / lengths[b, j]
        shares.append(numpy.sort(p)[::-1][:routing.n_top(len(p))].sum() / p.sum())
    maps = numpy.full((10, c.shape[3]), numpy.nan)
    for j in set(labels.tolist()):
        maps[j] = c[labels == j, -1, j].mean(axis=0)
    return entropy, c, numpy.array(shares), maps, lengths


def test_diagnose_against_naive_loops(net):
    model, x = net
    labels = numpy.array([3, 1, 3, 0, 1, 3], numpy.int32)
    stats, scores, shares = routing.diagnose(model, x, labels, batchsize=4)
    entropy, c, naive_shares, maps, lengths = _naive(model, x, labels)
    R, n_primary = model.config['n_iteration'], int(numpy.prod(routing.grid_shape(model)))
    numpy.testing.assert_allclose(stats['entropy']['mean_per_iteration'],
                                  entropy.mean(axis=0), rtol=1e-6)
    K = 11 if routing.leaks(model) else 10
    assert stats['entropy']['uniform'] == pytest.approx(math.log(K))
    assert stats['entropy']['mean_per_iteration'][0] == pytest.approx(math.log(K))
    largest = c.max(axis=2)  # (B, R, I)
    numpy.testing.assert_allclose(stats['largest_coupling']['mean_per_iteration'],
                                  largest.mean(axis=(0, 2)), rtol=1e-6)
    counts = numpy.array(stats['largest_coupling']['counts_per_iteration'])
    assert counts.shape == (R, routing.N_BINS) and (counts.sum(axis=1) == 6 * n_primary).all()
    for r in range(R):
        expected = numpy.histogram(largest[:, r], bins=routing.N_BINS, range=(0, 1))[0]
        assert numpy.abs(counts[r] - expected).sum() <= 2  # bin edges: float32 rounding
    numpy.testing.assert_allclose(shares[:, 0], naive_shares, rtol=1e-4)
    numpy.testing.assert_allclose(scores, lengths, atol=1e-5)
    class_maps = stats['class_maps'].reshape((10, -1))
    numpy.testing.assert_allclose(class_maps, maps, atol=1e-6)
    assert stats['class_map_images'] == [1, 2, 0, 3, 0, 0, 0, 0, 0, 0]
    assert stats['top_share']['top'] == routing.n_top(n_primary)
    assert stats['top_share']['mean'] == pytest.approx(naive_shares.mean(), rel=1e-4)


def test_summary_is_json_and_names_the_largest_cell():
    model = CapsNet()
    x = numpy.random.RandomState(4).uniform(0, 1, (3, 1, 28, 28)).astype(numpy.float32)
    stats, _, _ = routing.diagnose(model, x, numpy.array([2, 2, 5], numpy.int32))
    summary = json.loads(json.dumps(routing.summary(stats)))
    maps = summary['class_maps']
    assert len(maps) == 10 and maps[0] is None and maps[2]['class'] == 2
    m = stats['class_maps'][2]  # (T, rows, cols)
    assert maps[2]['max'] == pytest.approx(m.max())
    assert m[tuple(maps[2]['max_at_type_row_column'])] == pytest.approx(m.max())
    assert len(maps[2]['mean_per_type']) == 32
    assert summary['primary_grid'] == {'types': 32, 'rows': 6, 'columns': 6}


def test_diagnose_pairs_counts_both_labels_and_the_two_longest():
    model = CapsNet(in_shape=(1, 36, 36))
    x = numpy.random.RandomState(5).uniform(0, 1, (4, 1, 36, 36)).astype(numpy.float32)
    t2 = numpy.array([[0, 1], [1, 2], [2, 0], [3, 4]], numpy.int32)
    stats, scores, shares = routing.diagnose(model, x, t2)
    assert shares.shape == (4, 2) and scores.shape == (4, 10)
    assert stats['class_map_images'][:5] == [2, 2, 2, 1, 1]
    assert stats['top_share']['classes'] == 'each of the two longest capsules'
    assert stats['class_maps'].shape == (10, 32, 10, 10)


testing.run_module(__name__, __file__)
