"""-t/--timeout in fractions of a minute: the run's own bound is what was
given, gluster's scheduler (whole minutes, its argparse type=int) is given
it rounded up, and whole minutes read as before."""
import pytest

import vmbackup

COMMAND = ['vmstore', 'root@backup.example.com', 'vmstore-dr', '-c', 'backup.cfg']


def test_a_fraction_of_a_minute_bounds_the_run_and_the_scheduler_gets_a_whole_minute():
    args = vmbackup.parse_command_line(COMMAND + ['-t', '0.05'])
    settings = vmbackup.Settings(schedule_georep=['schedule_georep.py'])
    assert args.timeout == 0.05
    assert vmbackup.scheduler_command(args, settings)[-2:] == ['--timeout', '1']
    assert vmbackup.longest_run_seconds(args, settings) == pytest.approx(
        vmbackup.longest_run_seconds(
            vmbackup.parse_command_line(COMMAND + ['-t', '1']), settings) - 57)


@pytest.mark.parametrize('given, read, passed', [
    ('5', 5, '5'), ('5.0', 5, '5'), ('1.5', 1.5, '2'), ('0', 0, '0')])
def test_whole_minutes_stay_whole_and_the_rest_is_rounded_up_for_the_scheduler(
        given, read, passed):
    args = vmbackup.parse_command_line(COMMAND + ['-t', given])
    settings = vmbackup.Settings(schedule_georep=['schedule_georep.py'])
    assert args.timeout == read and type(args.timeout) is type(read)
    assert vmbackup.scheduler_command(args, settings)[-1] == passed
    # what the scheduler's failure names: "--timeout 5 minutes", as before
    assert vmbackup.SCHEDULER_EXITS[1] % {'timeout': args.timeout} == (
        'the checkpoint was not reached within --timeout %s minutes' % given.replace('.0', ''))


@pytest.mark.parametrize('given', ['-1', 'nan', 'inf', '43200.5'])
def test_a_timeout_out_of_range_is_a_usage_error(given):
    with pytest.raises(vmbackup.UsageError, match='--timeout must be 0'):
        vmbackup.parse_command_line(COMMAND + ['-t', given])
