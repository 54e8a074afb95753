"""The scheduler stopped after --timeout and [gluster] scheduler_grace:
SIGTERM, then SIGKILL after a bounded wait, and a message that says so
(issue 17). replicate() is called in-process with a --timeout of a
fraction of a minute, which the command line (whole minutes, as the
scheduler takes them) does not give: no test waits a minute."""
import argparse
import json
import os
import sys
import time

import pytest

import vmbackup
from support.site import alive

FAKEBIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       'fakebin')


@pytest.fixture
def scheduler(tmp_path, monkeypatch):
    """Run replicate() against the fake scheduler told `behaviour`; return
    (what it returned, the run's failures, the scheduler's pid, seconds)."""
    monkeypatch.setenv('FAKE_GLUSTER_ROOT', str(tmp_path))
    monkeypatch.setattr(vmbackup, 'KILL_AFTER', 1)
    (tmp_path / 'volumes').mkdir()

    def replicate(behaviour, timeout=0.02, grace=0, **options):
        (tmp_path / 'behaviour.json').write_text(json.dumps({'schedule_georep': behaviour}))
        args = argparse.Namespace(mastervol='vmstore', slave='root@backup.example.com',
                                  slavevol='vmstore-dr', interval=1, timeout=timeout)
        settings = vmbackup.Settings(
            schedule_georep=[sys.executable, os.path.join(FAKEBIN, 'schedule_georep')],
            scheduler_grace=grace)
        run = vmbackup.Run(args, settings, vmbackup.Stop())
        began = time.monotonic()
        done = vmbackup.replicate(run, **options)
        seconds = time.monotonic() - began
        (call,) = [json.loads(line) for line in
                   (tmp_path / 'calls.jsonl').read_text().splitlines()]
        (tmp_path / 'calls.jsonl').unlink()
        return done, run.failures, call['pid'], seconds

    return replicate


def test_a_scheduler_that_ignores_sigterm_is_killed_after_its_time(scheduler):
    done, failures, pid, seconds = scheduler({'hang': True, 'ignore_term': True})
    assert done is False
    (failure,) = failures
    assert 'did not end within --timeout 0.02 minutes and 0 seconds of grace' in failure
    assert 'by SIGKILL, it ignored SIGTERM' in failure
    assert 'checkpoint' not in failure
    assert not alive(pid)
    # 1.2 s of --timeout, 1 s from SIGTERM to SIGKILL, and the reaping:
    # bounded, not a wait for ever (no timed assertion beyond that)
    assert seconds < 60


def test_a_scheduler_stopped_by_sigterm_after_its_time_is_told_so(scheduler):
    done, failures, pid, _ = scheduler({'hang': True})
    assert done is False
    (failure,) = failures
    assert 'it was stopped (by SIGTERM)' in failure
    assert not alive(pid)


def test_a_scheduler_that_exits_1_on_sigterm_is_not_told_as_its_own_timeout(scheduler):
    # exit 1 is the scheduler's own "checkpoint not reached within
    # --timeout"; here it is our stop after the grace that ended it
    done, failures, pid, _ = scheduler({'hang': True, 'term_exit': 1})
    assert done is False
    (failure,) = failures
    assert 'did not end within --timeout' in failure
    assert 'checkpoint was not reached' not in failure


def test_a_scheduler_that_ends_in_time_is_not_stopped(scheduler):
    done, failures, _, _ = scheduler({'exit': 0, 'copy': False}, timeout=5)
    assert done is True and failures == []


# what the scheduler's exit says, and who is told ------------------------------

@pytest.mark.parametrize('behaviour, failure', [
    ({'exit': 1, 'copy': False},
     'geo-replication failed: the checkpoint was not reached within --timeout 5 minutes'),
    ({'exit': 255, 'copy': False},
     'geo-replication failed: a gluster command failed (see its output above)'),
    ({'exit': 7, 'copy': False}, 'geo-replication failed: the scheduler exited with status 7'),
    ({'signal': 'SIGSEGV', 'copy': False},
     'geo-replication failed: the scheduler was killed by SIGSEGV'),
], ids=['no checkpoint', 'gluster failed', 'other exit', 'killed'])
def test_a_scheduler_that_fails_is_told_in_one_line(scheduler, behaviour, failure):
    done, failures, _, _ = scheduler(behaviour, timeout=5)
    assert done is False and failures == [failure]


def test_a_failure_of_the_presync_goes_to_its_own_report(scheduler):
    told = []
    done, failures, _, _ = scheduler({'exit': 1, 'copy': False}, timeout=5,
                                     report=lambda message, *values: told.append(
                                         message % values if values else message))
    assert done is False and failures == []
    assert told == ['geo-replication failed: the checkpoint was not reached within '
                    '--timeout 5 minutes']


def test_a_scheduler_that_cannot_be_run_is_told_so(tmp_path):
    args = argparse.Namespace(mastervol='vmstore', slave='root@backup.example.com',
                              slavevol='vmstore-dr', interval=1, timeout=5)
    missing = str(tmp_path / 'schedule_georep')
    run = vmbackup.Run(args, vmbackup.Settings(schedule_georep=[missing]),
                       vmbackup.Stop())
    assert vmbackup.replicate(run) is False
    assert run.failures == ['cannot run the scheduler %s: No such file or directory'
                            % missing]


def test_the_scheduler_is_asked_for_whole_minutes():
    args = argparse.Namespace(mastervol='vmstore', slave='root@backup.example.com',
                              slavevol='vmstore-dr', interval=3, timeout=0.02)
    settings = vmbackup.Settings(schedule_georep=['schedule_georep'], presync_timeout=None)
    assert vmbackup.scheduler_command(args, settings)[-4:] == [
        '--interval', '3', '--timeout', '1']
    assert vmbackup.scheduler_command(args, settings, 90.5)[-1] == '91'
    assert vmbackup.presync_minutes(args, settings) == 0.02
    assert vmbackup.presync_minutes(args, vmbackup.Settings(presync_timeout=0)) == 0
