"""The run's outcome: the exit status decided in one place (exit_status_of)
from the run's failures and what ended it; reported turning exceptions into
failures; monitored recording (or not) the run. No engine, no process."""
import argparse
import errno

import ovirtsdk4 as sdk
import pytest

import vmbackup
from vmbackup import (EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE, Failed,
                      Interrupted, LockHeld, StorageFailed, UsageError)


def make_run():
    args = argparse.Namespace(mastervol='vmstore', slave='root@dr.example.com',
                              slavevol='vmstore-dr', vm=[], exclude=[])
    return vmbackup.Run(args, vmbackup.Settings(), vmbackup.Stop())


# exit_status_of: every outcome -> its documented code ------------------------

@pytest.mark.parametrize('failures, ended_by, status', [
    ([], None, EXIT_OK),
    (['VM db: the snapshot failed'], None, EXIT_FAILED),
    (['cannot reach the engine'], Failed(), EXIT_FAILED),
    ([], Failed(), EXIT_FAILED),
    (['the backup was interrupted by SIGTERM'], None, EXIT_FAILED),
    ([], Interrupted('SIGTERM'), EXIT_FAILED),
    ([], LockHeld('another backup of volume vmstore is running'), EXIT_LOCKED),
    (['something'], LockHeld('held'), EXIT_LOCKED),
    ([], UsageError('bad config'), EXIT_USAGE),
    ([], StorageFailed('no answer from the lock file'), EXIT_FAILED),
    ([], RuntimeError('a bug'), EXIT_FAILED),
], ids=['ok', 'a failure', 'failed, told', 'failed, untold', 'interrupted, told',
        'interrupted, escaped', 'lock held', 'lock held over failures', 'usage',
        'storage', 'unexpected'])
def test_every_outcome_has_its_exit_status(failures, ended_by, status):
    assert vmbackup.exit_status_of(failures, ended_by) == status


def test_a_runs_exit_status_follows_its_failures_and_its_end():
    run = make_run()
    assert run.exit_status == EXIT_OK
    run.fail('VM %s: no snapshot', 'db')
    assert run.exit_status == EXIT_FAILED
    run.ended_by = LockHeld('held')
    assert run.exit_status == EXIT_LOCKED


def test_a_failure_told_already_is_not_logged_twice(caplog):
    run = make_run()
    with caplog.at_level('ERROR', logger='vmbackup'):
        run.fail('verify: %s: %s', 'disk', 'bad', told=True)
    assert run.failures == ['verify: disk: bad'] and caplog.records == []


# reported: exceptions become failures; the event is posted ------------------

class Events(list):
    """The failures of each run whose event was posted; taken: what the
    engine answers."""
    taken = True

    def post_event(self, run, engine):
        self.append(list(run.failures))
        return self.taken


@pytest.fixture
def events(monkeypatch):
    posted = Events()
    monkeypatch.setattr(vmbackup, 'post_event', posted.post_event)
    return posted


@pytest.mark.parametrize('error, failure', [
    (None, None),
    (Failed(), None),
    (Interrupted('SIGINT'), 'the backup was interrupted by SIGINT'),
    (sdk.Error('HTTP 500'), 'the engine answered with an error: HTTP 500'),
    (OSError(errno.ENOSPC, 'No space left on device', '/mnt/x'),
     'No space left on device: /mnt/x'),
    (KeyError('vm'), "unexpected error: KeyError: 'vm'"),
], ids=['none', 'failed', 'interrupted', 'engine', 'os', 'bug'])
def test_reported_turns_an_error_into_one_failure(events, error, failure):
    run = make_run()
    with vmbackup.reported(run, engine=None):
        if error is not None:
            raise error
    assert run.failures == ([failure] if failure else [])
    assert events == [run.failures]
    assert run.exit_status == (EXIT_FAILED if failure else EXIT_OK)


def test_reported_lets_a_held_lock_through_with_no_event(events):
    run = make_run()
    with pytest.raises(LockHeld):
        with vmbackup.reported(run, engine=None):
            raise LockHeld('held')
    assert events == [] and run.failures == []


def test_an_event_the_engine_did_not_take_fails_a_good_run(events):
    events.taken = False
    run = make_run()
    with vmbackup.reported(run, engine=None):
        pass
    assert run.failures == ['backup of volume vmstore done, but the engine did '
                            'not take its event']
    assert run.exit_status == EXIT_FAILED


def test_a_stop_seen_after_the_steps_is_a_failure(events):
    run = make_run()
    run.stop.signal_name = 'SIGTERM'
    run.stop.event.set()
    with vmbackup.reported(run, engine=None):
        pass
    assert run.failures == ['the backup was interrupted by SIGTERM']


# monitored: records the run, whatever ended it, but not another's volume ----

@pytest.fixture
def recorded(monkeypatch):
    runs = []
    monkeypatch.setattr(vmbackup, 'make_status_directories', lambda settings: None)
    monkeypatch.setattr(vmbackup, 'ping', lambda settings, kind, text='': None)
    monkeypatch.setattr(vmbackup, 'record_run',
                        lambda run: runs.append((run.exit_status, list(run.failures))))
    return runs


@pytest.mark.parametrize('error, status, failures', [
    (None, EXIT_OK, []),
    (Failed(), EXIT_FAILED, ['told']),
    (Interrupted('SIGTERM'), EXIT_FAILED,
     ['told', 'the run ended unexpectedly: interrupted by SIGTERM']),
    (RuntimeError('a bug'), EXIT_FAILED, ['told', 'the run ended unexpectedly: a bug']),
], ids=['ok', 'failed', 'interrupted', 'unexpected'])
def test_monitored_records_the_run_as_it_ended(recorded, error, status, failures):
    run = make_run()
    if error is not None:
        run.failures.append('told')
    with pytest.raises(type(error)) if error is not None else _nothing():
        with vmbackup.monitored(run):
            if error is not None:
                raise error
    assert recorded == [(status, failures)]
    assert run.ended_at is not None and run.ended_by is error


def test_monitored_does_not_record_a_run_that_found_the_lock_held(recorded):
    run = make_run()
    with pytest.raises(LockHeld):
        with vmbackup.monitored(run):
            raise LockHeld('a live run on another node may own it')
    assert recorded == [] and run.exit_status == EXIT_LOCKED


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
