"""The package's layout, as README's "Code layout" draws it: layers the right way up, no
import circles, modules of one concern and at most 400 lines, a test file for each.

The imports are read from the source (``ast``), not by importing it.
"""

import ast
import os

import pytest

from conftest import REPO

PACKAGE = 'capsnet_chainer'
ROOT = os.path.join(REPO, PACKAGE)

#: The layers, bottom up: a module may import from its own layer and the ones below.
#: The network's layer is itself ordered: the equations, the kernels, the layers, the
#: networks.
LAYERS = (
    ('leaves', ('compat', 'errors', 'fileio', 'random_state', 'inference')),
    ('equations', ('functions',)),
    ('kernels', ('kernels',)),
    ('layers', ('links',)),
    ('networks', ('model', 'baseline_cnn')),
    ('device', ('device',)),
    ('datasets', ('datasets',)),
    ('evaluation', ('evaluation',)),
    ('io', ('io',)),
    ('training', ('training',)),
    ('cli', ('cli',)),
)
#: What the network (the equations, kernels, layers and networks) never imports.
NETWORK = ('functions', 'kernels', 'links', 'model', 'baseline_cnn')
NOT_FOR_THE_NETWORK = ('datasets', 'training', 'evaluation', 'io', 'cli', 'device')
MAX_LINES = 400


def modules():
    """Every module of the package: ``{dotted name: path}`` (``__init__`` files as the
    package's name)."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
            if parts[-1] == '__init__':
                parts = parts[:-1]
            found['.'.join(parts)] = path
    return found


MODULES = modules()


def imports(name):
    """The package's modules that module ``name`` imports, as dotted names: ``from
    capsnet_chainer.pkg import mod`` names the module ``pkg.mod`` where it is one, else
    the package ``pkg`` (whose ``__init__`` hands the name on)."""
    tree = ast.parse(open(MODULES[name]).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = ['{}.{}'.format(node.module, alias.name) for alias in node.names]
            targets = [t if t in MODULES else node.module for t in targets]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer(name):
    """The index in :data:`LAYERS` of a module (``None``: the package's own
    ``__init__``, which re-exports from every layer)."""
    parts = name.split('.')[1:]
    if not parts:
        return None
    for i, (_, members) in enumerate(LAYERS):
        if parts[0] in members:
            return i
    raise AssertionError('{} is in no layer of LAYERS: add it there and to README\'s '
                         'code layout'.format(name))


def test_every_module_is_in_a_layer():
    for name in MODULES:
        layer(name)


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for name, targets in GRAPH.items():
        if layer(name) is None:
            continue
        for target in targets:
            if layer(target) is None or layer(target) > layer(name):
                upward.append('{} ({}) imports {} ({})'.format(
                    name, LAYERS[layer(name)][0], target,
                    'the package' if layer(target) is None else LAYERS[layer(target)][0]))
    assert not upward


def test_the_library_never_imports_the_command_line():
    assert [name for name, targets in GRAPH.items() if PACKAGE + '.cli' in targets] == []


def test_the_network_imports_no_data_set_training_evaluation_or_files():
    wrong = []
    for name, targets in GRAPH.items():
        if name.split('.')[1:2] and name.split('.')[1] in NETWORK:
            wrong += ['{} imports {}'.format(name, t) for t in targets
                      if t.split('.')[1] in NOT_FOR_THE_NETWORK]
    assert not wrong


def test_no_import_circles():
    # Depth-first search for a back edge; the package's __init__ re-exports, so the
    # imports of a subpackage's __init__ count as its own.
    state, circles = {}, []

    def visit(name, path):
        state[name] = 'open'
        for target in sorted(GRAPH[name]):
            if state.get(target) == 'open':
                circles.append(' -> '.join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[name] = 'done'

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])
    assert not circles


@pytest.mark.parametrize('name', sorted(MODULES))
def test_a_module_has_at_most_400_lines(name):
    with open(MODULES[name]) as f:
        n = sum(1 for _ in f)
    assert n <= MAX_LINES, '{} has {} lines; split it by concern'.format(name, n)


def test_scripts_have_at_most_400_lines_too():
    for script in ('train.py', 'analyze.py'):
        with open(os.path.join(REPO, script)) as f:
            assert sum(1 for _ in f) <= MAX_LINES, script


def test_every_module_has_its_test_file():
    missing = []
    for name, path in MODULES.items():
        if os.path.basename(path) == '__init__.py':
            continue
        parts = name.split('.')[1:]
        test = os.path.join(REPO, 'tests', *parts[:-1], 'test_{}.py'.format(parts[-1]))
        if not os.path.isfile(test):
            missing.append(os.path.relpath(test, REPO))
    assert not missing


def test_test_file_names_are_unique():
    # The tests import their helpers from conftest.py without packages, so two test
    # files of one name would shadow each other.
    seen = {}
    for folder, _, files in os.walk(os.path.join(REPO, 'tests')):
        for name in files:
            if name.startswith('test_') and name.endswith('.py'):
                assert name not in seen, (seen.get(name), folder)
                seen[name] = folder
