"""The status file from record_run to --status and --check, in a temporary
directory: two sessions of one volume kept apart, the session a check
names, a file that is missing, another volume's or garbled, and what the
status says of the restore points."""
import argparse
import json
import logging
import os

import pytest

import vmbackup
from vmbackup import DiskRecord, GlusterSnapshot, Plan, RestorePoints, Run, Settings, VmBackup

NOW = 1800000000.0
HOUR = 3600.0


def settings_in(tmp_path, **values):
    values.setdefault('status_dir', str(tmp_path / 'status'))
    return Settings(storage_timeout=10, **values)


class EndedRun(Run):
    """A Run whose exit status the test gives (a Run derives it from its
    failures: exit_status_of)."""
    exit_status = None


def finished_run(settings, slave='root@dr.example.com', slavevol='vmstore-dr', exit_status=0,
                 ended=NOW - HOUR, vm=(), failures=(), restore_points=None):
    args = argparse.Namespace(mastervol='vmstore', slave=slave, slavevol=slavevol,
                              vm=list(vm), exclude=[])
    run = EndedRun(args, settings, vmbackup.Stop())
    run.started_at, run.ended_at, run.exit_status = ended - 600, ended, exit_status
    run.failures = list(failures)
    disk = DiskRecord(disk_id='d1', name='web_disk', sd_id='sd', base_id='b', overlay_id='o',
                      size=1 << 30, confirmed=True, overlay_dropped=True,
                      chain_repaired=True, verified=True)
    run.plan = Plan(backups=[VmBackup(vm_id='v1', name='web', disks=[disk],
                                      snapshot_id='s1', snapshot_ready=True,
                                      consistency=vmbackup.QUIESCED, snapshot_removed=True)])
    run.restore_points = restore_points
    return run


def asked(slave=None, slavevol=None, check=True, status=False):
    return argparse.Namespace(mastervol='vmstore', slave=slave, slavevol=slavevol,
                              check=check, status=status, warning=25, critical=49,
                              restore_point_warning=25, restore_point_critical=49)


def check(capsys, settings, args, now=NOW):
    state = vmbackup.show_status(args, settings, now)
    return state, capsys.readouterr().out


# record_run: the file, the metrics, the log ------------------------------------------

def test_a_run_is_recorded_in_the_status_file_and_the_metrics(tmp_path, caplog):
    settings = settings_in(tmp_path, textfile_dir=str(tmp_path / 'metrics'))
    os.mkdir(settings.status_dir)
    os.mkdir(settings.textfile_dir)
    with caplog.at_level(logging.INFO, logger='vmbackup'):
        document = vmbackup.record_run(finished_run(settings), node='gluster1')
    on_disk = json.loads((tmp_path / 'status' / 'vmstore.json').read_text())
    assert on_disk == json.loads(json.dumps(document))
    assert on_disk['node'] == 'gluster1' and on_disk['succeeded'] is True
    assert list(on_disk['sessions']) == ['dr.example.com::vmstore-dr']
    metrics = (tmp_path / 'metrics' / 'vmbackup_vmstore.prom').read_text()
    assert metrics == vmbackup.metrics_text(document)
    assert 'summary: status: written to %s' % (tmp_path / 'status' / 'vmstore.json') \
        in caplog.text


def test_a_status_file_that_cannot_be_written_is_an_error_and_the_run_goes_on(tmp_path,
                                                                              caplog):
    settings = settings_in(tmp_path)          # the directory is missing
    with caplog.at_level(logging.INFO, logger='vmbackup'):
        document = vmbackup.record_run(finished_run(settings), node='gluster1')
    assert document['succeeded'] is True
    errors = [r.getMessage() for r in caplog.records if r.levelname == 'ERROR']
    assert len(errors) == 1
    assert errors[0].startswith('the status file of volume vmstore was not written: %s'
                                % (tmp_path / 'status' / 'vmstore.json'))
    assert 'status: NOT written: ' in caplog.text


def test_a_garbled_previous_status_loses_only_the_last_success(tmp_path, caplog):
    settings = settings_in(tmp_path)
    os.mkdir(settings.status_dir)
    (tmp_path / 'status' / 'vmstore.json').write_text('{"version": 1, "volume"')
    with caplog.at_level(logging.WARNING, logger='vmbackup'):
        document = vmbackup.record_run(finished_run(settings, exit_status=1,
                                                    failures=['it broke']), node='g1')
    assert document['last_success'] is None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert warning.startswith('previous status: %s is not JSON: ' % (
        tmp_path / 'status' / 'vmstore.json'))
    assert warning.endswith('; the time of the last success is lost')


# two sessions of one volume -----------------------------------------------------------

@pytest.fixture
def two_sessions(tmp_path):
    """Volume vmstore backed up to two sites: dr (success an hour ago) and
    dr2 (failed just now, its last success two days ago)."""
    settings = settings_in(tmp_path)
    os.mkdir(settings.status_dir)
    vmbackup.record_run(finished_run(settings, slave='dr2.example.com',
                                     ended=NOW - 48 * HOUR), node='g2')
    vmbackup.record_run(finished_run(settings, ended=NOW - HOUR), node='g1')
    vmbackup.record_run(finished_run(settings, slave='dr2.example.com', exit_status=1,
                                     ended=NOW - 60, failures=['VM web: not confirmed']),
                        node='g2')
    return settings


def test_each_session_is_checked_on_its_own(two_sessions, capsys):
    state, out = check(capsys, two_sessions, asked('root@dr.example.com', 'vmstore-dr'))
    assert state == vmbackup.CHECK_OK
    assert out.startswith('VMBACKUP OK - last success 60.0 minutes ago: 1 of 1 VMs, 1 of 1 '
                          'disks backed up in 10.0 minutes|age=3600s;')
    # the user is no part of the session: dr2 whoever the slave user is
    state, out = check(capsys, two_sessions, asked('geo@dr2.example.com', 'vmstore-dr'))
    assert state == vmbackup.CHECK_CRITICAL
    assert out.startswith('VMBACKUP CRITICAL - last run 60 s ago on g2 FAILED: VM web: not '
                          'confirmed; last success 2.0 days ago|age=172800s;')


def test_a_check_of_a_volume_with_two_sessions_must_name_one(two_sessions, capsys):
    state, out = check(capsys, two_sessions, asked())
    assert state == vmbackup.CHECK_UNKNOWN
    assert out == ('VMBACKUP UNKNOWN - volume vmstore has 2 geo-replication sessions '
                   '(dr.example.com::vmstore-dr, dr2.example.com::vmstore-dr): name one: '
                   '--check vmstore SLAVE SLAVEVOL\n')


def test_a_session_never_recorded_is_unknown_naming_those_known(two_sessions, capsys):
    state, out = check(capsys, two_sessions, asked('dr3.example.com', 'vmstore-dr'))
    assert state == vmbackup.CHECK_UNKNOWN
    assert out == ('VMBACKUP UNKNOWN - no run of vmstore -> dr3.example.com::vmstore-dr is '
                   'recorded (known: dr.example.com::vmstore-dr, '
                   'dr2.example.com::vmstore-dr)\n')


def test_the_status_of_a_session_that_is_not_the_last_run_is_its_own(two_sessions, capsys):
    state, out = check(capsys, two_sessions, asked('dr.example.com', 'vmstore-dr',
                                                    check=False, status=True))
    assert state == vmbackup.CHECK_OK
    lines = out.splitlines()
    assert lines[0] == ('Volume vmstore -> dr.example.com::vmstore-dr: the last run '
                        'succeeded (exit status 0).')
    assert lines[-1] == '  (from %s)' % os.path.join(two_sessions.status_dir,
                                                     'vmstore.json')


@pytest.mark.parametrize('entry, problem', [
    ('garbled', 'not an object with last_run'),
    ({'last_run': []}, 'not an object with last_run'),
    ({'last_run': {'node': 'g1'}}, ''),
])
def test_a_garbled_session_record_is_named(entry, problem):
    document = {'volume': 'vmstore', 'session': 'a::x', 'sessions': {'b::x': entry}}
    view, why = vmbackup.session_view(document, 'b::x')
    assert view is None
    assert why.startswith('the record of session b::x: ' + problem)


def test_a_volume_of_one_session_of_vmbackup_2_1_is_its_own_view():
    document = {'volume': 'vmstore', 'slave': 'root@dr.example.com',
                'slave_volume': 'vmstore-dr'}
    assert vmbackup.session_view(document, None) == (document, None)
    assert vmbackup.session_view(document, 'dr.example.com::vmstore-dr') == (document, None)
    assert vmbackup.session_view(document, 'x::y') == (
        None, 'no run of vmstore -> x::y is recorded (known: dr.example.com::vmstore-dr)')


# a file that is not this volume's status ------------------------------------------------

def test_no_status_file_is_unknown_and_says_where_it_looked(tmp_path, capsys):
    settings = settings_in(tmp_path)
    state, out = check(capsys, settings, asked(status=True))
    assert state == vmbackup.CHECK_UNKNOWN
    assert out == ('VMBACKUP UNKNOWN - no status file %s: no run of volume vmstore has '
                   'finished where [status] dir points\n' % (tmp_path / 'status' /
                                                            'vmstore.json'))


def test_the_status_file_of_another_volume_is_not_taken(tmp_path, capsys):
    settings = settings_in(tmp_path)
    os.mkdir(settings.status_dir)
    document = vmbackup.status_document(finished_run(settings), None, 'g1')
    document['volume'] = 'data'
    (tmp_path / 'status' / 'vmstore.json').write_text(json.dumps(document))
    state, out = check(capsys, settings, asked())
    assert state == vmbackup.CHECK_UNKNOWN
    assert out == "VMBACKUP UNKNOWN - %s is the status of volume 'data', not vmstore\n" % (
        tmp_path / 'status' / 'vmstore.json')


def test_a_status_file_that_cannot_be_read_is_unknown(tmp_path, capsys):
    settings = settings_in(tmp_path)
    os.makedirs(os.path.join(settings.status_dir, 'vmstore.json'))     # a directory
    state, out = check(capsys, settings, asked())
    assert state == vmbackup.CHECK_UNKNOWN
    assert out.startswith('VMBACKUP UNKNOWN - cannot read %s: ' % (
        tmp_path / 'status' / 'vmstore.json'))


# the restore points in the status ---------------------------------------------------------

def points(kept=2, taken=True, deleted=('vmbackup-vmstore-dr-20261201T013002Z',),
           listed=True):
    snapshots = [GlusterSnapshot(name='vmbackup-vmstore-dr-2027011%dT013002Z' % n,
                                 created_at=NOW - (n + 1) * 6 * HOUR) for n in range(kept)]
    return RestorePoints(host='root@dr.example.com', volume='vmstore-dr', kept=snapshots,
                         taken=snapshots[0].name if taken and snapshots else None,
                         deleted=list(deleted), listed_at=NOW - HOUR if listed else None)


def test_keep_0_records_no_restore_points(tmp_path):
    run = finished_run(settings_in(tmp_path), restore_points=points())
    assert vmbackup.restore_points_record(run, None) is None


def test_this_runs_restore_points_are_recorded_newest_first(tmp_path):
    run = finished_run(settings_in(tmp_path, restore_keep=3), restore_points=points())
    record = vmbackup.restore_points_record(run, None)
    assert dict(record) == {
        'keep': 3, 'host': 'root@dr.example.com', 'volume': 'vmstore-dr', 'count': 2,
        'newest': 'vmbackup-vmstore-dr-20270110T013002Z',
        'newest_created_at': NOW - 6 * HOUR,
        'newest_created': vmbackup.iso_utc(NOW - 6 * HOUR),
        'names': ['vmbackup-vmstore-dr-20270110T013002Z',
                  'vmbackup-vmstore-dr-20270111T013002Z'],
        'taken': 'vmbackup-vmstore-dr-20270110T013002Z',
        'deleted': ['vmbackup-vmstore-dr-20261201T013002Z'], 'listed_at': NOW - HOUR}


def test_a_run_that_listed_none_carries_the_previous_listing_over(tmp_path):
    settings = settings_in(tmp_path, restore_keep=3)
    previous = {'restore_points': dict(
        vmbackup.restore_points_record(finished_run(settings, restore_points=points()),
                                       None))}
    record = vmbackup.restore_points_record(finished_run(settings), previous)
    assert record['names'] == previous['restore_points']['names']
    assert (record['taken'], record['deleted'], record['keep']) == (None, [], 3)
    # another slave volume's listing is not this one's
    other = finished_run(settings, slavevol='vmstore-dr2')
    record = vmbackup.restore_points_record(other, previous)
    assert record['volume'] == 'vmstore-dr2' and record['count'] is None
    assert record['host'] == 'root@dr.example.com' and record['names'] == []


def test_the_status_shows_the_restore_points_and_the_check_their_age(tmp_path, capsys):
    settings = settings_in(tmp_path, restore_keep=3)
    os.mkdir(settings.status_dir)
    vmbackup.record_run(finished_run(settings, restore_points=points()), node='g1')
    state, out = check(capsys, settings, asked(status=True))
    lines = out.splitlines()
    assert state == vmbackup.CHECK_OK
    assert lines[0].startswith('VMBACKUP OK - last success 60.0 minutes ago: ')
    assert '; newest restore point 6.0 hours ago (2 kept)|' in lines[0]
    assert lines[0].endswith(' restore_point_age=21600s;90000;176400;0 restore_points=2;;;0')
    at = lines.index('    taken by the last run: vmbackup-vmstore-dr-20270110T013002Z')
    assert lines[at - 1].startswith('  restore points: 2 kept on root@dr.example.com::'
                                    'vmstore-dr (keep = 3); newest vmbackup-vmstore-dr-'
                                    '20270110T013002Z, taken ')
    assert lines[at + 1] == '    deleted by the last run: vmbackup-vmstore-dr-20261201T013002Z'
    assert lines[-1].startswith('  (from ')
    # two days later the restore point is what makes the check critical
    state, out = check(capsys, settings, asked(), now=NOW + 2 * 24 * HOUR)
    assert state == vmbackup.CHECK_CRITICAL
    assert out.startswith('VMBACKUP CRITICAL - last success 2.0 days ago, older than 25 '
                          'hours; last run 2.0 days ago on g1; newest restore point 2.2 days '
                          'ago (2 kept), older than 49 hours|')


@pytest.mark.parametrize('record, keep, line', [
    (None, 0, '  restore points: none ([restore_points] keep = 0): while a sync runs, and '
              'after a run that failed, the remote copy is inconsistent, and nothing older '
              'is kept at the remote site'),
    (None, 2, '  restore points: none known (keep = 2); the last run listed none'),
    ({'count': None}, 2, '  restore points: none known (keep = 2); the last run listed none'),
    ({'count': 0, 'host': 'h', 'volume': 'v', 'newest': None}, 2,
     '  restore points: none of ours on h::v (keep = 2)'),
])
def test_the_status_says_why_it_shows_no_restore_point(record, keep, line):
    assert vmbackup.restore_point_lines(record, keep, NOW) == [line]
