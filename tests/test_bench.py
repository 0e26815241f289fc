"""The benchmark's own arithmetic, which only a GPU run feeds for real: the CUPTI trace's
counts per phase, the peer's console, and the report's tables."""

import os
import sys

import pytest

from capsnet_chainer.training.profile import PHASES
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'bench'))

import profile_gpu  # noqa: E402
import report  # noqa: E402


def event(cat, name, ts, dur=1, correlation=None):
    e = {'ph': 'X', 'cat': cat, 'name': name, 'ts': ts, 'dur': dur}
    if correlation is not None:
        e['args'] = {'correlation': correlation}
    return e


def test_cupti_counts_calls_launches_syncs_and_kernels_per_phase():
    events = [
        event('user_annotation', 'capsnet/batch', 0, 10),
        event('user_annotation', 'capsnet/forward', 10, 100),
        event('user_annotation', 'other', 10, 100),
        event('cuda_driver', 'cuLaunchKernel', 20, correlation=1),
        event('cuda_runtime', 'cudaLaunchKernel', 30, correlation=2),
        event('cuda_runtime', 'cudaMemcpyAsync', 40, correlation=3),
        event('cuda_runtime', 'cudaStreamSynchronize', 50, correlation=4),
        event('cuda_runtime', 'cudaEventRecord', 5, correlation=5),
        event('cuda_runtime', 'cudaLaunchKernel', 500, correlation=6),  # in no range
        event('kernel', 'cupy_copy', 1000, 500, correlation=1),
        event('kernel', 'sgemm', 2000, 1500, correlation=2),
        event('gpu_memcpy', 'Memcpy HtoD', 3000, 100, correlation=3),
        event('kernel', 'other', 4000, 100, correlation=6),
    ]
    got = profile_gpu.cupti_counts(events, n_steps=2)
    forward = got['phases']['forward']
    assert forward == {'calls': 2.0, 'launches': 1.0, 'syncs': 0.5, 'kernels': 1.0,
                       'kernel_ms': 1.0, 'copies': 0.5, 'copy_ms': 0.05, 'memsets': 0.0}
    assert got['phases']['batch']['calls'] == 0.5
    assert got['unattributed']['kernels'] == 0.5
    assert got['per_step']['kernels'] == 1.5 and got['per_step']['launches'] == 1.0
    assert got['events']['kernel'] == 3 and got['steps'] == 2


def test_syncs_are_waits_not_asynchronous_copies():
    for name, sync in (('cudaStreamSynchronize', True), ('cuCtxSynchronize', True),
                       ('cuEventSynchronize', True), ('cuMemcpyDtoH_v2', True),
                       ('cudaMemcpy', True), ('cudaMemcpyAsync', False),
                       ('cuMemcpyHtoDAsync_v2', False), ('cuLaunchKernel', False)):
        assert bool(profile_gpu.SYNC.search(name)) is sync, name
    for name in ('cuLaunchKernel', 'cudaLaunchKernel', 'cuLaunchKernelEx',
                 'cudaLaunchCooperativeKernel'):
        assert profile_gpu.LAUNCH.search(name), name


PEER_OUTPUT = '''\
torch cuda compile epoch 1: 31.20 s (training 29.00 s, test 2.20 s), test accuracy 97.10%
torch cuda compile epoch 2: 5.10 s (training 4.50 s, test 0.60 s), test accuracy 98.20%
torch cuda compile epoch 3: 4.90 s (training 4.30 s, test 0.60 s), test accuracy 98.60%
torch cuda compile epoch 4: 5.30 s (training 4.70 s, test 0.60 s), test accuracy 98.70%
torch cuda compile median epoch after the first: 5.10 s (3 epochs of 60000 training + 10000
torch cuda compile peak GPU memory: 2048 MiB
'''


def test_peer_figures_from_its_console():
    got = profile_gpu.peer_figures(PEER_OUTPUT)
    assert [e['epoch_s'] for e in got['epochs']] == [31.2, 5.1, 4.9, 5.3]
    assert got['epochs'][-1]['test_accuracy'] == pytest.approx(0.987)
    assert got['epoch_s'] == {'median': 5.1, 'min': 4.9, 'max': 5.3, 'n': 3}
    assert got['peak_mib'] == 2048


def phase(wall, busy=None):
    figures = {'steps': 10, 'wall_ms': wall, 'wall_median_ms': wall, 'cpu_ms': wall,
               'gpu_span_ms': wall}
    if busy is not None:
        figures['gpu_busy_ms'] = busy
    return figures


def fake_report():
    """A report as a GPU run would write it, with round figures."""
    phases = {name: phase(1.0, 0.5) for name in PHASES}
    phases['extensions'] = phase(2.0)
    log = [{'epoch': e, 'elapsed_time': 1.0 + 2.0 * e, 'time/updates': 1.6,
            'time/rest': 0.4, 'validation/main/accuracy': 0.99} for e in range(1, 5)]
    train_py = {'log': log, 'steps_per_epoch': 200, 'summary': {
        'natural_steps': 500, 'device_steps': 20, 'skip_epochs': 1, 'phases': phases,
        'epochs': [{'epoch': e, 'steps': 200, 'device_steps': 20 * (e == 4),
                    'steps_s': 1.6, 'extensions_s': 0.4, 'wall_s': 2.0}
                   for e in range(1, 5)],
        'extensions': {'validation': {'calls': 4, 'seconds': 4.0,
                                      'seconds_after_skip': 3.0}}}}
    cupti = {'cupti': {'steps': 10, 'events': {'kernel': 100}, 'phases': {
        'forward': {'calls': 200, 'launches': 150, 'syncs': 0, 'kernel_ms': 4.0}},
        'unattributed': {'kernels': 0}, 'per_step': {'launches': 390, 'syncs': 1,
                                                     'kernel_ms': 15.0}}}
    bench = {'variant': 'default', 'n_train': 60000, 'train_s': 5.0,
             'epoch_s': {'median': 6.0, 'min': 5.9, 'max': 6.3, 'n': 5},
             'train': {'wall_ms': 20.0, 'host_ms': 18.0, 'device_ms': 16.0, 'functions': {
                 'Convolution2DFunction': [10.0, 2.0, 2], 'SharedRouting': [1.0, 3.0, 1]}},
             'conv': {'gflop': 230.0, 'kernel forward + backward': 10.0},
             'adam_ms': 0.1, 'finite_check_ms': 0.2, 'batch_ms': 1.0, 'peak_used_mib': 1100}
    peer = profile_gpu.peer_figures(PEER_OUTPUT)
    return {'host': {'date': '2026-12-06T00:00:00+00:00', 'commit': 'abc', 'cpu': 'Xeon',
                     'cores': 16, 'load_average': [0.1, 0.2, 0.3],
                     'machine': {'gpu': 'NVIDIA H200', 'memory_gib': 139.8,
                                 'cupy': '14.2.0'}},
            'smi': {'train_py': {'readings': 30, 'clocks.sm': 1980.0}},
            'elapsed_s': 470.0,
            'parts': {'ceilings': {'gemm_tflops': 50.6, 'copy_gbs': 4300.0,
                                   'epoch_tflop': 76.2, 'floor_float32_s': 1.51},
                      'train_py': train_py, 'cupti': cupti, 'bench:default': bench,
                      'peer:compile': peer,
                      'peer:max-autotune': {'error': 'skipped: 20 s left of --deadline-s'}}}


def test_report_renders_every_table():
    text = report.render(fake_report())
    # train.py: epochs 2 and 3 are clean (1 compiles, 4 has the device steps)
    assert '| 2.00 (2.00 to 2.00, 2) |' in text
    # the phases: 7 of 1 ms and the extensions' 2 ms make a 9 ms step; the epoch's 2 s
    # over 200 steps is 10 ms a step, of which the phases account for 90%
    assert '| forward | 1.000 | 1.000 | 1.000 | 1.000 | 0.500 | 150.0 | 0.0 | 4.000 | 11.1% |' \
        in text
    assert 'the phases account for 90.0% of it' in text
    assert '| validation | 4 | 1.000 |' in text  # 3 s over the 3 epochs after the first
    # the benchmark: 230 GFLOP in 10 ms
    assert '| 23.0 |' in text
    assert '| compile | 5.10 (4.90 to 5.30, 3) |' in text
    assert 'skipped: 20 s left' in text
    assert '| float32 at the measured matrix rate (50.6 TFLOP/s) | 1.510 |' in text
    assert '| peer compile | 5.10 | 3.4x |' in text
    assert '| goal, float32 | 3.0 | 2.0x |' in text
    assert 'An epoch: 76.2 TFLOP (60,000 training images' in text
    r = fake_report()
    r['parts']['ceilings'].update(epoch_tflop=0.7, epoch_images=[512, 200])
    assert 'An epoch: 0.7 TFLOP (512 training images with reconstruction, 200 test' in (
        report.render(r))


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.kernels.test_routing_cuda.TestTwins_param_0_" name="test_softmax">
<failure message="boom">boom</failure></testcase>
<testcase classname="tests.kernels.test_conv_cuda" name="test_fine"/>
<testcase classname="tests.kernels.test_conv_cudax" name="test_of_another_file">
<failure message="boom">boom</failure></testcase>
<testcase classname="training.test_updater" name="test_deferred[@cupy:0]">
<error message="oops">oops</error></testcase>
</testsuite></testsuites>
"""


def test_the_paths_whose_gpu_tests_failed_stay_off(tmp_path):
    xml = tmp_path / 'tests_gpu.xml'
    xml.write_text(JUNIT)
    every = ','.join(profile_gpu.GPU_PATHS)
    on, off = profile_gpu.paths_on(every, str(xml))
    assert on == ['resident', 'conv_cuda', 'margin_loss']
    assert off == {'routing_cuda': 'its gpu tests failed: test_softmax',
                   'deferred_check': 'its gpu tests failed: test_deferred[@cupy:0]'}
    # no report named (the tests did not run in this call): every path asked for
    assert profile_gpu.paths_on(every, None) == (list(profile_gpu.GPU_PATHS), {})
    on, off = profile_gpu.paths_on('conv_cuda', None)
    assert on == ['conv_cuda'] and off['resident'] == 'not in --paths'
    with pytest.raises(ValueError, match='unknown --paths cuda'):
        profile_gpu.paths_on('cuda', None)
    # each path's test files exist
    for files in profile_gpu.GPU_PATHS.values():
        for f in files:
            assert os.path.exists(os.path.join(REPO, f)), f


def test_the_report_names_the_paths_on_and_those_left_off():
    r = fake_report()
    r['parts']['train_py']['paths_on'] = ['resident', 'conv_cuda']
    r['paths_off'] = {'routing_cuda': 'its gpu tests failed: test_softmax',
                      'deferred_check': 'not in --paths'}
    text = report.render(r)
    assert '| the new GPU paths on: resident, conv_cuda |' in text
    assert 'Left off: routing_cuda (its gpu tests failed: test_softmax).' in text


def test_report_of_a_cpu_check_or_a_failed_part():
    r = fake_report()
    r['parts']['train_py'] = {'error': 'stopped at its 180 s'}
    r['parts'].pop('cupti')
    text = report.render(r)
    assert 'stopped at its 180 s' in text and '(no profiled run)' in text


def test_report_merges_a_second_call_into_the_first():
    first = fake_report()
    second = {'host': {'date': 'later'}, 'elapsed_s': 100.0,
              'smi': {'peer:max-autotune': {'readings': 50}},
              'parts': {'peer:max-autotune': profile_gpu.peer_figures(PEER_OUTPUT),
                        'peer:compile': {'error': 'not run again'}}}
    merged = report.merge([first, second])
    assert merged['host']['date'] == first['host']['date']
    assert 'error' not in merged['parts']['peer:max-autotune']
    assert 'error' not in merged['parts']['peer:compile']  # the first's, not failed
    assert merged['elapsed_s'] == 570.0 and set(merged['smi']) == {'train_py',
                                                                   'peer:max-autotune'}
    assert '| max-autotune | 5.10 (4.90 to 5.30, 3) |' in report.render(merged)


def test_the_bench_parts_leave_off_the_paths_left_off():
    off = {'conv_cuda': 'its gpu tests failed: test_x', 'margin_loss': 'not in --paths',
           'resident': 'not in --paths'}
    assert profile_gpu.bench_variant('default', off) == (
        'default+im2col-copy+plain-loss', None)
    assert profile_gpu.bench_variant('im2col-copy+tf32', off) == (
        'im2col-copy+tf32+plain-loss', None)
    assert profile_gpu.bench_variant('default', {}) == ('default', None)
    assert profile_gpu.bench_variant('deferred-check', off) == ('deferred-check+im2col-copy'
                                                                '+plain-loss', None)
    run, why = profile_gpu.bench_variant(
        'no-type-check+deferred-check', {'deferred_check': 'its gpu tests failed: t'})
    assert run is None and why == 'skipped: deferred_check is off (its gpu tests failed: t)'
    # every suffix is a variant that switches its path off
    import bench_gpu
    for path, suffix in profile_gpu.BENCH_OFF.items():
        assert path in profile_gpu.GPU_PATHS
        assert bench_gpu.settings_of(suffix)[path] is False


def test_profile_gpu_refuses_unknown_or_surplus_names_before_any_part():
    check = profile_gpu.check_choices
    modes = list(profile_gpu.PEER_MODES)
    check(['default', 'tf32+no-type-check'], modes, ['bench:tf32+no-type-check', 'cupti'])
    with pytest.raises(ValueError, match='unknown --variants defualt; choose from default'):
        check(['defualt'], modes, [])
    assert profile_gpu.BENCH_SLOTS == 3
    with pytest.raises(ValueError, match='at most 3 --variants'):
        check(['default', 'tf32', 'no-type-check', 'chainer-conv'], modes, [])
    with pytest.raises(ValueError, match='unknown --peer-modes eagre; choose from eager'):
        check(['default'], ['eagre'], [])
    with pytest.raises(ValueError, match=r'unknown --parts bench:tf32, peer:max-autotune; '
                                         r'choose from ceilings, .*bench:default'):
        check(['default'], ['eager'], ['ceilings', 'bench:tf32', 'peer:max-autotune'])


def test_profile_gpu_parts_in_order_with_a_slot_per_variant():
    labels = [label for label, _, _ in profile_gpu.part_labels(['a', 'b'], ['compile'])]
    assert labels == ['ceilings', 'train_py', 'cupti', 'bench:a', 'peer:compile',
                      'train_py_host', 'bench:b']


def test_a_missing_gpu_tests_report_leaves_every_path_off(tmp_path):
    """pytest died before writing it: nothing says that a kernel works."""
    missing = str(tmp_path / 'tests_gpu.xml')
    on, off = profile_gpu.paths_on('resident,conv_cuda', missing)
    why = 'no gpu test results: {} is missing'.format(missing)
    assert on == [] and off['resident'] == off['conv_cuda'] == why
    assert off['margin_loss'] == 'not in --paths' and set(off) == set(profile_gpu.GPU_PATHS)


def test_group_totals_in_the_order_of_the_groups():
    import bench_gpu
    got = bench_gpu.group_totals({'Add': [1.0, 2.0, 3], 'SharedRouting': [1.0, 1.0, 1],
                                  'Convolution2DFunction': [2.0, 2.0, 2],
                                  'Convolution2DGradW': [1.0, 1.0, 1]})
    assert list(got.items()) == [
        (bench_gpu.GROUPS[0][0], [3.0, 3.0, 3]), (bench_gpu.GROUPS[2][0], [1.0, 1.0, 1]),
        (bench_gpu.OTHER, [1.0, 2.0, 3])]
