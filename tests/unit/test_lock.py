"""The lock (step 2) in a temporary directory: take_lock's record, who holds
it, what a full success leaves for [lock] skip_within, and the lock file's
record read back whatever an earlier version or a crash left in it."""
import argparse
import fcntl
import json
import os
import socket

import pytest

import vmbackup

SESSION = 'dr.example.com::vmstore-dr'


class EndedRun(vmbackup.Run):
    """A Run whose exit status the test gives (a Run derives it from its
    failures: exit_status_of)."""
    exit_status = None


def make_run(lock_dir, vm=(), exclude=(), force=False, shared=True, skip_within=60):
    args = argparse.Namespace(mastervol='vmstore', slave='root@dr.example.com',
                              slavevol='vmstore-dr', vm=list(vm), exclude=list(exclude),
                              force=force, dry_run=False)
    settings = vmbackup.Settings(lock_dir=str(lock_dir), lock_is_shared=shared,
                                 skip_within=skip_within, storage_timeout=10)
    return EndedRun(args, settings, vmbackup.Stop())


def record_of(lock_dir):
    return json.loads((lock_dir / 'vmbackup-vmstore.lock').read_text())


def test_a_full_success_records_the_session_the_node_and_the_exit(tmp_path):
    lock_dir = tmp_path / 'shared' / 'lock'         # made on shared storage
    run = make_run(lock_dir)
    with vmbackup.take_lock(run) as path:
        assert path == str(lock_dir / 'vmbackup-vmstore.lock')
        during = record_of(lock_dir)
        run.exit_status = vmbackup.EXIT_OK
    assert during['pid'] == os.getpid() and during['node'] == socket.gethostname()
    assert during['session'] == SESSION and 'ended' not in during
    after = record_of(lock_dir)
    assert after['exit'] == 0 and after['ended'] >= after['started']
    assert after['sessions'] == {SESSION: {'last_success': after['ended'],
                                           'node': socket.gethostname()}}
    assert oct(os.stat(str(lock_dir)).st_mode & 0o777) == oct(0o700)


@pytest.mark.parametrize('vm, exclude, exit_status', [
    (['web'], [], 0),           # a partial success does not count
    ([], ['db'], 0),
    ([], [], 1),                # nor does a failure
])
def test_only_a_full_success_is_recorded_as_the_last_success(tmp_path, vm, exclude,
                                                             exit_status):
    earlier = {'sessions': {'other.example.com::vmstore-dr': {
        'last_success': 1000.0, 'node': 'gluster2'}}}
    tmp_path.joinpath('vmbackup-vmstore.lock').write_text(json.dumps(earlier))
    run = make_run(tmp_path, vm=vm, exclude=exclude)
    with vmbackup.take_lock(run):
        run.exit_status = exit_status
    after = record_of(tmp_path)
    assert after['exit'] == exit_status
    # the other session's success is kept, none is added
    assert after['sessions'] == earlier['sessions']


def test_a_held_lock_names_its_holder_and_is_not_taken(tmp_path):
    path = tmp_path / 'vmbackup-vmstore.lock'
    path.write_text(json.dumps({'pid': 4242, 'node': 'gluster3', 'started': 1800000000}))
    with open(str(path), 'a') as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(vmbackup.LockHeld) as raised:
            with vmbackup.take_lock(make_run(tmp_path)):
                pytest.fail('the lock was taken twice')
    message = str(raised.value)
    assert message.startswith('another backup of volume vmstore is running (pid 4242 '
                              'on gluster3, since ')
    assert message.endswith('lock %s); nothing done' % path)
    # the holder's record is left as it was
    assert json.loads(path.read_text())['pid'] == 4242


@pytest.mark.parametrize('vm, force, skipped', [
    ([], False, True),
    ([], True, False),          # --force runs anyway
    (['web'], False, False),    # a partial run is never skipped
])
def test_a_recent_full_success_skips_only_a_full_run_without_force(tmp_path, vm, force,
                                                                   skipped):
    run = make_run(tmp_path, vm=vm, force=force)
    tmp_path.joinpath('vmbackup-vmstore.lock').write_text(json.dumps({'sessions': {
        SESSION: {'last_success': run.started_at - 600, 'node': 'gluster2'}}}))
    if skipped:
        with pytest.raises(vmbackup.LockHeld, match=r'^dr.example.com::vmstore-dr was '
                           r'backed up 10.0 minutes ago by gluster2 \(\[lock\] skip_within = 60 '
                           r'minutes; --force runs anyway\); nothing done$'):
            with vmbackup.take_lock(run):
                pytest.fail('a skipped run took the lock')
    else:
        with vmbackup.take_lock(run):
            run.exit_status = 0
        assert record_of(tmp_path)['pid'] == os.getpid()


def test_a_lock_file_that_is_a_symlink_is_refused_and_not_followed(tmp_path):
    target = tmp_path / 'elsewhere'
    target.write_text('keep')
    (tmp_path / 'vmbackup-vmstore.lock').symlink_to(target)
    with pytest.raises(vmbackup.StorageFailed, match='is a symlink: remove it'):
        with vmbackup.take_lock(make_run(tmp_path)):
            pytest.fail('the lock was taken through a symlink')
    assert target.read_text() == 'keep'


def test_a_lock_directory_that_cannot_be_made_is_a_storage_failure(tmp_path):
    (tmp_path / 'file').write_text('')
    with pytest.raises(vmbackup.StorageFailed, match='^the lock directory .*file/lock: '):
        with vmbackup.take_lock(make_run(tmp_path / 'file' / 'lock')):
            pytest.fail('the lock was taken')


@pytest.mark.parametrize('text, record', [
    ('', {}),
    ('\n', {}),
    ('12345\n', {}),                        # the 2.0 tool's bare pid: JSON, no object
    ('not json', {}),
    (b'\xff\xfe garbage', {}),                # not UTF-8
    ('[1, 2]', {}),                           # JSON, not an object
    ('{"pid": 7, "node": "g1"}', {'pid': 7, 'node': 'g1'}),
])
def test_the_lock_record_reads_whatever_the_file_holds(tmp_path, text, record):
    path = tmp_path / 'lock'
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with open(str(path), 'r+', encoding='utf-8', errors='replace') as handle:
        assert vmbackup.read_lock_record(handle) == record


def test_a_written_lock_record_replaces_a_longer_one_and_reads_back(tmp_path):
    path = tmp_path / 'lock'
    path.write_text('x' * 500)
    with open(str(path), 'r+', encoding='utf-8') as handle:
        vmbackup.write_lock_record(handle, {'pid': 1, 'node': 'g1'})
        assert vmbackup.read_lock_record(handle) == {'node': 'g1', 'pid': 1}
    assert path.read_text() == '{"node": "g1", "pid": 1}\n'


def test_only_well_formed_sessions_of_a_lock_record_are_kept():
    record = {'sessions': {
        'a::x': {'last_success': 10.0, 'node': 'g1'},
        'b::x': {'last_success': 11},                   # no node: ''
        'c::x': {'last_success': 'yesterday', 'node': 'g1'},
        'd::x': {'last_success': True},                 # not a number
        'e::x': 'garbled',
        'f::x': {'node': 'g1'},
    }}
    assert vmbackup.lock_sessions(record) == {
        'a::x': {'last_success': 10.0, 'node': 'g1'},
        'b::x': {'last_success': 11, 'node': ''}}
    assert vmbackup.lock_sessions({'sessions': None}) == {}
    assert vmbackup.lock_sessions({}) == {}


def test_a_recent_success_by_an_unnamed_node_says_a_node():
    record = {'sessions': {SESSION: {'last_success': 1000.0}}}
    assert vmbackup.recently_backed_up(record, SESSION, 60, 1030.0) == '30 s ago by a node'


@pytest.mark.parametrize('record, text', [
    ({}, 'holder unknown'),
    ({'pid': 7}, 'pid 7'),
    ({'pid': 7, 'node': 'g1'}, 'pid 7 on g1'),
    ({'pid': 7, 'started': 'yesterday'}, 'pid 7'),
])
def test_the_holder_is_told_from_what_its_record_has(record, text):
    assert vmbackup.describe_holder(record) == text
