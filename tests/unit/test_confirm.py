"""confirm_copies: which disks of this run are confirmed at the slave, and
why each other one is not; the master and the slave are two directories,
the engine's answers are given."""
import os
import shutil
import types as namespace
import uuid

import pytest
from ovirtsdk4 import types

import vmbackup
from vmbackup import DiskRecord, Plan, Run, Settings, VmBackup


def new_id():
    return str(uuid.uuid4())


SD = new_id()


def make_run(backups, created):
    args = namespace.SimpleNamespace(mastervol='vmstore', slave='root@dr', slavevol='dr',
                                     vm=[], exclude=[])
    run = Run(args, Settings(), stop=vmbackup.Stop())
    run.plan = Plan(backups=list(backups))
    run.created = list(created)
    return run


def backed_up_disk(master, slave, content=b'base'):
    """A disk whose base is at the master and copied to the slave (mtime
    kept, as geo-replication keeps it); return its DiskRecord."""
    disk = DiskRecord(sd_id=SD, disk_id=new_id(), base_id=new_id(), overlay_id=new_id())
    for root in (master, slave):
        os.makedirs(os.path.join(root, SD, 'images', disk.disk_id))
    base = vmbackup.volume_path(master, SD, disk.disk_id, disk.base_id)
    with open(base, 'wb') as data:
        data.write(content)
    with open(base + '.meta', 'w') as meta:
        meta.write('VOLTYPE=INTERNAL\nEOF\n')
    for suffix in ('', '.meta'):
        shutil.copy2(base + suffix, vmbackup.volume_path(
            slave, SD, disk.disk_id, disk.base_id) + suffix)
    return disk


def vm_now(backup, disks, snapshot=True):
    """The VM as the engine answers now: this run's snapshot (or not) and
    each disk on the image id given."""
    return types.Vm(
        id=backup.vm_id,
        snapshots=[types.Snapshot(id=backup.snapshot_id)] if snapshot else [],
        disk_attachments=[types.DiskAttachment(disk=types.Disk(id=disk_id, image_id=image))
                          for disk_id, image in disks])


@pytest.fixture
def roots(tmp_path):
    master, slave = str(tmp_path / 'master'), str(tmp_path / 'slave')
    os.makedirs(os.path.join(master, SD))
    return master, slave


def confirm(monkeypatch, run, roots, states, checkpoint=None):
    monkeypatch.setattr(vmbackup, 'fetch_confirming',
                        lambda run, engine, vm_ids: {vm_id: states.get(vm_id)
                                                     for vm_id in vm_ids})
    return vmbackup.confirm_copies(run, None, run.created, roots[0], roots[1],
                                   checkpoint)


def test_a_disk_copied_whole_with_its_snapshot_in_place_is_confirmed(monkeypatch, roots):
    disk = backed_up_disk(*roots, content=b'x' * 4096)
    backup = VmBackup(vm_id=new_id(), name='web', snapshot_id=new_id(),
                      snapshot_ready=True, disks=[disk])
    run = make_run([backup], [backup])
    states = {backup.vm_id: vm_now(backup, [(disk.disk_id, disk.overlay_id)])}
    assert confirm(monkeypatch, run, roots, states) == [(backup, disk)]
    assert disk.confirmed is True and disk.size == 4096 and disk.problem is None
    assert run.failures == []


def test_a_vm_without_a_snapshot_of_this_run_has_its_disks_not_confirmed(monkeypatch,
                                                                         roots):
    disk = DiskRecord(disk_id=new_id())
    known = DiskRecord(disk_id=new_id(), problem='shareable: not backed up')
    backup = VmBackup(vm_id=new_id(), name='web', disks=[disk, known])
    run = make_run([backup], [])
    assert confirm(monkeypatch, run, roots, {}) == []
    assert disk.confirmed is False and disk.problem == 'no snapshot of this run'
    assert known.confirmed is False and known.problem == 'shareable: not backed up'
    assert run.failures == []


def test_each_disk_that_is_not_confirmed_says_why(monkeypatch, roots):
    master, slave = roots
    good = backed_up_disk(master, slave)
    skipped = DiskRecord(sd_id=SD, disk_id=new_id(), problem='not quiesced as asked')
    elsewhere = DiskRecord(sd_id=new_id(), disk_id=new_id(), base_id=new_id(),
                           overlay_id=new_id())
    changed = backed_up_disk(master, slave)
    with open(vmbackup.volume_path(slave, SD, changed.disk_id, changed.base_id),
              'ab') as data:
        data.write(b'more')
    moved = backed_up_disk(master, slave)
    backup = VmBackup(vm_id=new_id(), name='web', snapshot_id=new_id(),
                      snapshot_ready=True,
                      disks=[good, skipped, elsewhere, changed, moved])
    run = make_run([backup], [backup])
    states = {backup.vm_id: vm_now(backup, [(good.disk_id, good.overlay_id),
                                            (changed.disk_id, changed.overlay_id),
                                            (moved.disk_id, new_id())])}
    assert confirm(monkeypatch, run, roots, states) == [(backup, good)]
    assert [disk.confirmed for disk in backup.disks] == [True, False, False, False, False]
    assert skipped.problem == 'not quiesced as asked'
    assert elsewhere.problem == 'its storage domain is not on volume vmstore'
    assert changed.problem.startswith('not confirmed at the remote site: base volume '
                                      '%s is 8 bytes at the slave, 4 at the master'
                                      % changed.base_id)
    assert moved.problem.startswith('not confirmed at the remote site: the disk is on '
                                    'volume ')
    assert len(run.failures) == 2
    assert all('nothing of that disk is changed there' in line for line in run.failures)


def test_a_checkpoint_not_seen_complete_confirms_nothing(monkeypatch, roots):
    disk = backed_up_disk(*roots)
    backup = VmBackup(vm_id=new_id(), name='web', snapshot_id=new_id(),
                      snapshot_ready=True, disks=[disk])
    run = make_run([backup], [backup])
    states = {backup.vm_id: vm_now(backup, [(disk.disk_id, disk.overlay_id)])}
    assert confirm(monkeypatch, run, roots, states, checkpoint='replica set 2 is '
                   'Faulty') == []
    assert run.failures[0] == ('the copy at the remote site is not confirmed: replica '
                               'set 2 is Faulty')
    assert "geo-replication's checkpoint was not seen complete" in disk.problem


def test_a_snapshot_gone_or_a_vm_not_found_is_not_confirmed(monkeypatch, roots):
    first, second = backed_up_disk(*roots), backed_up_disk(*roots)
    gone = VmBackup(vm_id=new_id(), name='web', snapshot_id=new_id(),
                    snapshot_ready=True, disks=[first])
    lost = VmBackup(vm_id=new_id(), name='db', snapshot_id=new_id(),
                    snapshot_ready=True, disks=[second])
    run = make_run([gone, lost], [gone, lost])
    states = {gone.vm_id: vm_now(gone, [(first.disk_id, first.overlay_id)],
                                 snapshot=False)}
    assert confirm(monkeypatch, run, roots, states) == []
    assert "this run's snapshot %s is gone" % gone.snapshot_id in first.problem
    assert 'its VM was not found on the engine' in second.problem


@pytest.mark.parametrize('change, problem', [
    (lambda disk: setattr(disk, 'overlay_id', None),
     'its image did not change with the snapshot'),
    (lambda disk: setattr(disk, 'base_id', 'not-a-uuid'),
     'the engine gave an id that is not a UUID'),
], ids=['no overlay', 'not a uuid'])
def test_copy_problem_names_what_the_engine_gave_wrong(roots, change, problem):
    disk = backed_up_disk(*roots)
    change(disk)
    assert problem in vmbackup.copy_problem(disk, *roots)


def test_copy_problem_needs_both_volumes_mounted(roots):
    disk = backed_up_disk(*roots)
    assert vmbackup.copy_problem(disk, None, roots[1]) == 'the master volume is not mounted'
    assert vmbackup.copy_problem(disk, roots[0], None) == 'the slave volume is not mounted'
