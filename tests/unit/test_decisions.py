"""The pure decisions of vmbackup.py, without an engine or a process: fast."""
import argparse
import datetime
import io
import json
import tarfile
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

SESSION_NAME = 'dr.example.com::vmstore-dr'


def lock_record(last_success, node='gluster2', session=SESSION_NAME):
    return {'sessions': {session: {'last_success': last_success, 'node': node}}}


def test_a_recent_success_of_the_session_is_told_with_its_node_and_age():
    assert vmbackup.recently_backed_up(lock_record(1000.0), SESSION_NAME, 60,
                                       1000.0 + 600) == \
        '10.0 minutes ago by gluster2'


@pytest.mark.parametrize('record, skip_within, now', [
    (lock_record(1000.0), 60, 1000.0 + 3601),              # too old
    (lock_record(1000.0), 0, 1001.0),                      # skip_within 0: never
    ({}, 60, 1000.0),                                   # no success known
    (lock_record('x'), 60, 1000.0),                        # garbled
    ({'sessions': {SESSION_NAME: 'x'}}, 60, 1000.0),
    ({'sessions': ['x']}, 60, 1000.0),
    (lock_record(2000.0), 60, 1000.0),                     # in the future: clock skew
    # another session of the same volume: a second slave is not skipped
    (lock_record(1000.0, session='dr2.example.com::vmstore-dr'), 60, 1001.0),
    # vmbackup 2.1's record: one success for the volume, whichever session
    # or VMs it was: it skips nothing, and breaks nothing
    ({'last_success': 1000.0, 'last_success_node': 'gluster2', 'pid': 7}, 60, 1001.0),
])
def test_no_recent_success_of_the_session_lets_the_run_go(record, skip_within, now):
    assert vmbackup.recently_backed_up(record, SESSION_NAME, skip_within, now) is None


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
        {SD: 'vmstore-sd'}, set(), set(), 'vmstore')
    assert [b.name for b in chosen] == ['web'] and problems == []
    assert [d.disk_id for d in chosen[0].disks] == [web.disk_attachments[0].disk.id]


def test_select_backups_names_what_a_wanted_vm_lacks():
    chosen, problems = vmbackup.select_backups(
        [vm('nfs', sd_ids=('elsewhere',)), vm('HostedEngine'), vm('web')],
        {SD: 'sd'}, {'nfs', 'HostedEngine'}, set(), 'vmstore')
    assert chosen == []
    assert problems == ['VM HostedEngine is the hosted engine and is never snapshotted',
                        'VM nfs has no disk that can be snapshotted on storage domain sd']


def test_select_backups_marks_this_volumes_and_the_2016_snapshots_stale_and_no_other():
    def snapshot(snapshot_id, description, kind=types.SnapshotType.REGULAR):
        return types.Snapshot(id=snapshot_id, description=description, snapshot_type=kind)

    snapshots = [
        snapshot('ours', 'GLUSTER-Geo-rep-snapshot vmstore'),
        snapshot('2016', 'GLUSTER-Geo-rep-snapshot'),
        # another volume's run may be live: never ours to remove
        snapshot('theirs', 'GLUSTER-Geo-rep-snapshot data'),
        snapshot('user', 'before upgrade'),
        snapshot('user2', 'GLUSTER-Geo-rep-snapshot of vmstore, kept by hand'),
        snapshot('active', 'GLUSTER-Geo-rep-snapshot vmstore', types.SnapshotType.ACTIVE),
    ]
    (chosen,), _ = vmbackup.select_backups([vm('web', snapshots=snapshots)],
                                           {SD: 'sd'}, set(), set(), 'vmstore')
    assert chosen.stale_snapshot_ids == ['ours', '2016']


@pytest.mark.parametrize('description, volume', [
    ('GLUSTER-Geo-rep-snapshot vmstore', 'vmstore'),
    ('GLUSTER-Geo-rep-snapshot', ''),
    ('GLUSTER-Geo-rep-snapshot data', 'data'),
    ('GLUSTER-Geo-rep-snapshot two words', None),
    ('keep: GLUSTER-Geo-rep-snapshot', None),
    (None, None),
])
def test_a_backup_snapshots_description_names_its_volume(description, volume):
    assert vmbackup.backup_snapshot_volume(description) == volume
    if volume:
        assert vmbackup.snapshot_description(volume) == description


class MapEngine:
    """What look_for_snapshots asks of the engine: map() over the VMs."""

    def __init__(self, vms):
        self.vms = {vm.id: vm for vm in vms}

    def map(self, calls):
        return {key: self.vms[key] for key, _ in calls}


def test_a_lost_answer_adopts_only_a_snapshot_of_this_volume():
    theirs = types.Snapshot(id='theirs', description='GLUSTER-Geo-rep-snapshot data',
                            snapshot_type=types.SnapshotType.REGULAR)
    ours = types.Snapshot(id='ours', description='GLUSTER-Geo-rep-snapshot vmstore',
                          snapshot_type=types.SnapshotType.REGULAR)
    lost = vm('shared', snapshots=[theirs])
    found = vm('web', snapshots=[theirs, ours])
    plan = vmbackup.Plan(snapshot_description=vmbackup.snapshot_description('vmstore'))
    backups = [vmbackup.VmBackup(vm_id=lost.id, name='shared'),
               vmbackup.VmBackup(vm_id=found.id, name='web')]
    adopted, _ = vmbackup.look_for_snapshots(MapEngine([lost, found]), backups, plan,
                                             'found %s')
    assert [(b.name, b.snapshot_id) for b in adopted] == [('web', 'ours')]
    assert backups[0].snapshot_id is None


# the OVF store kept without a VM that carries another volume's snapshot -------

def ovf_store(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            member = tarfile.TarInfo(name)
            member.size, member.mtime = len(data), 1796182202
            tar.addfile(member, io.BytesIO(data))
    data = buffer.getvalue()
    description = json.dumps({'Updated': True, 'Size': len(data),
                              'Last Updated': 'Thu Dec 03 01:30:02 UTC 2026',
                              'Disk Description': 'OVF_STORE'}, separators=(',', ':'))
    meta = ('CAP=1048576\nDESCRIPTION=%s\nDISKTYPE=OVFS\nVOLTYPE=LEAF\nEOF\n'
            % description).encode()
    return vmbackup.OvfStore(sd_id='sd', disk_id='d', volume_id='v', meta=meta, data=data,
                             last_updated='Thu Dec 03 01:30:02 UTC 2026')


def test_an_ovf_store_without_a_vm_drops_only_its_ovf_and_says_its_new_size():
    ovf = ('<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/">'
           '<Content><Name>%s</Name></Content></ovf:Envelope>')
    store = ovf_store([('info.json', b'{"Last Updated": "Thu Dec 03 01:30:02 UTC 2026"}'),
                       ('vm-a.ovf', (ovf % 'a').encode()),
                       ('vm-b.ovf', (ovf % 'b').encode()),
                       ('metadata.json', b'{"VM Status": {"vm-a": 1, "vm-b": 1}}')])
    kept = vmbackup.ovf_store_without(store, {'vm-b'})
    assert sorted(vmbackup.read_ovf_tar(kept.data)) == ['vm-a']
    with tarfile.open(fileobj=io.BytesIO(kept.data)) as tar:
        assert [m.name for m in tar.getmembers()] == ['info.json', 'vm-a.ovf',
                                                      'metadata.json']
        assert tar.extractfile('metadata.json').read() == \
            b'{"VM Status": {"vm-a": 1, "vm-b": 1}}'
    values = vmbackup.parse_meta(kept.meta, 'v.meta')
    description = json.loads(values['DESCRIPTION'])
    assert description['Size'] == len(kept.data)
    assert description['Last Updated'] == 'Thu Dec 03 01:30:02 UTC 2026'
    # every other line of the .meta as the engine wrote it
    assert [line for line in kept.meta.split(b'\n') if not line.startswith(b'DESCRIPTION')] \
        == [line for line in store.meta.split(b'\n') if not line.startswith(b'DESCRIPTION')]
    assert vmbackup.ovf_info(kept.data)['Last Updated'] == kept.last_updated


@pytest.mark.parametrize('record, field', [
    (vmbackup.Plan, 'vm_positions'), (vmbackup.OvfVm, 'volumes'),
    (vmbackup.Plan, 'backups')])
def test_records_do_not_share_a_default_list_or_dict(record, field):
    first, second = record(), record()
    assert getattr(first, field) is not getattr(second, field)
    assert getattr(first, field) == getattr(second, field)


# every exit 3 is silent under -q -----------------------------------------------

@pytest.mark.parametrize('skip', [False, True], ids=['lock held', 'skip_within'])
def test_an_exit_3_under_the_fallback_lock_warns_of_nothing(tmp_path, monkeypatch, caplog,
                                                            skip):
    import fcntl
    lock_dir = tmp_path / 'lock'
    lock_dir.mkdir(mode=0o700)
    monkeypatch.setattr(vmbackup, 'FALLBACK_LOCK_DIR', str(lock_dir))
    args = argparse.Namespace(mastervol='vmstore', slave='root@dr.example.com',
                              slavevol='vmstore-dr', vm=[], exclude=[], force=False,
                              dry_run=False)
    settings = vmbackup.Settings(lock_dir=str(lock_dir), lock_is_shared=False,
                                 skip_within=60)
    run = vmbackup.Run(args, settings, vmbackup.Stop())
    path = lock_dir / 'vmbackup-vmstore.lock'
    path.write_text(json.dumps({'sessions': {'dr.example.com::vmstore-dr': {
        'last_success': run.started_at - 60, 'node': 'gluster2'}}}))
    holder = open(str(path), 'a')
    if not skip:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with caplog.at_level('WARNING', logger='vmbackup'):
        with pytest.raises(vmbackup.LockHeld):
            with vmbackup.take_lock(run):
                pass
    holder.close()
    assert [r.getMessage() for r in caplog.records if r.levelname != 'INFO'] == []
