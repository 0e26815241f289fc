"""What train.py and analyze.py share: the flag types, the output paths they refuse, the
progress line, and every known error as one line with its exit status."""

import argparse
import errno
import io

import pytest
from chainer import testing

from capsnet_chainer import cli
from capsnet_chainer.errors import CapsNetError
from capsnet_chainer.errors import SettingError


# Flag types


@pytest.mark.parametrize('convert, text, value', [
    (cli.positive_int, '3', 3),
    (cli.non_negative_int, '0', 0),
    (cli.finite_float, '-2.5', -2.5),
    (cli.positive_float, '1e-3', 1e-3),
    (cli.non_negative_float, '0', 0.0),
    (cli.unit_interval, '1', 1.0),
    (cli.unit_interval, '0.95', 0.95),
    (cli.image_size, '32x24', (32, 24)),
    (cli.image_size, '48X48', (48, 48)),
    (cli.image_size, '20', (20, 20)),
    (cli.fraction, '0.25', 0.25),
])
def test_flag_types_take_their_range(convert, text, value):
    assert convert(text) == value


@pytest.mark.parametrize('convert, text, message', [
    (cli.positive_int, '0', 'must be a positive integer, got 0'),
    (cli.non_negative_int, '-1', 'must be >= 0, got -1'),
    (cli.finite_float, 'nan', 'must be a finite number, got nan'),
    (cli.finite_float, '-inf', 'must be a finite number, got -inf'),
    (cli.positive_float, '0', 'must be > 0, got 0'),
    (cli.positive_float, 'inf', 'must be a finite number, got inf'),
    (cli.non_negative_float, '-0.5', 'must be >= 0, got -0.5'),
    (cli.unit_interval, '0', 'must be in (0, 1], got 0'),
    (cli.unit_interval, '1.01', 'must be in (0, 1], got 1.01'),
    (cli.image_size, '32x', 'must be HxW, e.g. 32x32, got 32x'),
    (cli.image_size, '0x5', 'must be HxW, e.g. 32x32, got 0x5'),
    (cli.image_size, '2x3x4', 'must be HxW, e.g. 32x32, got 2x3x4'),
    (cli.fraction, '1', 'must be in (0, 1), got 1'),
    (cli.fraction, '0', 'must be in (0, 1), got 0'),
])
def test_flag_types_refuse_what_is_out_of_range(convert, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        convert(text)
    assert str(e.value) == message


def test_parser_errors_are_one_line_with_exit_status_2(capsys):
    parser = cli.ArgumentParser(prog='train.py')
    parser.add_argument('--epoch', type=cli.positive_int)
    cli.add_common_arguments(parser)
    args = parser.parse_args(['-g', '1', '--data-dir', 'd', '--debug'])
    assert (args.gpu, args.device, args.data_dir, args.debug) == (1, None, 'd', True)
    with pytest.raises(SystemExit) as e:
        parser.parse_args(['--epoch', '0'])
    assert e.value.code == cli.EXIT_USAGE == 2
    assert capsys.readouterr().err == ('error: argument --epoch: must be a positive integer, '
                                       'got 0 (see train.py --help)\n')


# Output paths


def test_output_folder_that_is_a_file_is_refused(tmp_path):
    cli.check_output_folder(str(tmp_path / 'new'))
    cli.check_output_folder(str(tmp_path))
    (tmp_path / 'file').write_text('')
    with pytest.raises(cli.CLIError) as e:
        cli.check_output_folder(str(tmp_path / 'file'), '-o')
    assert str(e.value) == '-o {} is a file, not a folder'.format(tmp_path / 'file')
    assert e.value.exit_code == cli.EXIT_USAGE


def test_output_file_that_is_a_folder_or_lies_in_a_file_is_refused(tmp_path):
    cli.check_output_file(str(tmp_path / 'a' / 'b' / 'model'), '--save')  # made later
    with pytest.raises(cli.CLIError, match='is a folder; give a file name') as e:
        cli.check_output_file(str(tmp_path), '--save')
    assert e.value.exit_code == cli.EXIT_USAGE
    (tmp_path / 'file').write_text('')
    with pytest.raises(cli.CLIError) as e:
        cli.check_output_file(str(tmp_path / 'file' / 'x' / 'model'), '--save')
    assert str(e.value) == '--save {}: {} is a file, not a folder'.format(
        tmp_path / 'file' / 'x' / 'model', tmp_path / 'file')


# Progress


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_in_a_file_is_a_line_every_ten_percent():
    stream = _Stream(tty=False)
    progress = cli.Progress('scoring', stream)
    for done in range(0, 101, 5):
        progress(done, 100)
    lines = stream.getvalue().splitlines()
    assert lines[0] == 'scoring:   0% (0/100)'
    assert lines[-1] == 'scoring: 100% (100/100)'
    assert len(lines) == 11


def test_progress_on_a_terminal_is_one_line_rewritten():
    stream = _Stream(tty=True)
    progress = cli.Progress('scoring', stream)
    progress(1, 3)
    progress(3, 3)
    assert stream.getvalue() == '\rscoring:  33% (1/3)\rscoring: 100% (3/3)\n'


# Errors: one line and an exit status


def test_flag_names_a_setting_as_its_flag():
    assert cli.flag('max_shift') == '--max-shift'
    assert cli.flag('n_test') == '--n-test'


@pytest.mark.parametrize('name, value, shown', [
    ('max_shift', 2, '--max-shift 2'),
    ('unshared', True, '--unshared on'),
    ('reconstruct', False, '--reconstruct off'),
    ('n_train', None, '--n-train (not given)'),
    ('leaky_slope', 0.0, '--leaky-slope 0.0'),
])
def test_a_setting_is_named_as_its_flag_with_its_value(name, value, shown):
    assert cli.flag_and_value(name, value) == shown


@pytest.mark.parametrize('error, line, code', [
    (SettingError('n_test', 'exceeds the 10000 examples available', 10001),
     '--n-test 10001: exceeds the 10000 examples available', 2),
    (SettingError('max_shift', 'takes\n   no shift'), '--max-shift: takes no shift', 2),
    (cli.CLIError('--out x is a file', cli.EXIT_USAGE), '--out x is a file', 2),
    (cli.CLIError('another run'), 'another run', 1),
    (CapsNetError('a file\n  is truncated'), 'a file is truncated', 1),
    (OSError(errno.ENOSPC, 'No space left on device', 'best'),
     'best: No space left on device', 1),
    (OSError('a disk without a name'), 'a disk without a name', 1),
])
def test_known_errors_are_one_line_and_an_exit_status(error, line, code):
    assert cli.describe(error) == line
    assert cli.exit_code(error) == code


def test_an_unexpected_error_is_not_described():
    assert cli.describe(ValueError('a bug')) is None
    assert cli.describe(KeyError('a bug')) is None
    assert issubclass(cli.CLIError, CapsNetError)


def _main(error):
    def main(argv):
        if error is not None:
            raise error
    return main


def test_run_turns_a_known_error_into_its_line_and_status(capsys):
    assert cli.run(_main(None), []) == 0
    assert cli.run(_main(SettingError('batchsize', 'must divide', 15)), ['-b', '15']) == 2
    assert capsys.readouterr().err == 'error: --batchsize 15: must divide\n'
    assert cli.run(_main(CapsNetError('no such file')), []) == 1
    err = capsys.readouterr().err
    assert err == 'error: no such file\n'
    assert cli.run(_main(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == 'error: interrupted\n'


def test_run_with_debug_adds_the_traceback_and_lets_a_bug_through(capsys):
    assert cli.run(_main(CapsNetError('no such file')), ['--debug']) == 1
    err = capsys.readouterr().err
    assert 'Traceback' in err and err.endswith('error: no such file\n')
    with pytest.raises(ZeroDivisionError):
        cli.run(_main(ZeroDivisionError('a bug')), [])


def test_run_passes_the_arguments():
    seen = []
    assert cli.run(seen.append, ['-e', '3']) == 0
    assert seen == [['-e', '3']]


# train.py's held-out split


def test_split_heldout_keeps_the_last_images_apart():
    import chainer
    data = chainer.datasets.TupleDataset(list(range(10)), list(range(10)))
    args = argparse.Namespace(validation=3, batchsize=4, n_train=None)
    train, heldout = cli.split_heldout(data, args)
    assert [x for x, _ in train] == list(range(7))
    assert [x for x, _ in heldout] == [7, 8, 9]
    assert cli.split_heldout(data, argparse.Namespace(validation=0, batchsize=4,
                                                      n_train=None)) == (data, None)
    with pytest.raises(cli.CLIError, match='--batchsize 8 exceeds the 7 training') as e:
        cli.split_heldout(data, argparse.Namespace(validation=3, batchsize=8, n_train=None))
    assert e.value.exit_code == cli.EXIT_USAGE


testing.run_module(__name__, __file__)
