"""The tables of bench/README.md from a ``bench/profile_gpu.py`` JSON.

Usage::

    python bench/report.py bench/results/2026-12-06-h200-abc1234.json > tables.md
    python bench/report.py FIRST.json SECOND.json      # a second --parts call merged in

Markdown on stdout: the machine; ``train.py``'s epochs; a step of ``train.py`` phase
by phase (wall, CPU, GPU span and busy ms, kernel launches and syncs, its share of the
step) and how much of the epoch's time per step the phases account for; the
extensions per epoch; the benchmark's variants (epochs, step, the convolution's and
the whole step's TFLOP/s, Adam's GB/s); the peer's configurations; the floors and each
run's distance from them.
"""

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_gpu import BATCH, N_TEST, N_TRAIN  # noqa: E402  (this folder)
from bench_gpu import epoch_floor, group_totals, spread  # noqa: E402

#: Issue 29's floors of an epoch of 76.2 TFLOP beside the measured float32 one: TF32
#: and bf16 at the dense rates of an H100/H200 datasheet (leads, not measured here).
DATASHEET_TFLOPS = {'tf32': 495.0, 'bf16': 990.0}
#: Parameters of the reference network, and the bytes Adam moves for each (float32:
#: reads the parameter, its gradient and two moments; writes the parameter and moments).
N_PARAMS, ADAM_BYTES_PER_PARAM = 6787088, 4 * 7
#: The goals of issue 29: the float32 and the reduced-precision epoch.
GOALS = {'float32': 3.0, 'reduced precision': 1.2}


def fmt(value, digits=2, unit=''):
    if value is None:
        return ''
    return '{:.{}f}{}'.format(value, digits, unit)


def median(values):
    """The median of ``values`` that are not ``None``; ``None`` where none are."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def spread_text(s, digits=2):
    """``median (min to max, n)``."""
    if not s:
        return ''
    return '{} ({} to {}, {})'.format(fmt(s['median'], digits), fmt(s['min'], digits),
                                      fmt(s['max'], digits), s['n'])


def machine_section(report):
    host = report.get('host', {})
    m = host.get('machine', {})
    rows = [('date (UTC)', host.get('date')), ('commit', host.get('commit')),
            ('GPU', '{} ({:.0f} GiB), driver {}'.format(
                m.get('gpu', 'none'), m.get('memory_gib', 0), m.get('driver_version', '?'))
             if 'gpu' in m else 'none'),
            ('versions', ', '.join('{} {}'.format(k, m[k]) for k in
                                   ('python', 'numpy', 'cupy', 'chainer') if k in m)),
            ('CPU', '{} ({} cores, {} usable), {:.0f} GiB'.format(
                host.get('cpu'), host.get('cores'), host.get('usable_cores', '?'),
                host.get('memory_gib', 0))),
            ('load average at the start', ', '.join(
                '{:.2f}'.format(v) for v in host.get('load_average', ()))),
            ('whole run', fmt(report.get('elapsed_s'), 0, ' s'))]
    out = ['### Machine', '', table(('', ''), rows)]
    smi = report.get('smi') or {}
    if smi:
        out += ['', 'nvidia-smi during each part (read every 2 s):', '',
                table(('part', 'readings', 'SM MHz (median)', 'max SM MHz',
                       'memory MHz (median)', 'GPU % (median)', 'max W', 'max C'),
                      [(part, s.get('readings'), fmt(s.get('clocks.sm'), 0),
                        fmt(s.get('clocks.max.sm'), 0), fmt(s.get('clocks.mem'), 0),
                        fmt(s.get('utilization.gpu'), 0), fmt(s.get('power.draw'), 0),
                        fmt(s.get('temperature.gpu'), 0))
                       for part, s in smi.items()])]
    return '\n'.join(out)


def log_epochs(log):
    """Per epoch of a train.py log: ``(epoch, seconds, updates s, rest s)``."""
    out, last = [], 0.0
    for entry in log:
        out.append((entry['epoch'], entry['elapsed_time'] - last, entry.get('time/updates'),
                    entry.get('time/rest')))
        last = entry['elapsed_time']
    return out


def clean_epochs(part):
    """The epochs of a profiled train.py run after the first and without device steps,
    as its log times them: ``[(epoch, s, updates s, rest s)]``."""
    flagged = {e['epoch'] for e in part['summary']['epochs'] if e['device_steps']}
    return [e for e in log_epochs(part['log']) if e[0] > 1 and e[0] not in flagged]


def train_py_section(report):
    parts = report.get('parts', {})
    rows = []
    for name, title in (('train_py', 'the new GPU paths on'),
                        ('train_py_host', 'today\'s default: those paths off')):
        p = parts.get(name)
        if name == 'train_py' and p and 'paths_on' in p:
            title = 'the new GPU paths on: {}'.format(', '.join(p['paths_on']) or 'none')
        if not p or 'log' not in p:
            if p:
                rows.append((title, p.get('error', 'failed'), '', '', '', ''))
            continue
        epochs = log_epochs(p['log'])
        clean = clean_epochs(p)
        rows.append((title, ', '.join('{:.2f}'.format(e[1]) for e in epochs),
                     spread_text(spread(e[1] for e in clean)),
                     fmt(median(e[2] for e in clean)), fmt(median(e[3] for e in clean)),
                     fmt(p['log'][-1].get('validation/main/accuracy', 0) * 100, 2, '%')))
    out = ['### `train.py -g 0 --reconstruct`', '',
           table(('run', 'each epoch, s', 'clean epochs: median (min to max, n)',
                  'of which updates, s', 'the rest, s', 'test accuracy at the end'), rows),
           '', 'Clean epochs: after the first (which compiles CuPy\'s kernels) and without '
           'the device steps (whose GPU work is queued behind busy work).']
    off = report.get('paths_off') or {}
    if any(why != 'not in --paths' for why in off.values()):
        out += ['', 'Left off: ' + '; '.join('{} ({})'.format(k, v) for k, v in off.items()
                                             if v != 'not in --paths') + '.']
    return '\n'.join(out)


def phase_section(report):
    parts = report.get('parts', {})
    p = parts.get('train_py')
    if not p or 'summary' not in p:
        return '### A step of train.py\n\n(no profiled run)'
    summary = p['summary']
    phases = summary['phases']
    cupti = (parts.get('cupti') or {}).get('cupti') or {}
    counts = cupti.get('phases') or {}
    step_ms = sum(phases[k]['wall_ms'] for k in phases)
    clean = clean_epochs(p)
    per_step = (statistics.median(e[1] for e in clean) * 1e3 / p['steps_per_epoch']
                if clean else None)
    rows = []
    for name, f in phases.items():
        c = counts.get(name, {})
        rows.append((name, fmt(f.get('wall_ms'), 3), fmt(f.get('wall_median_ms'), 3),
                     fmt(f.get('cpu_ms'), 3), fmt(f.get('gpu_span_ms'), 3),
                     fmt(f.get('gpu_busy_ms'), 3), fmt(c.get('launches'), 1),
                     fmt(c.get('syncs'), 1), fmt(c.get('kernel_ms'), 3),
                     fmt(100 * f['wall_ms'] / step_ms, 1, '%')))
    total = cupti.get('per_step', {})
    rows.append(('**the step** (the phases\' means)', fmt(step_ms, 3), '', '', '',
                 fmt(sum(f.get('gpu_busy_ms', 0) for f in phases.values()), 3),
                 fmt(total.get('launches'), 1), fmt(total.get('syncs'), 1),
                 fmt(total.get('kernel_ms'), 3), '100%'))
    out = ['### A step of `train.py`, phase by phase', '',
           '{} natural steps after epoch {} (means, medians), {} device steps (GPU busy); '
           'CUPTI over {} steps of a short run (launches, syncs, kernel ms per step).'.format(
               summary['natural_steps'], summary['skip_epochs'], summary['device_steps'],
               cupti.get('steps', 0)), '',
           table(('phase', 'wall ms', 'median', 'CPU ms', 'GPU span ms', 'GPU busy ms',
                  'launches', 'syncs', 'kernel ms (CUPTI)', '% of the step'), rows)]
    if per_step:
        out += ['', 'The clean epochs\' median over their {} steps: {:.3f} ms a step; the '
                'phases account for {:.1f}% of it.'.format(
                    p['steps_per_epoch'], per_step, 100 * step_ms / per_step)]
    if cupti.get('error'):
        out += ['', 'CUPTI: ' + cupti['error']]
    elif cupti:
        out += ['', 'CUPTI per step, unattributed to a phase: {}; trace events by '
                'category: {}.'.format(
                    json.dumps({k: round(v, 2) for k, v in cupti['unattributed'].items()}),
                    json.dumps(cupti.get('events', {})))]
    n_epochs = max(1, len([e for e in summary['epochs'] if e['epoch'] > summary['skip_epochs']]))
    ext = sorted(summary.get('extensions', {}).items(),
                 key=lambda kv: -kv[1]['seconds_after_skip'])
    out += ['', 'The extensions, per epoch after epoch {}:'.format(summary['skip_epochs']), '',
            table(('extension', 'calls', 's per epoch'),
                  [(k, v['calls'], fmt(v['seconds_after_skip'] / n_epochs, 3))
                   for k, v in ext])]
    return '\n'.join(out)


def bench_section(report):
    from bench_cpu import flop_per_image
    flop = flop_per_image()
    rows, parts = [], []
    for name, r in report.get('parts', {}).items():
        if not name.startswith('bench:'):
            continue
        if 'error' in r:
            rows.append((name[6:], r['error'], '', '', '', '', '', ''))
            continue
        train = r['train']
        conv = r.get('conv', {})
        conv_ms = conv.get('kernel forward + backward')
        rows.append((r['variant'], spread_text(r.get('epoch_s')),
                     fmt(r['n_train'] / r['train_s'], 0),
                     '{} / {} / {}'.format(fmt(train['wall_ms']), fmt(train['host_ms']),
                                           fmt(train['device_ms'])),
                     fmt(flop['train'] * BATCH / train['device_ms'] / 1e9, 1),
                     fmt(conv['gflop'] / conv_ms, 1) if conv_ms else '',
                     fmt(N_PARAMS * ADAM_BYTES_PER_PARAM / r['adam_ms'] / 1e6, 0)
                     if r.get('adam_ms') else '',
                     fmt(r.get('peak_used_mib'), 0)))
        parts.append(r)
    out = ['### `bench/bench_gpu.py`', '',
           table(('variant', 'epoch s: median (min to max, n)', 'train img/s',
                  'step wall / host / GPU ms', 'step TFLOP/s (GPU)',
                  'primary conv TFLOP/s', 'Adam GB/s', 'peak MiB'), rows)]
    for r in parts:
        groups = group_totals(r['train']['functions'])
        out += ['', 'Variant {}, a training step by function group:'.format(r['variant']), '',
                table(('group', 'GPU ms', 'host ms', 'calls'),
                      [(k, fmt(v[0], 3), fmt(v[1], 3), v[2]) for k, v in groups.items()]
                      + [('Adam (outside the functions)', fmt(r.get('adam_ms'), 3), '', ''),
                         ('non-finite check', fmt(r.get('finite_check_ms'), 3), '', ''),
                         ('next batch', fmt(r.get('batch_ms'), 3), '', '')])]
    return '\n'.join(out)


def peer_section(report):
    rows = []
    for name, p in report.get('parts', {}).items():
        if not name.startswith('peer:'):
            continue
        last = p['epochs'][-1] if p.get('epochs') else {}
        rows.append((name[5:], spread_text(p.get('epoch_s')),
                     ', '.join('{:.2f}'.format(e['epoch_s']) for e in p.get('epochs', [])),
                     fmt(last.get('test_accuracy', 0) * 100, 2, '%') if last else '',
                     fmt(p.get('peak_mib'), 0), p.get('error', '')))
    return '\n'.join(['### The PyTorch peer, real epochs (float32)', '',
                      table(('configuration', 'epochs after the first: median (min to '
                             'max, n)', 'each epoch, s', 'test accuracy', 'peak MiB',
                             'error'), rows)])


def floors_section(report):
    parts = report.get('parts', {})
    c = parts.get('ceilings', {})
    n_train, n_test = c.get('epoch_images', (N_TRAIN, N_TEST))  # the part's, where given
    epoch_tflop = c.get('epoch_tflop') or epoch_floor(1, n_train, n_test)[0] / 1e12
    floors = [('float32 at the measured matrix rate ({} TFLOP/s)'.format(
        fmt(c.get('gemm_tflops'), 1)), c.get('floor_float32_s'))]
    floors += [('{} at the datasheet\'s {:.0f} TFLOP/s'.format(k.upper(), v),
                epoch_tflop / v) for k, v in DATASHEET_TFLOPS.items()]
    runs = []
    p = parts.get('train_py')
    if p and 'log' in p and clean_epochs(p):
        runs.append(('train.py', median(e[1] for e in clean_epochs(p))))
    for name, r in parts.items():
        if name.startswith('bench:') and 'epoch_s' in r:
            runs.append(('bench_gpu ' + r['variant'], r['epoch_s']['median']))
        if name.startswith('peer:') and 'epoch_s' in r:
            runs.append(('peer ' + name[5:], r['epoch_s']['median']))
    f32 = c.get('floor_float32_s')
    rows = [(name, fmt(s, 3), '') for name, s in floors]
    rows += [(name, fmt(s, 2), '{:.1f}x'.format(s / f32) if f32 else '') for name, s in runs]
    rows += [('goal, ' + k, fmt(v, 1), '{:.1f}x'.format(v / f32) if f32 else '')
             for k, v in GOALS.items()]
    return '\n'.join(['### Floors, and each run\'s distance from float32\'s', '',
                      'An epoch: {} TFLOP ({:,} training images with reconstruction, '
                      '{:,} test images); copy bandwidth {} GB/s.'.format(
                          fmt(epoch_tflop, 1), n_train, n_test, fmt(c.get('copy_gbs'), 0)),
                      '',
                      table(('', 'epoch s', 'x the float32 floor'), rows)])


def render(report):
    return '\n\n'.join([machine_section(report), train_py_section(report),
                        phase_section(report), bench_section(report),
                        peer_section(report), floors_section(report)]) + '\n'


def merge(reports):
    """One report of several runs' files (``--parts`` calls on one machine): the first
    one's machine, every file's parts (a later file's part of a name the earlier ones
    have as failed or skipped replaces it), nvidia-smi's parts of all."""
    out = dict(reports[0])
    out['parts'] = dict(out.get('parts', {}))
    out['smi'] = dict(out.get('smi') or {})
    for r in reports[1:]:
        for name, part in r.get('parts', {}).items():
            if name not in out['parts'] or 'error' in out['parts'][name]:
                out['parts'][name] = part
        out['smi'].update(r.get('smi') or {})
        out['elapsed_s'] = out.get('elapsed_s', 0) + r.get('elapsed_s', 0)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('json', nargs='+', help='bench/profile_gpu.py JSON files of one '
                                                'machine (several: merged, in order)')
    args = parser.parse_args()
    reports = []
    for path in args.json:
        with open(path) as f:
            reports.append(json.load(f))
    sys.stdout.write(render(merge(reports)))


if __name__ == '__main__':
    main()
