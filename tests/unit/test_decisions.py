"""The pure decisions of vmbackup.py, without an engine or a process: fast."""
import argparse
import datetime
import uuid

import ovirtsdk4.types as types
import pytest

import vmbackup

SD = str(uuid.uuid4())


def settings(**values):
    return vmbackup.Settings(**values)


# volume_path: exact paths, and none when an id is not a UUID ----------------

def test_volume_path_is_the_exact_path_of_a_volume():
    disk_id, volume_id = str(uuid.uuid4()), str(uuid.uuid4())
    assert vmbackup.volume_path('/mnt', SD, disk_id, volume_id) == \
        '/mnt/%s/images/%s/%s' % (SD, disk_id, volume_id)


@pytest.mark.parametrize('field, value', [
    ('volume', '..'),
    ('volume', '*'),
    ('volume', '../0b2f6b0e-3a51-4f7e-9d3c-5f2a1c9e8d70'),
    ('disk', ''),
    ('disk', None),
    ('sd', 'dom_md'),
    ('volume', '0b2f6b0e-3a51-4f7e-9d3c-5f2a1c9e8d70/x'),
    ('volume', '0b2f6b0e-3a51-4f7e-9d3c-5f2a1c9e8d70.meta'),
])
def test_volume_path_refuses_an_id_that_is_not_a_uuid(field, value):
    ids = {'sd': SD, 'disk': str(uuid.uuid4()), 'volume': str(uuid.uuid4())}
    ids[field] = value
    with pytest.raises(vmbackup.MetaError):
        vmbackup.volume_path('/mnt', ids['sd'], ids['disk'], ids['volume'])


# backs_volume -----------------------------------------------------------------

def domain(type_, path):
    return types.StorageDomain(storage=types.HostStorage(type=type_, path=path))


@pytest.mark.parametrize('path, expected', [
    ('/vmstore', True), ('vmstore', True), ('gluster1:/vmstore', True),
    ('gluster1:/vmstore/', True), ('/vmstore-dr', False), ('/other', False),
    ('gluster1:/vmstoreX', False), (None, False),
])
def test_backs_volume_reads_the_volume_from_the_domain_path(path, expected):
    assert vmbackup.backs_volume(domain(types.StorageType.GLUSTERFS, path),
                                 'vmstore') is expected


def test_an_nfs_domain_of_the_same_path_backs_no_volume():
    assert not vmbackup.backs_volume(domain(types.StorageType.NFS, '/vmstore'),
                                     'vmstore')
    assert not vmbackup.backs_volume(types.StorageDomain(storage=None), 'vmstore')


# the event's text ---------------------------------------------------------------

def test_a_good_run_says_how_long_it_took():
    alert, text = vmbackup.event_description('vmstore', [], 12.345)
    assert not alert
    assert text == ('Successfully backed up gluster volume vmstore to remote '
                    'site. Backup completed in 12.3 minutes')


def test_a_failed_run_lists_its_failures_and_is_cut_to_the_engine_limit():
    failures = ['VM vm%03d: the snapshot failed' % n for n in range(500)]
    alert, text = vmbackup.event_description('vmstore', failures, 1)
    assert alert
    assert text.startswith('Failed to backup gluster volume vmstore to remote '
                           'site. Please check backup log for details: VM vm000')
    assert len(text) == vmbackup.EVENT_DESCRIPTION_LIMIT
    assert text.endswith('...')


def test_a_short_failure_list_is_not_cut():
    alert, text = vmbackup.event_description('vmstore', ['one', 'two'], 1)
    assert text.endswith(': one; two')


def test_notes_follow_the_outcome():
    _, text = vmbackup.event_description('v', [], 1, ['crash-consistent only: db'])
    assert text.endswith('minutes; crash-consistent only: db')


# polls: timed start to start, backing off to poll_interval -------------------

class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def test_polls_back_off_from_the_first_wait_up_to_the_poll_interval():
    clock = FakeClock()
    polls = vmbackup.Polls(settings(poll_interval=1.0), sleep=clock.sleep,
                           clock=clock)
    checks = iter(polls)
    for _ in range(12):
        next(checks)
    expected = [round(min(vmbackup.FIRST_POLL * vmbackup.BACKOFF ** n, 1.0), 6)
                for n in range(12)]
    assert clock.sleeps == expected
    assert clock.sleeps[-1] == 1.0


def test_polls_count_the_time_a_check_took_from_the_wait():
    clock = FakeClock()
    polls = vmbackup.Polls(settings(poll_interval=0.25), sleep=clock.sleep,
                           clock=clock)
    checks = iter(polls)
    next(checks)
    clock.now += 0.1           # the check itself took 0.1 s
    next(checks)
    assert clock.sleeps == [0.25, 0.15]


def test_polls_hurry_goes_back_to_the_first_wait():
    clock = FakeClock()
    polls = vmbackup.Polls(settings(poll_interval=5.0), sleep=clock.sleep,
                           clock=clock)
    checks = iter(polls)
    for _ in range(6):
        next(checks)
    polls.hurry()
    next(checks)
    assert clock.sleeps[-1] == vmbackup.FIRST_POLL


# the lock's record ------------------------------------------------------------

def test_a_recent_success_is_told_with_its_node_and_age():
    record = {'last_success': 1000.0, 'last_success_node': 'gluster2'}
    assert vmbackup.recently_backed_up(record, 60, 1000.0 + 600) == \
        '10 min ago by gluster2'


@pytest.mark.parametrize('record, skip_within, now', [
    ({'last_success': 1000.0}, 60, 1000.0 + 3601),      # too old
    ({'last_success': 1000.0}, 0, 1001.0),              # skip_within 0: never
    ({}, 60, 1000.0),                                   # no success known
    ({'last_success': 'x'}, 60, 1000.0),                # garbled
    ({'last_success': 2000.0}, 60, 1000.0),             # in the future: clock skew
])
def test_no_recent_success_lets_the_run_go(record, skip_within, now):
    assert vmbackup.recently_backed_up(record, skip_within, now) is None


# stale snapshots: the longest a run can take -----------------------------------

def test_a_run_without_a_scheduler_timeout_may_take_for_ever():
    args = argparse.Namespace(timeout=0)
    assert vmbackup.longest_run_seconds(args, settings()) == float('inf')


def test_the_longest_run_grows_with_the_timeouts():
    args = argparse.Namespace(timeout=60)
    short = vmbackup.longest_run_seconds(args, settings(wait_timeout=1))
    long = vmbackup.longest_run_seconds(args, settings(wait_timeout=30))
    assert 3600 < short < long


def test_a_snapshot_age_comes_from_its_date():
    date = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    assert vmbackup.snapshot_age(date, date.timestamp() + 90) == 90
    assert vmbackup.snapshot_age(None, 0) is None


# the preflight's reading of gluster's answer --------------------------------------

SESSION = ('<?xml version="1.0"?><cliOutput><opRet>0</opRet><geoRep><volume>'
           '<sessions><session><pair><status>Stopped</status></pair></session>'
           '</sessions></volume></geoRep></cliOutput>')


@pytest.mark.parametrize('status, output, expected', [
    (0, SESSION, None),
    (0, 'warning: something\n' + SESSION, None),
    (0, '<cliOutput><opRet>0</opRet><geoRep><volume><sessions/></volume></geoRep>'
        '</cliOutput>', 'missing'),
    (2, 'geo-replication command failed\n', 'missing'),
    (1, 'Connection failed. Please check if gluster daemon is operational.\n',
     'gluster exited with status 1: Connection failed. Please check if gluster '
     'daemon is operational.'),
    (0, '<cliOutput><opRet>-1</opRet><opErrstr>Volume x does not exist</opErrstr>'
        '</cliOutput>', 'Volume x does not exist'),
    (0, 'not xml', 'gluster answered without its XML'),
    (0, '<cliOutput><opRet>0', 'gluster answered without its XML'),
    (None, '', 'gluster did not answer within %d seconds'
     % vmbackup.GLUSTER_CLI_TIMEOUT),
])
def test_the_session_check_reads_gluster_answers(status, output, expected):
    assert vmbackup.session_problem(status, output) == expected


# choosing the VMs -------------------------------------------------------------------

def vm(name, sd_ids=(SD,), snapshots=(), shareable=False):
    disks = [types.DiskAttachment(disk=types.Disk(
        id=str(uuid.uuid4()), image_id=str(uuid.uuid4()), shareable=shareable,
        storage_type=types.DiskStorageType.IMAGE,
        storage_domains=[types.StorageDomain(id=sd_id)])) for sd_id in sd_ids]
    return types.Vm(id=str(uuid.uuid4()), name=name, disk_attachments=disks,
                    snapshots=list(snapshots))


def test_select_backups_takes_the_vms_with_a_disk_on_the_domain_and_no_other_disk():
    web = vm('web', sd_ids=(SD, 'elsewhere'))
    chosen, problems = vmbackup.select_backups(
        [web, vm('nfs', sd_ids=('elsewhere',)), vm('HostedEngine')],
        {SD: 'vmstore-sd'}, set(), set())
    assert [b.name for b in chosen] == ['web'] and problems == []
    assert [d.disk_id for d in chosen[0].disks] == [web.disk_attachments[0].disk.id]


def test_select_backups_names_what_a_wanted_vm_lacks():
    chosen, problems = vmbackup.select_backups(
        [vm('nfs', sd_ids=('elsewhere',)), vm('HostedEngine'), vm('web')],
        {SD: 'sd'}, {'nfs', 'HostedEngine'}, set())
    assert chosen == []
    assert problems == ['VM HostedEngine is the hosted engine and is never snapshotted',
                        'VM nfs has no disk that can be snapshotted on storage domain sd']


def test_select_backups_marks_our_snapshots_stale_and_no_other():
    ours = types.Snapshot(id='s1', description=vmbackup.SNAPSHOT_DESCRIPTION,
                          snapshot_type=types.SnapshotType.REGULAR)
    users = types.Snapshot(id='s2', description='before upgrade',
                           snapshot_type=types.SnapshotType.REGULAR)
    active = types.Snapshot(id='s3', description=vmbackup.SNAPSHOT_DESCRIPTION,
                            snapshot_type=types.SnapshotType.ACTIVE)
    (chosen,), _ = vmbackup.select_backups([vm('web', snapshots=[ours, users, active])],
                                           {SD: 'sd'}, set(), set())
    assert chosen.stale_snapshot_ids == ['s1']


@pytest.mark.parametrize('record, field', [
    (vmbackup.Plan, 'vm_positions'), (vmbackup.OvfVm, 'volumes'),
    (vmbackup.Plan, 'backups')])
def test_records_do_not_share_a_default_list_or_dict(record, field):
    first, second = record(), record()
    assert getattr(first, field) is not getattr(second, field)
    assert getattr(first, field) == getattr(second, field)
