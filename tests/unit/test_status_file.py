"""The status file read back: check_document's verdict on what a file
holds, and the lines --status prints from it (status_report)."""
import json
import time
import types

import pytest

import vmbackup
from vmbackup import DiskRecord, Plan, Run, Settings, VmBackup

NOW = 1800000000.0


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv('TZ', 'UTC')
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class EndedRun(Run):
    """A Run whose exit status the test gives (a Run derives it from its
    failures: exit_status_of)."""
    exit_status = None


def document(exit_status=0, failures=(), backups=(), steps=(), previous=None):
    args = types.SimpleNamespace(mastervol='vmstore', slave='root@dr.example.com',
                                 slavevol='vmstore-dr', vm=[], exclude=[])
    run = EndedRun(args, Settings(status_dir='/nonexistent'), stop=None)
    run.started_at, run.ended_at, run.exit_status = NOW - 600, NOW, exit_status
    run.failures = list(failures)
    run.plan = Plan(backups=list(backups))
    for name, seconds in steps:
        run.step_seconds[name] = seconds
    return json.loads(json.dumps(vmbackup.status_document(run, previous, 'gluster1')))


def good():
    return document()


def changed(**values):
    found = good()
    for key, value in values.items():
        if value is KeyError:
            del found[key]
        else:
            found[key] = value
    return found


def test_a_document_this_version_wrote_is_one_it_reads():
    assert vmbackup.check_document(good()) is None


@pytest.mark.parametrize('found, problem', [
    ([], 'not a JSON object'),
    (changed(version=True), 'no version'),
    (changed(version=vmbackup.STATUS_VERSION + 1), 'written by a newer vmbackup'),
    (changed(started_at=-1), 'started_at is not a time'),
    (changed(ended_at=KeyError), 'ended_at is not a time'),
    (changed(duration_seconds=-1), 'duration_seconds is not a number of seconds'),
    (changed(duration_seconds='long'), 'duration_seconds is not a number of seconds'),
    (changed(exit_status=1.5), 'exit_status is not a whole number'),
    (changed(exit_status=False), 'exit_status is not a whole number'),
    (changed(failures='none'), 'failures is not a list'),
    (changed(totals=[]), 'totals, vms or steps of the wrong type'),
    (changed(vms={}), 'totals, vms or steps of the wrong type'),
    (changed(steps=[]), 'totals, vms or steps of the wrong type'),
    (changed(totals={'vms': -1}), 'totals.vms is -1, not a number'),
    (changed(steps={'snapshot': 'slow'}), 'steps.snapshot is "slow", not a number'),
    (changed(vms=[1]), 'a VM of vms is not an object with a list of disks'),
    (changed(vms=[{'disks': {}}]), 'a VM of vms is not an object with a list of disks'),
    (changed(vms=[{'disks': [1]}]), 'a VM of vms is not an object with a list of disks'),
    (changed(last_success={}), 'last_success has no ended_at time'),
    (changed(last_success=1), 'last_success has no ended_at time'),
    (changed(restore_points=[]), 'restore_points is not an object'),
    (changed(restore_points={'count': 'two'}), 'restore_points count is not a number'),
    (changed(restore_points={'newest_created_at': '1'}),
     'restore_points newest_created_at is not a number'),
], ids=lambda value: value if isinstance(value, str) else '')
def test_check_document_names_the_first_thing_wrong(found, problem):
    assert problem in vmbackup.check_document(found)


def test_check_document_takes_what_may_be_left_out():
    found = changed(totals=KeyError, steps=KeyError, vms=KeyError, last_success=None,
                    restore_points={'count': None, 'newest_created_at': NOW})
    assert vmbackup.check_document(found) is None


def disk(name, **values):
    fields = dict(disk_id='id-' + name, name=name, sd_id='sd', base_id='b',
                  overlay_id='o', size=1 << 30, confirmed=True, overlay_dropped=True,
                  chain_repaired=True, verified=True)
    fields.update(values)
    return DiskRecord(**fields)


def test_the_report_of_a_run_tells_each_vm_and_disk(utc):
    web = VmBackup(vm_id='vm-web', name='web', snapshot_id='snap-web', snapshot_ready=True,
                   consistency=vmbackup.QUIESCED, snapshot_removed=True,
                   disks=[disk('w1'), disk('w2', verified=None)])
    db = VmBackup(vm_id='vm-db', name='db', snapshot_id='snap-db', snapshot_ready=True,
                  snapshot_removed=False,
                  disks=[disk('d1', confirmed=False, overlay_dropped=None,
                              chain_repaired=None, verified=None,
                              problem='not confirmed at the remote site: gone')])
    found = document(exit_status=1, failures=['VM db disk d1: gone'], backups=[web, db],
                     steps=[('snapshot', 2.5), ('replicate', 300)])
    lines = vmbackup.status_report(found, '/var/lib/vmbackup/vmstore.json', NOW + 7200)
    assert lines == [
        'Volume vmstore: the last run FAILED (exit status 1).',
        '  ran on gluster1 from 2027-01-15 07:50:00 UTC to 2027-01-15 08:00:00 UTC '
        '(10.0 minutes), 2.0 hours ago',
        '  last success: none known',
        '  failed: VM db disk d1: gone',
        '  VMs: 2 chosen, 1 backed up; disks: 3 chosen, 2 backed up, 1 verified, %s'
        % vmbackup.format_bytes(2 << 30),
        '    VM web: backed up, %s' % vmbackup.QUIESCED,
        '      disk w1: verified (confirmed, overlay dropped, chain repaired, verified)',
        '      disk w2: backed up (confirmed, overlay dropped, chain repaired)',
        '    VM db: not backed up, snapshot snap-db NOT removed',
        '      disk d1: not backed up (not confirmed): not confirmed at the remote '
        'site: gone',
        '  time per step: snapshot 2 s, replicate 5.0 minutes',
        '  (from /var/lib/vmbackup/vmstore.json)']


def test_the_report_names_the_last_success_and_the_session_of_a_volume_of_two(utc):
    found = document()
    found['sessions'] = {'a::x': {}, 'b::y': {}}
    lines = vmbackup.status_report(found, 'vmstore.json', NOW + 60)
    assert lines[0] == ('Volume vmstore -> dr.example.com::vmstore-dr: the last run '
                        'succeeded (exit status 0).')
    assert lines[2] == ('  last success: 2027-01-15 08:00:00 UTC on gluster1, 60 s ago')
    assert not any('time per step' in line for line in lines)


def test_the_report_of_a_sparse_document_puts_question_marks():
    found = {'exit_status': 0, 'started_at': NOW, 'ended_at': NOW,
             'duration_seconds': 0, 'failures': [],
             'vms': [{'disks': [{'id': 'd-1', 'verified': False}]}]}
    lines = vmbackup.status_report(found, 'p', NOW)
    assert lines[0] == 'Volume ?: the last run succeeded (exit status 0).'
    assert lines[1].startswith('  ran on ? from ')
    assert lines[4:6] == ['    VM None: ?', '      disk d-1: ? (verify failed)']
    assert lines[-1] == '  (from p)'
