"""explorer.html: the data it embeds, its size, and the page in a real browser.

The browser tests drive Debian's Chromium (``/usr/bin/chromium``) with Playwright, which
downloads no browser of its own; where either is missing they are skipped with the line
that installs them. One browser runs for the whole module. Set
``CAPSNET_EXPLORER_SCREENSHOT=PATH`` to keep the screenshot of the shipped model's page
(README's docs/figures/explorer.png).
"""

import base64
import json
import os
import re
import tomllib
import zlib

import numpy
import pytest

from capsnet_chainer.evaluation import explorer  # before chainer: restores sctypes

import chainer
from chainer import testing

from capsnet_chainer.evaluation import routing_diagnostics as routing
from capsnet_chainer.evaluation.metrics import digit_capsules
from capsnet_chainer.inference import batched
from capsnet_chainer.io.modelfile import load_model
from capsnet_chainer.model import CapsNet
from conftest import REPO

CHROMIUM = '/usr/bin/chromium'
#: As README says: no sandbox (root in CI), nothing fetched behind the page's back.
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']
SHIPPED = os.path.join(REPO, 'models', 'capsnet_mnist.npz')
DOCS_PAGE = os.path.join(REPO, 'docs', 'figures', 'explorer.html')


def _decode(model, v, j):
    """The float32 decoder on capsule vectors ``v`` ``(B, J, D)`` masked to ``j``,
    ``(B, C * H * W)``, channels first as the page has them."""
    labels = numpy.full(len(v), j, numpy.int32)
    y = batched(model, model.decode, (numpy.asarray(v, numpy.float32), labels),
                tuple(model.config['in_shape']))
    return y.reshape((len(v), -1))


def _page_layers(model):
    """The decoder's layers as the page holds them: ``[(W, b), ...]``, its int16
    weights undone."""
    return [(explorer.dequantize_int16(*explorer.quantize_int16(link.W.array)),
             link.b.array.astype(numpy.float64))
            for link in (model.decoder.fc1, model.decoder.fc2, model.decoder.fc3)]


def _inflate(blob):
    data = zlib.decompress(base64.b64decode(blob['data']))
    return numpy.frombuffer(data, numpy.dtype(blob['dtype']).newbyteorder('<')).reshape(
        blob['shape'])


# The data


def test_select_images_takes_the_first_right_ones_per_class_then_the_wrong_ones():
    labels = numpy.array([0, 1, 0, 1, 2, 0, 1, 2])
    pred = numpy.array([0, 1, 1, 1, 2, 0, 0, 0])
    scores = numpy.eye(3)[pred]
    index, right, n_wrong = explorer.select_images(labels, scores, per_class=2, max_wrong=1)
    assert index.tolist() == [0, 5, 1, 3, 4, 2]
    assert right.tolist() == [True] * 5 + [False] and n_wrong == 3


def test_select_images_of_pairs():
    scores = numpy.array([[.9, .8, 0, 0], [.9, 0, .8, 0], [0, .9, .8, 0]])
    t2 = numpy.array([[1, 0], [0, 3], [2, 1]])
    index, right, n_wrong = explorer.select_images(t2, scores, per_class=1)
    assert index.tolist() == [0, 2, 1] and right.tolist() == [True, True, False]
    assert n_wrong == 1


def test_quantize_int16_by_blocks_of_a_row():
    rng = numpy.random.RandomState(0)
    W = rng.normal(0, 0.05, (5, 70)).astype(numpy.float32)
    W[2, 40:] = 0  # a block of zeros, and the last block shorter (70 = 2 * 32 + 6)
    W[3, 3] = 1.5  # one large weight spoils only its own block's scale
    q, scale = explorer.quantize_int16(W)
    assert q.dtype == numpy.int16 and q.shape == (5, 70)
    assert scale.dtype == numpy.float32 and scale.shape == (5, 3)
    back = explorer.dequantize_int16(q, scale)
    step = numpy.repeat(scale, 32, axis=1)[:, :70]
    assert (numpy.abs(back - W) <= step / 2 + 1e-12).all()
    assert numpy.abs(q).max() == 32767
    assert scale[3, 1] < scale[3, 0] / 10


def test_quantize_uint8_over_each_rows_range():
    a = numpy.array([[0.1, 0.1, 0.1], [-2.0, 0.0, 1.0]])
    codes, lo, hi = explorer.quantize_uint8(a)
    assert codes.tolist() == [[0, 0, 0], [0, 170, 255]]
    back = lo[:, None] + codes / 255 * (hi - lo)[:, None]
    assert numpy.abs(back - a).max() <= 3 / 510 + 1e-7


def test_encode_is_zlib_in_base64_little_endian():
    a = numpy.arange(6, dtype='>f4').reshape((2, 3))
    blob = explorer.encode(a)
    assert blob['dtype'] == 'float32' and blob['shape'] == [2, 3]
    numpy.testing.assert_array_equal(_inflate(blob), a)


def test_class_names():
    assert explorer.class_names(['a', 'b'], 2) == ['a', 'b']
    assert explorer.class_names(['a', 'b'], 3) == ['0', '1', '2']
    assert explorer.class_names(None, 2) == ['0', '1']


@pytest.fixture(scope='module')
def shipped_model():
    model, meta = load_model(SHIPPED)
    return model


@pytest.fixture(scope='module')
def test_digits(mnist_dir):
    from capsnet_chainer.datasets.mnist import get_mnist
    _, test = get_mnist(data_dir=mnist_dir, n_test=300)
    x, t = chainer.dataset.concat_examples(test)
    return x, t


def test_the_pages_decoder_is_within_3e4_of_the_float32_decoder(shipped_model, test_digits):
    """The int16 weights, decoded in float64 as the page does, over the sliders' range."""
    model, (x, _) = shipped_model, test_digits
    v = digit_capsules(model, x[:40])
    rng = numpy.random.RandomState(1)
    v = v + rng.uniform(-0.25, 0.25, v.shape).astype(numpy.float32)
    layers = _page_layers(model)
    worst = 0
    for j in range(10):
        h = explorer.decode_like_page(layers, v, j)
        worst = max(worst, numpy.abs(h - _decode(model, v, j)).max())
    assert worst < 3e-4


def test_page_data_leaves_out_images_then_the_decoder_to_fit(tmp_path):
    numpy.random.seed(0)  # the initial weights
    model = CapsNet(reconstruct=True)
    x = numpy.random.RandomState(0).uniform(0, 1, (30, 1, 28, 28)).astype(numpy.float32)
    t = numpy.arange(30, dtype=numpy.int32) % 10
    _, scores, _ = routing.diagnose(model, x, t)
    full = explorer.page_data(model, x, t, scores, explorer.class_names(None, 10), 'full')
    n = full['images']['n']
    chosen = len(explorer.select_images(t, scores)[0])
    assert n == chosen >= 20 and full['notes'] == [] and full['decoder'] is not None
    size = len(explorer.render(full).encode('utf-8'))
    one = len(explorer._json(full['images'])) / n
    fewer = explorer.page_data(model, x, t, scores, explorer.class_names(None, 10), 'fewer',
                               max_bytes=int(size - 10 * one))
    assert n - 15 <= fewer['images']['n'] < n and fewer['decoder'] is not None
    assert len(explorer.render(fewer).encode('utf-8')) <= size - 10 * one
    assert 'chosen images are left out to keep the page under' in fewer['notes'][0]
    small = explorer.page_data(model, x, t, scores, explorer.class_names(None, 10), 'small',
                               max_bytes=2 * 10 ** 6)
    assert small['decoder'] is None and small['images']['n'] == n
    assert re.match(r"no sliders: the decoder's weights \(3\.\d MB\) leave too little room "
                    r'for images in a page of at most 2 MB', small['no_sliders'])
    assert small['no_sliders'] in small['notes']


def test_page_data_holds_what_the_page_rebuilds_the_routing_from():
    model = CapsNet(reconstruct=False, n_iteration=2)
    x = numpy.random.RandomState(1).uniform(0, 1, (4, 1, 28, 28)).astype(numpy.float32)
    t = numpy.array([0, 1, 2, 3], numpy.int32)
    _, scores, _ = routing.diagnose(model, x, t)
    data = explorer.page_data(model, x, t, scores, ['<b>{}</b>'.format(k) for k in range(10)],
                              'untrained')
    assert data['decoder'] is None and '--reconstruct' in data['no_sliders']
    images = data['images']
    index = images['index']
    numpy.testing.assert_array_equal(_inflate(images['x']),
                                     numpy.round(x[index] * 255).astype(numpy.uint8))
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        _, steps = routing.trace(model, x[index])
    numpy.testing.assert_allclose(_inflate(images['v']), steps[-1][1], atol=1e-6)
    codes = _inflate(images['agreement']).astype(numpy.float64)  # (N, R, J, I)
    lo, hi = _inflate(images['agreement_lo']), _inflate(images['agreement_hi'])
    a = lo[..., None] + codes / 255 * (hi - lo)[..., None]
    expected = numpy.stack([s[2] for s in steps], axis=1)
    span = (expected.max(axis=3) - expected.min(axis=3))[..., None]
    assert (numpy.abs(a - expected) <= span / 510 + 1e-6).all()
    page = explorer.render(data)
    assert '<b>' not in page and '\\u003cb>0\\u003c/b>' in page  # no tag in the data


def test_write_views_writes_the_figure_and_the_page(tmp_path):
    model = CapsNet(reconstruct=True)
    x = numpy.random.RandomState(2).uniform(0, 1, (5, 1, 28, 28)).astype(numpy.float32)
    t = numpy.array([0, 1, 2, 3, 4], numpy.int32)
    lines = []
    result = explorer.write_views(model, x, t, str(tmp_path), explorer.class_names(None, 10),
                                  'title', log=lines.append)
    assert sorted(os.listdir(str(tmp_path))) == ['explorer.html', 'routing.png']
    assert result['images'] == 5 and len(result['class_maps']) == 10
    assert result['explorer']['sliders'] is True
    assert result['explorer']['bytes'] == os.path.getsize(str(tmp_path / 'explorer.html'))
    assert 'wrote {}'.format(tmp_path / 'explorer.html') in lines
    json.dumps(result)
    os.makedirs(str(tmp_path / 'no'))
    result = explorer.write_views(model, x, t, str(tmp_path / 'no'), ['0'] * 10, 'title',
                                  page=False, log=lines.append)
    assert result['explorer'] is None and os.listdir(str(tmp_path / 'no')) == ['routing.png']


def test_the_template_is_package_data_and_playwright_is_pinned():
    with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
        project = tomllib.load(f)
    data = project['tool']['setuptools']['package-data']['capsnet_chainer.evaluation']
    assert os.path.basename(explorer.TEMPLATE) in data
    assert re.fullmatch(r'playwright==[\d.]+',
                        project['project']['optional-dependencies']['browser'][0])
    with open(explorer.TEMPLATE, encoding='utf-8') as f:
        assert f.read().count(explorer.PLACEHOLDER) == 1


# The page in a browser


def browser_missing():
    """Why the browser tests cannot run, with the line that installs what they need; or
    ``None``."""
    with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
        pin = tomllib.load(f)['project']['optional-dependencies']['browser'][0]
    install = 'install with: apt-get install -y chromium && pip install {}'.format(pin)
    if not os.path.exists(CHROMIUM):
        return '{} is missing; {}'.format(CHROMIUM, install)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return 'playwright is missing; {}'.format(install)
    return None


@pytest.fixture(scope='module')
def browser():
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page(object):
    """A page opened from a file, with what it logged and requested."""

    def __init__(self, browser, path):
        self.page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        self.errors, self.requests = [], []
        self.page.on('console', lambda m: m.type in ('error', 'warning') and
                     self.errors.append('{}: {}'.format(m.type, m.text)))
        self.page.on('pageerror', lambda e: self.errors.append('pageerror: {}'.format(e)))
        self.page.on('request', lambda r: self.requests.append(r.url))
        self.page.goto('file://' + os.path.abspath(path))
        self.page.evaluate('() => explorer.ready.then(() => true)')

    def js(self, expression, *args):
        return self.page.evaluate(expression, *args)

    def canvas(self, name):
        """The canvas's pixels ``(H, W, 4)``."""
        width, height, data = self.js('''(id) => {
            const c = document.getElementById(id), copy = document.createElement('canvas');
            copy.width = c.width; copy.height = c.height;
            const ctx = copy.getContext('2d', {willReadFrequently: true});
            ctx.drawImage(c, 0, 0);
            return [c.width, c.height, Array.from(ctx.getImageData(0, 0, c.width, c.height).data)];
        }''', name)
        return numpy.array(data, numpy.uint8).reshape((height, width, 4))

    def check_clean(self):
        assert self.errors == []
        assert [u for u in self.requests if not u.startswith(('file:', 'data:'))] == []

    def close(self):
        self.page.close()


def _at_scale(canvas, H, W):
    """The centre pixel of each image pixel of a canvas drawn at a whole scale."""
    s = canvas.shape[0] // H
    return canvas[s // 2::s, s // 2::s][:H, :W]


@pytest.fixture(scope='module')
def shipped_page(browser, shipped_model, test_digits, tmp_path_factory):
    x, t = test_digits
    _, scores, _ = routing.diagnose(shipped_model, x, t)
    path = str(tmp_path_factory.mktemp('page') / 'explorer.html')
    explorer.write_explorer(path, shipped_model, x, t, scores,
                            explorer.class_names(None, 10), 'the shipped model')
    page = Page(browser, path)
    yield page
    page.close()


def test_the_page_loads_from_disk_with_no_error_and_no_request(shipped_page):
    shipped_page.check_clean()
    assert shipped_page.js('document.title') == 'CapsNet explorer'
    assert shipped_page.js("document.getElementById('title').textContent") == (
        'the shipped model')
    n = shipped_page.js("document.querySelectorAll('#images .thumb').length")
    assert n == shipped_page.js('JSON.parse(document.getElementById("explorer-data")'
                                '.textContent).images.n') >= 20
    assert shipped_page.js("document.querySelectorAll('#sliders input').length") == 16
    assert shipped_page.js("document.getElementById('status').textContent") == ''


def test_the_pages_decoder_equals_numpys(shipped_page, shipped_model):
    rng = numpy.random.RandomState(3)
    v = rng.uniform(-0.3, 0.3, (4, 10, 16)).astype(numpy.float32)
    layers = _page_layers(shipped_model)
    for k, j in enumerate([0, 3, 7, 9]):
        pixels = numpy.array(shipped_page.js('([j, v]) => explorer.decode(j, v)',
                                             [j, v[k, j].tolist()]))
        numpy.testing.assert_allclose(pixels, _decode(shipped_model, v[k:k + 1], j)[0],
                                      atol=1e-3)
        # decode_like_page is the page's own arithmetic, to float64's rounding
        numpy.testing.assert_allclose(
            pixels, explorer.decode_like_page(layers, v[k:k + 1], j)[0], rtol=0, atol=1e-12)


def test_moving_a_slider_redraws_the_reconstruction(shipped_page, shipped_model):
    page = shipped_page
    page.js('explorer.select(0)')
    before = page.canvas('recon')
    box = page.page.locator('#dim5').bounding_box()
    y = box['y'] + box['height'] / 2
    page.page.mouse.move(box['x'] + box['width'] / 2, y)
    page.page.mouse.down()
    page.page.mouse.move(box['x'] + box['width'] - 2, y, steps=5)
    page.page.mouse.up()
    state = page.js('explorer.state()')
    offset = state['slots'][0]['offsets'][5]
    assert offset > 0.2
    after = page.canvas('recon')
    assert (after != before).any()
    # What it drew is the NumPy decoder's output on the offset capsule, to 1e-3
    j = state['slots'][0]['cls']
    v = numpy.zeros((1, 10, 16), numpy.float32)
    v[0, j] = state['slots'][0]['vector']
    expected = _decode(shipped_model, v, j)[0]
    drawn = numpy.array(page.js('explorer.reconstruction()')[0])
    numpy.testing.assert_allclose(drawn, expected, atol=1e-3)
    grey = _at_scale(after, 28, 28)[..., 0].astype(int)
    assert numpy.abs(grey - numpy.round(expected.reshape((28, 28)) * 255)).max() <= 1
    assert page.js("document.getElementById('dim5-value').textContent").endswith(
        '(+{:.3f})'.format(offset))
    # reset: the capsule's own values, and the first drawing again
    page.page.click('#reset')
    assert page.js('explorer.state()')['slots'][0]['offsets'] == [0] * 16
    assert (page.canvas('recon') == before).all()


def test_switching_images_and_capsules(shipped_page, test_digits):
    page = shipped_page
    page.page.click('#images .thumb:nth-child(3)')
    state = page.js('explorer.state()')
    data = page.js('JSON.parse(document.getElementById("explorer-data").textContent)'
                   '.images.index')
    x, t = test_digits
    k = data[2]
    assert state['image'] == 2
    shown = _at_scale(page.canvas('input'), 28, 28)[..., 0]
    numpy.testing.assert_array_equal(shown, numpy.round(x[k, 0] * 255))
    assert 'true {}'.format(t[k]) in page.js(
        "document.getElementById('input-caption').textContent")
    predicted = state['slots'][0]['cls']
    other = (predicted + 1) % 10
    before = page.canvas('recon')
    page.page.click('#bars .bar[data-j="{}"]'.format(other))
    state = page.js('explorer.state()')
    assert state['slots'][0]['cls'] == other and state['slots'][0]['offsets'] == [0] * 16
    assert page.js("document.getElementById('routing-class').textContent") == str(other)
    assert page.js("document.getElementById('slider-class').textContent") == str(other)
    assert (page.canvas('recon') != before).any()
    page.check_clean()


def test_the_page_rebuilds_the_couplings(shipped_page, shipped_model, test_digits):
    """Procedure 1 in the page's JavaScript, from the stored agreements."""
    page = shipped_page
    page.js('explorer.select(1)')
    k = page.js('JSON.parse(document.getElementById("explorer-data").textContent)'
                '.images.index')[1]
    x, _ = test_digits
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        _, steps = routing.trace(shipped_model, x[k:k + 1])
    c = numpy.array(page.js('explorer.couplings().c')).reshape((3, 10, 1152))
    expected = numpy.stack([s[0][0] for s in steps])
    spread = expected.max() - expected.min()
    assert numpy.abs(c - expected).max() < 0.01 * spread
    maps = page.js("document.querySelectorAll('#routing-maps canvas').length")
    assert maps == 2 * 3 + 1  # couplings and agreements per iteration, contributions


@pytest.fixture(scope='module')
def small_pages(browser, tmp_path_factory):
    """Pages of untrained networks: one without a decoder, one of image pairs."""
    folder = tmp_path_factory.mktemp('small')
    rng = numpy.random.RandomState(4)
    numpy.random.seed(0)  # the initial weights
    plain = CapsNet()
    x = rng.uniform(0, 1, (6, 1, 28, 28)).astype(numpy.float32)
    t = numpy.arange(6, dtype=numpy.int32)
    _, scores, _ = routing.diagnose(plain, x, t)
    explorer.write_explorer(str(folder / 'plain.html'), plain, x, t, scores,
                            explorer.class_names(None, 10), 'no decoder')
    pairs = CapsNet(in_shape=(1, 36, 36), reconstruct=True)
    for link in (pairs.decoder.fc1, pairs.decoder.fc2, pairs.decoder.fc3):
        link.W.array *= 8  # an untrained decoder that draws more than grey
    x2 = rng.uniform(0, 1, (6, 1, 36, 36)).astype(numpy.float32)
    t2 = numpy.array([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [1, 0]], numpy.int32)
    _, scores2, _ = routing.diagnose(pairs, x2, t2)
    explorer.write_explorer(str(folder / 'pairs.html'), pairs, x2, t2, scores2,
                            explorer.class_names(None, 10), 'pairs')
    return folder, pairs, t2


def test_a_model_without_decoder_gets_no_sliders_and_says_why(browser, small_pages):
    page = Page(browser, str(small_pages[0] / 'plain.html'))
    page.check_clean()
    for hidden in ('slider-panel', 'recon-figure'):
        assert page.js("document.getElementById('{}').offsetParent === null".format(hidden))
    text = page.js("document.getElementById('no-sliders').textContent")
    assert 'trained without --reconstruct' in text
    assert page.js("document.getElementById('no-sliders').offsetParent !== null")
    assert page.js('explorer.hasDecoder()') is False
    page.page.click('#images .thumb:nth-child(2)')
    assert page.js('explorer.state()')['image'] == 1
    page.check_clean()
    page.close()


def test_pairs_show_two_capsules_overlaid_in_red_and_green(browser, small_pages):
    folder, model, t2 = small_pages
    page = Page(browser, str(folder / 'pairs.html'))
    page.check_clean()
    assert page.js("document.getElementById('pair-controls').hidden") is False
    state = page.js('explorer.state()')
    assert len(state['slots']) == 2
    recon = page.js('explorer.reconstruction()')
    drawn = _at_scale(page.canvas('recon'), 36, 36)
    for s in range(2):
        expected = numpy.round(numpy.array(recon[s]).reshape((36, 36)) * 255)
        assert numpy.abs(drawn[..., s].astype(int) - expected).max() <= 1
    assert (drawn[..., 2] == 0).all()
    # The second slot's sliders and capsule, then the labels' capsules
    page.page.check('input[name=slot][value="1"]')
    page.page.click('#bars .bar[data-j="9"]')
    state = page.js('explorer.state()')
    assert state['active'] == 1 and state['slots'][1]['cls'] == 9
    page.page.select_option('#pair-mode', 'labels')
    index = page.js('JSON.parse(document.getElementById("explorer-data").textContent)'
                    '.images.index')
    state = page.js('explorer.state()')
    assert [s['cls'] for s in state['slots']] == t2[index[state['image']]].tolist()
    page.check_clean()
    page.close()


def test_colour_images_and_the_none_of_the_above_category(browser, tmp_path):
    """CIFAR-10's adaptations (Sec. 7): RGB images, 8-D capsules, a leaky routing."""
    numpy.random.seed(1)  # the initial weights
    model = CapsNet(reconstruct=True, in_shape=(3, 24, 24), n_primary_type=8, capsule_dim=8,
                    none_of_the_above=True)  # 8 types of 4 x 4 primary capsules
    x = numpy.random.RandomState(6).uniform(0, 1, (3, 3, 24, 24)).astype(numpy.float32)
    t = numpy.array([0, 1, 2], numpy.int32)
    _, scores, _ = routing.diagnose(model, x, t)
    explorer.write_explorer(str(tmp_path / 'rgb.html'), model, x, t, scores,
                            ['c{}'.format(k) for k in range(10)], 'rgb')
    page = Page(browser, str(tmp_path / 'rgb.html'))
    page.check_clean()
    assert page.js("document.querySelectorAll('#sliders input').length") == 8
    k = page.js('explorer.state()')['image']
    index = page.js('JSON.parse(document.getElementById("explorer-data").textContent)'
                    '.images.index')[k]
    shown = _at_scale(page.canvas('input'), 24, 24)[..., :3]
    numpy.testing.assert_array_equal(shown, numpy.round(x[index].transpose((1, 2, 0)) * 255))
    v = numpy.random.RandomState(7).uniform(-0.3, 0.3, (1, 10, 8)).astype(numpy.float32)
    pixels = numpy.array(page.js('([j, v]) => explorer.decode(j, v)', [2, v[0, 2].tolist()]))
    numpy.testing.assert_allclose(pixels, _decode(model, v, 2)[0], atol=1e-3)
    with chainer.using_config('train', False), chainer.no_backprop_mode():
        _, steps = routing.trace(model, x[index:index + 1])
    c = numpy.array(page.js('explorer.couplings().c')).reshape((3, 10, 8 * 16))
    expected = numpy.stack([s[0][0] for s in steps])
    numpy.testing.assert_allclose(c[0], 1 / 11, atol=1e-9)  # the extra category takes 1/11
    assert numpy.abs(c - expected).max() < 0.01 * (expected.max() - expected.min())
    page.close()


@pytest.mark.skipif(not os.path.exists(DOCS_PAGE), reason='no docs/figures/explorer.html')
def test_the_shipped_models_page_in_docs(browser, shipped_model):
    """The page that ships in docs/ (analyze.py on the shipped model), its decoder
    against NumPy's; it keeps README's screenshot where CAPSNET_EXPLORER_SCREENSHOT
    says."""
    page = Page(browser, DOCS_PAGE)
    page.check_clean()
    v = numpy.random.RandomState(5).uniform(-0.3, 0.3, (1, 10, 16)).astype(numpy.float32)
    pixels = numpy.array(page.js('([j, v]) => explorer.decode(j, v)', [4, v[0, 4].tolist()]))
    numpy.testing.assert_allclose(pixels, _decode(shipped_model, v, 4)[0], atol=1e-3)
    target = os.environ.get('CAPSNET_EXPLORER_SCREENSHOT')
    if target:
        page.page.set_viewport_size({'width': 1280, 'height': 860})
        page.js('explorer.select(0)')
        page.js('explorer.setOffset(3, 0.2)')
        page.page.screenshot(path=target + '.tmp.png')
        from PIL import Image  # matplotlib's: 64 colours keep README's picture small
        with Image.open(target + '.tmp.png') as image:
            image.convert('RGB').quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(
                target, optimize=True)
        os.remove(target + '.tmp.png')
    page.close()


testing.run_module(__name__, __file__)
