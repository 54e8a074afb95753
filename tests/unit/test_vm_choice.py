"""Choosing the VMs and their disks (step 4) on SDK type objects, the stale
snapshots a run may remove, and --dry-run's plan, as printed."""
import argparse
import datetime
import logging
import shlex
import time

import ovirtsdk4.types as types
import pytest

import vmbackup

SD = 'sd-vmstore'
OURS = 'GLUSTER-Geo-rep-snapshot vmstore'


def disk(disk_id, sd_ids=(SD,), storage_type=types.DiskStorageType.IMAGE, shareable=False,
         name=None):
    return types.DiskAttachment(disk=types.Disk(
        id=disk_id, name=name, image_id='image-' + disk_id, shareable=shareable,
        storage_type=storage_type,
        storage_domains=[types.StorageDomain(id=sd_id) for sd_id in sd_ids]))


def vm(name, attachments, snapshots=()):
    return types.Vm(id='id-' + name, name=name, disk_attachments=list(attachments),
                    snapshots=list(snapshots))


# the disks of a VM ------------------------------------------------------------------

def test_the_disks_to_back_up_are_the_image_disks_on_the_chosen_domains(caplog):
    machine = vm('db', [
        disk('a'),
        disk('b', sd_ids=('elsewhere', SD)),               # the chosen domain's
        disk('c', sd_ids=('elsewhere',)),
        disk('d', storage_type=types.DiskStorageType.LUN),  # a direct LUN
        disk('e', shareable=True, name='quorum'),
        types.DiskAttachment(disk=None),
        types.DiskAttachment(disk=types.Disk(id=None)),
    ])
    with caplog.at_level(logging.DEBUG, logger='vmbackup'):
        records = vmbackup.disks_to_back_up(machine, {SD: 'vmstore-sd'})
    assert [(r.disk_id, r.sd_id, r.base_id) for r in records] == [
        ('a', SD, 'image-a'), ('b', SD, 'image-b')]
    said = [r.getMessage() for r in caplog.records]
    assert 'VM db: disk quorum is shareable and cannot be snapshotted; it is copied as ' \
           'it is' in said
    assert 'VM db: disk d is not an image disk; left out' in said


def test_all_domains_take_every_image_disk_on_its_first_domain():
    machine = vm('web', [disk('a', sd_ids=('x', 'y')), disk('b', sd_ids=()),
                         disk('c', storage_type=None)])
    records = vmbackup.disks_to_back_up(machine, {})
    assert [(r.disk_id, r.sd_id) for r in records] == [('a', 'x'), ('c', SD)]
    assert vmbackup.disks_to_back_up(types.Vm(name='bare'), {}) == []


def test_an_excluded_vm_is_left_out_and_the_rest_sorted_by_name(caplog):
    vms = [vm('web', [disk('w')]), vm('db', [disk('d')]), vm('app', [disk('a')])]
    with caplog.at_level(logging.INFO, logger='vmbackup'):
        chosen, problems = vmbackup.select_backups(vms, {SD: 'sd'}, set(), {'web'},
                                                   'vmstore')
    assert [b.name for b in chosen] == ['app', 'db'] and problems == []
    assert 'VM web left out (--exclude)' in [r.getMessage() for r in caplog.records]
    only, _ = vmbackup.select_backups(vms, {}, {'db'}, set(), 'vmstore')
    assert [(b.vm_id, b.name) for b in only] == [('id-db', 'db')]


def test_a_wanted_vm_without_a_disk_anywhere_says_any_storage_domain():
    _, problems = vmbackup.select_backups([vm('empty', [])], {}, {'empty'}, set(),
                                          'vmstore')
    assert problems == ['VM empty has no disk that can be snapshotted on any storage domain']


# stale snapshots: which a run on a node-local lock may remove ------------------------

def stale_run(tmp_path, shared=False, dry_run=False, timeout=60):
    args = argparse.Namespace(mastervol='vmstore', timeout=timeout, dry_run=dry_run)
    settings = vmbackup.Settings(lock_dir=str(tmp_path), lock_is_shared=shared,
                                 wait_timeout=10, scheduler_grace=300, mount_timeout=120)
    return vmbackup.Run(args, settings, vmbackup.Stop())


def snapshot(snapshot_id, description=OURS, age=None):
    date = None if age is None else datetime.datetime.fromtimestamp(
        time.time() - age, datetime.timezone.utc)
    return types.Snapshot(id=snapshot_id, description=description, date=date)


def plan_of(*vms):
    backups, _ = vmbackup.select_backups(list(vms), {SD: 'sd'}, set(), set(), 'vmstore')
    return vmbackup.Plan(backups=backups), list(vms)


def test_an_old_snapshot_of_this_volume_is_removed_with_a_warning(tmp_path, caplog):
    plan, vms = plan_of(vm('web', [disk('w')], [snapshot('old', age=86400)]))
    with caplog.at_level(logging.WARNING, logger='vmbackup'):
        vmbackup.check_stale_snapshots(stale_run(tmp_path), plan, vms)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith('VM web: snapshot old is ')
    assert warning.endswith(' old, older than a run can take: left by an earlier run')


@pytest.mark.parametrize('snap, why', [
    (('young', OURS, 600), "VM web has a snapshot %r taken 10.0 minutes ago: a run on another "
                           "node may own it" % OURS),
    (('undated', OURS, None), "VM web has a snapshot %r of unknown age: a run on another "
                              "node may own it" % OURS),
    (('2016', 'GLUSTER-Geo-rep-snapshot', 10 ** 7),
     "VM web has a snapshot 'GLUSTER-Geo-rep-snapshot' (the description of vmbackup "
     "before 2.2, which names no volume): a run of any volume on another node may own it"),
], ids=['young', 'undated', '2016'])
def test_a_snapshot_a_live_run_may_own_stops_a_run_on_a_node_local_lock(tmp_path, snap, why):
    snap = snapshot(*snap)          # dated now, not when the tests were collected
    plan, vms = plan_of(vm('web', [disk('w')], [snap]))
    with pytest.raises(vmbackup.LockHeld) as raised:
        vmbackup.check_stale_snapshots(stale_run(tmp_path), plan, vms)
    message = str(raised.value)
    assert message.startswith(why), message
    assert 'the lock in %s does not reach other nodes; nothing done' % tmp_path in message


def test_without_a_scheduler_timeout_no_snapshot_is_old_enough(tmp_path):
    plan, vms = plan_of(vm('web', [disk('w')], [snapshot('old', age=10 ** 8)]))
    with pytest.raises(vmbackup.LockHeld, match='taken .* ago'):
        vmbackup.check_stale_snapshots(stale_run(tmp_path, timeout=0), plan, vms)


@pytest.mark.parametrize('shared, dry_run', [(True, False), (False, True)])
def test_a_cluster_wide_lock_or_a_dry_run_checks_nothing(tmp_path, shared, dry_run):
    plan, vms = plan_of(vm('web', [disk('w')], [snapshot('2016', 'GLUSTER-Geo-rep-snapshot'),
                                                snapshot('young', age=1)]))
    assert vmbackup.check_stale_snapshots(stale_run(tmp_path, shared, dry_run),
                                          plan, vms) is None


# --dry-run's plan -----------------------------------------------------------------------

def dry_run(presync=False, restore_keep=0):
    args = argparse.Namespace(mastervol='vmstore', slave='geo@dr.example.com',
                              slavevol='vmstore-dr', interval=10, timeout=240,
                              dry_run=True)
    settings = vmbackup.Settings(schedule_georep=['/usr/bin/python3', 'schedule_georep.py'],
                                 presync=presync, presync_timeout=30,
                                 restore_keep=restore_keep)
    run = vmbackup.Run(args, settings, vmbackup.Stop())
    backups, _ = vmbackup.select_backups(
        [vm('web', [disk('w1'), disk('w2')], [snapshot('stale-1', age=10 ** 6)]),
         vm('db', [disk('d1')])], {SD: 'vmstore-sd'}, set(), set(), 'vmstore')
    run.plan = vmbackup.Plan(storage_domains={SD: 'vmstore-sd'}, backups=backups,
                             up_vm_count=5, snapshot_description=OURS)
    return run


def test_the_dry_run_prints_each_step_with_its_commands(capsys):
    vmbackup.print_plan(dry_run())
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == [
        'Dry run: nothing is changed.',
        'Storage domain on volume vmstore: vmstore-sd (sd-vmstore)',
        'Would mount localhost:vmstore read-only with: /usr/sbin/glusterfs '
        '--volfile-server localhost --volfile-id vmstore --read-only -l '
        '/var/log/glusterfs/geo-replication/dr_slave.mount.log DIR',
        'and have the engine bring the OVF store of vmstore-sd up to date first, and keep it.',
    ]
    assert out[4:12] == [
        'VMs to snapshot (2 of 5 running):',
        "  db: snapshot %r without memory, disks:" % OURS,
        '    d1 on sd-vmstore, base image image-d1',
        '  web: would first remove snapshot stale-1 left by an earlier run',
        "  web: snapshot %r without memory, disks:" % OURS,
        '    w1 on sd-vmstore, base image image-w1',
        '    w2 on sd-vmstore, base image image-w2',
        'Would run: /usr/bin/python3 schedule_georep.py vmstore geo@dr.example.com '
        'vmstore-dr --interval 10 --timeout 240',
    ]
    assert out[12].startswith('Would mount dr.example.com:vmstore-dr with: '
                              '/usr/sbin/glusterfs --volfile-server dr.example.com '
                              '--volfile-id vmstore-dr ')
    assert '  DIR/sd-vmstore/images/w2/<overlay id>{,.meta,.lease}, image-w2.meta' in out
    assert out[-1] == ('Would then remove the 2 snapshots (live merge) and post an event '
                       'from ovirt-georep-backup.')
    assert not any('pre-sync' in line or 'restore point' in line for line in out)


def test_the_dry_run_tells_the_pre_sync_and_the_restore_point_when_configured(capsys):
    vmbackup.print_plan(dry_run(presync=True, restore_keep=3))
    out = capsys.readouterr().out.splitlines()
    assert ('Would first run, as the pre-sync (a failure only a warning): /usr/bin/python3 '
            'schedule_georep.py vmstore geo@dr.example.com vmstore-dr --interval 10 '
            '--timeout 30') in out
    (take,) = [line for line in out if line.startswith('When every disk is verified')]
    name = take.split('take the restore point ', 1)[1].split(' ', 1)[0]
    assert vmbackup.is_our_restore_point(name, 'vmstore-dr')
    command = shlex.split(take.split(' with: ', 1)[1])
    assert command[-2] == 'geo@dr.example.com'
    assert shlex.split(command[-1])[-7:] == [
        'snapshot', 'create', 'NAME', 'vmstore-dr', 'no-timestamp', 'description',
        'EVENT TEXT']
    assert ('and delete the restore points of ours beyond keep = 3, oldest first (gluster '
            'snapshot info volume vmstore-dr on geo@dr.example.com).') in out


def test_a_dry_run_without_vms_mounts_nothing(capsys):
    run = dry_run()
    run.plan = vmbackup.Plan(storage_domains={}, backups=[], up_vm_count=2,
                             snapshot_description=OURS)
    vmbackup.print_plan(run)
    out = capsys.readouterr().out.splitlines()
    assert out[1] == 'Storage domain on volume vmstore: --all-vms: every running VM, all disks'
    assert out[2] == 'VMs to snapshot (0 of 2 running):'
    assert not any('read-only' in line for line in out)


# the storage domain the master volume backs --------------------------------------------

class DomainsEngine:
    """What find_storage_domains asks of the engine: the storage domains."""

    def __init__(self, *domains):
        self.system = self
        self.domains = list(domains)

    def storage_domains_service(self):
        return self

    def list(self):
        return self.domains


def gluster_domain(sd_id, name, path, kind=types.StorageType.GLUSTERFS):
    return types.StorageDomain(id=sd_id, name=name, storage=types.HostStorage(
        type=kind, path=path))


def domains_run(storage_domain=None, all_vms=False):
    args = argparse.Namespace(mastervol='vmstore', all_vms=all_vms)
    return vmbackup.Run(args, vmbackup.Settings(storage_domain=storage_domain),
                        vmbackup.Stop())


ENGINE = DomainsEngine(
    gluster_domain('1', 'vmstore-sd', 'gluster1.example.com:/vmstore'),
    gluster_domain('2', 'data-sd', '/data'),
    gluster_domain('3', 'nfs-sd', '/vmstore', kind=types.StorageType.NFS),
    types.StorageDomain(id='4', name='iso'))


def test_the_domain_is_the_glusterfs_one_whose_path_names_the_volume():
    assert vmbackup.find_storage_domains(domains_run(), ENGINE) == {'1': 'vmstore-sd'}
    assert vmbackup.find_storage_domains(domains_run('data-sd'), ENGINE) == {'2': 'data-sd'}
    assert vmbackup.find_storage_domains(domains_run(all_vms=True), ENGINE) == {}


@pytest.mark.parametrize('engine, storage_domain, failure', [
    (ENGINE, 'nosuch', "storage domain 'nosuch' ([gluster] storage_domain) does not exist "
                       "in the engine; nothing was changed"),
    (DomainsEngine(*ENGINE.domains[1:]), None,
     'no GlusterFS storage domain of the engine uses volume vmstore: check MASTERVOL, or '
     'name the domain in [gluster] storage_domain (--all-vms snapshots every running VM '
     'instead); nothing was changed'),
    (DomainsEngine(gluster_domain('1', 'b', 'vmstore'), gluster_domain('2', 'a', '/vmstore/')),
     None, 'several GlusterFS storage domains use a volume named vmstore (a, b); name the '
           'right one in [gluster] storage_domain'),
], ids=['named-none', 'none', 'several'])
def test_no_domain_or_several_fail_the_run_with_one_line(engine, storage_domain, failure):
    run = domains_run(storage_domain)
    with pytest.raises(vmbackup.Failed):
        vmbackup.find_storage_domains(run, engine)
    assert run.failures == [failure]
