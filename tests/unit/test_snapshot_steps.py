"""The decisions of steps 5 and 8 against an engine held in memory: how
wait_for_snapshots reads each VM's answer, and how a Removal sends again,
retries, gives up and times out. No HTTP, no process: the engine's answers
are those tests/support/fake_engine.py serves (and documents, with its sources): a
snapshot `locked` while it is made or merged; a removal refused with 409
while the VM is busy (ovirt-engine's "Cannot remove Snapshot. Snapshot is
currently being created", VmCommand's ACTION_TYPE_FAILED_VM_IS_DURING_SNAPSHOT);
a failed live merge that leaves the snapshot `ok`; a VM or snapshot gone
answering 404. This engine gives no event feed and no job search (the Watch
then looks at every awaited VM at every check)."""
import argparse
import threading

import ovirtsdk4 as sdk
import ovirtsdk4.types as types
import pytest

import vmbackup
from vmbackup import DiskRecord, Plan, VmBackup

OK, LOCKED = types.SnapshotStatus.OK, types.SnapshotStatus.LOCKED


def fault(code, text):
    error = sdk.Error('Fault reason is "Operation Failed". Fault detail is "%s". '
                      'HTTP response code is %d.' % (text, code))
    error.code = code
    return error


class Engine:
    """The engine in memory: VMs with their snapshots and disks; `script`
    says what each removal of a snapshot does, one word per removal sent:
    'merge' (locked for `merging` looks, then gone), 'fail' (locked, then ok
    again: the merge failed), 'refuse' (409), 'gone' (404, and gone)."""
    events_from = False
    job_search = False

    def __init__(self):
        self.lock = threading.Lock()
        self.vms = {}           # vm id -> {'snapshots': {id: status}, 'disks': {}}
        self.script = {}        # snapshot id -> the removals' words, in order
        self.merging = {}       # snapshot id -> looks left while it merges
        self.failing = set()    # snapshots whose merge in progress fails
        self.answers = {}       # vm id -> errors to answer its next looks with
        self.removals = []      # snapshot ids, as their removals are sent
        self.guest = {}         # vm id -> False: no guest agent reports

    def add_vm(self, vm_id, disks, snapshots=()):
        self.vms[vm_id] = {'snapshots': dict(snapshots), 'disks': dict(disks)}

    @property
    def system(self):
        return self

    def map(self, calls):
        results = {}
        for key, function in calls:
            try:
                results[key] = function(self)
            except sdk.Error as error:
                results[key] = error
        return results

    # the services the tool calls, folded into this one object
    def vms_service(self):
        return self

    def vm_service(self, vm_id):
        return VmService(self, vm_id)

    def look(self, vm_id):
        with self.lock:
            errors = self.answers.get(vm_id)
            if errors:
                raise errors.pop(0)
            vm = self.vms.get(vm_id)
            if vm is None:
                raise fault(404, 'Entity not found: %s' % vm_id)
            for sid in list(vm['snapshots']):
                if sid in self.merging:
                    self.merging[sid] -= 1
                    if self.merging[sid] < 0:
                        del self.merging[sid]
                        if sid in self.failing:
                            self.failing.discard(sid)
                            vm['snapshots'][sid] = OK
                        else:
                            del vm['snapshots'][sid]
            return types.Vm(
                id=vm_id, name=vm_id,
                guest_operating_system=(None if self.guest.get(vm_id) is False
                                        else types.GuestOperatingSystem(family='Linux')),
                snapshots=[types.Snapshot(id='active', snapshot_status=OK)] + [
                    types.Snapshot(id=sid, snapshot_status=status)
                    for sid, status in vm['snapshots'].items()],
                disk_attachments=[types.DiskAttachment(disk=types.Disk(
                    id=disk_id, image_id=image_id))
                    for disk_id, image_id in vm['disks'].items()])

    def remove(self, vm_id, sid, merging=1):
        with self.lock:
            self.removals.append(sid)
            words = self.script.get(sid) or ['merge']
            word = words.pop(0) if len(words) > 1 else words[0]
            vm = self.vms.get(vm_id)
            if vm is None or sid not in vm['snapshots']:
                raise fault(404, 'Entity not found: snapshot %s' % sid)
            if word == 'refuse':
                raise fault(409, 'Cannot remove Snapshot. Snapshot is currently '
                            'being created for VM %s.' % vm_id)
            if word == 'gone':
                del vm['snapshots'][sid]
                raise fault(404, 'Entity not found: snapshot %s' % sid)
            vm['snapshots'][sid] = LOCKED
            self.merging[sid] = merging
            if word == 'fail':
                self.failing.add(sid)


class VmService:
    def __init__(self, engine, vm_id):
        self.engine, self.vm_id = engine, vm_id

    def get(self, follow=None):
        return self.engine.look(self.vm_id)

    def snapshots_service(self):
        return self

    def snapshot_service(self, sid):
        return SnapshotService(self.engine, self.vm_id, sid)


class SnapshotService:
    def __init__(self, engine, vm_id, sid):
        self.engine, self.vm_id, self.sid = engine, vm_id, sid

    def remove(self, query=None):
        self.engine.remove(self.vm_id, self.sid)


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    # the pace of the checks, not what they decide, is FIRST_POLL's
    monkeypatch.setattr(vmbackup, 'FIRST_POLL', 0.001)


def settings(wait_timeout=1.0):
    return vmbackup.Settings(wait_timeout=wait_timeout, poll_interval=0.005)


def backup(vm_id, snapshot_id=None, base='base-' + 'x'):
    return VmBackup(vm_id=vm_id, name=vm_id, snapshot_id=snapshot_id,
                    disks=[DiskRecord(disk_id='disk-' + vm_id, base_id=base)])


def make_run(backups, wait_timeout=1.0):
    args = argparse.Namespace(mastervol='vmstore', slave='root@dr.example.com',
                              slavevol='vmstore-dr', vm=[], exclude=[],
                              require_quiesce=False)
    run = vmbackup.Run(args, settings(wait_timeout), vmbackup.Stop())
    run.plan = Plan(backups=list(backups), snapshot_description='vmbackup vmstore')
    return run


# Removal -----------------------------------------------------------------------

def removal_of(engine, backups, wait_timeout=1.0):
    targets = [(b, b.snapshot_id) for b in backups]
    return vmbackup.Removal(engine, targets, settings(wait_timeout),
                            Plan(backups=list(backups)))


def test_a_removal_waits_until_every_snapshot_is_gone():
    engine = Engine()
    backups = [backup('vm%d' % n, 'snap%d' % n) for n in range(3)]
    for b in backups:
        engine.add_vm(b.vm_id, {}, {b.snapshot_id: OK})
    assert removal_of(engine, backups).wait() == []
    assert all(not vm['snapshots'] for vm in engine.vms.values())
    assert sorted(engine.removals) == ['snap0', 'snap1', 'snap2']


def test_a_removal_refused_while_the_vm_is_busy_is_sent_again():
    engine = Engine()
    b = backup('vm', 'snap')
    engine.add_vm('vm', {}, {'snap': OK})
    engine.script['snap'] = ['refuse', 'refuse', 'merge']
    assert removal_of(engine, [b]).wait() == []
    assert engine.removals == ['snap'] * 3


def test_a_failed_merge_is_removed_again():
    engine = Engine()
    b = backup('vm', 'snap')
    engine.add_vm('vm', {}, {'snap': OK})
    engine.script['snap'] = ['fail', 'merge']
    assert removal_of(engine, [b]).wait() == []
    assert engine.removals == ['snap', 'snap']


def test_a_merge_that_keeps_failing_is_given_up_after_its_attempts(caplog):
    engine = Engine()
    b = backup('vm', 'snap')
    engine.add_vm('vm', {}, {'snap': OK})
    engine.script['snap'] = ['fail']
    with caplog.at_level('ERROR', logger='vmbackup'):
        assert removal_of(engine, [b]).wait() == [(b, 'snap')]
    assert engine.removals == ['snap'] * vmbackup.REMOVE_ATTEMPTS
    assert ('VM vm: snapshot snap could not be removed: its merge failed %d times'
            % vmbackup.REMOVE_ATTEMPTS) in caplog.text


def test_a_snapshot_already_gone_is_not_left():
    engine = Engine()
    b = backup('vm', 'snap')
    engine.add_vm('vm', {}, {'snap': OK})
    engine.script['snap'] = ['gone']
    assert removal_of(engine, [b]).wait() == []


def test_the_snapshot_of_a_vm_deleted_meanwhile_is_not_left():
    engine = Engine()
    b = backup('vm', 'snap')
    engine.add_vm('vm', {}, {'snap': OK})
    removal = removal_of(engine, [b])
    removal.send()
    del engine.vms['vm']
    assert removal.wait() == []


def test_a_merge_that_never_ends_is_left_at_the_deadline(caplog):
    engine = Engine()
    b = backup('vm', 'snap')
    engine.add_vm('vm', {}, {'snap': OK})
    engine.remove = lambda vm_id, sid, merging=10 ** 9, remove=engine.remove: \
        remove(vm_id, sid, merging)
    with caplog.at_level('ERROR', logger='vmbackup'):
        assert removal_of(engine, [b], wait_timeout=0.0005).wait() == [(b, 'snap')]
    assert ('could not be removed: not gone after 0.0005 minutes ([snapshot] '
            'wait_timeout)') in caplog.text


def test_remove_snapshots_fails_the_run_for_each_one_left():
    engine = Engine()
    backups = [backup('good', 'snap1'), backup('stuck', 'snap2')]
    engine.add_vm('good', {}, {'snap1': OK})
    engine.add_vm('stuck', {}, {'snap2': OK})
    engine.script['snap2'] = ['fail']
    run = make_run(backups)
    left = vmbackup.remove_snapshots(run, engine, backups)
    assert left == [(backups[1], 'snap2')]
    assert run.failures == ["VM stuck: snapshot snap2 'vmbackup vmstore' is still "
                            'there: remove it in the Administration Portal']


# wait_for_snapshots --------------------------------------------------------------

def test_a_ready_snapshot_gives_the_overlays_and_the_consistency():
    engine = Engine()
    quiet, agentless = backup('quiet', 'snap1'), backup('agentless', 'snap2')
    engine.add_vm('quiet', {'disk-quiet': 'overlay1'}, {'snap1': OK})
    engine.add_vm('agentless', {'disk-agentless': 'overlay2'}, {'snap2': OK})
    engine.guest['agentless'] = False
    run = make_run([quiet, agentless])
    vmbackup.wait_for_snapshots(run, engine, [quiet, agentless])
    assert run.failures == []
    assert quiet.snapshot_ready and agentless.snapshot_ready
    assert quiet.disks[0].overlay_id == 'overlay1'
    assert (quiet.consistency, agentless.consistency) == (
        vmbackup.QUIESCED, vmbackup.CRASH_CONSISTENT)
    assert agentless.consistency_reason == vmbackup.NO_GUEST_AGENT


def test_a_disk_whose_image_did_not_change_gets_no_overlay():
    engine = Engine()
    b = backup('vm', 'snap', base='same')
    engine.add_vm('vm', {'disk-vm': 'same'}, {'snap': OK})
    run = make_run([b])
    vmbackup.wait_for_snapshots(run, engine, [b])
    assert b.snapshot_ready and b.disks[0].overlay_id is None


def test_a_snapshot_is_waited_on_while_locked_and_a_failed_look_is_retried():
    engine = Engine()
    b = backup('vm', 'snap')
    engine.add_vm('vm', {'disk-vm': 'overlay'}, {'snap': LOCKED})
    engine.answers['vm'] = [fault(500, 'busy')]
    run = make_run([b])
    looks = []
    real = engine.look

    def look(vm_id):
        looks.append(vm_id)
        if len(looks) == 3:
            engine.vms['vm']['snapshots']['snap'] = OK
        return real(vm_id)
    engine.look = look
    vmbackup.wait_for_snapshots(run, engine, [b])
    assert run.failures == [] and b.snapshot_ready
    assert len(looks) == 3


@pytest.mark.parametrize('what, failure', [
    ('dropped', 'VM vm: the snapshot failed (the engine dropped it)'),
    ('vm gone', 'VM vm disappeared while its snapshot was being created'),
    ('locked', 'VM vm: the snapshot was not ready after 0.0005 minutes '
               '([snapshot] wait_timeout)'),
])
def test_a_snapshot_that_is_not_ready_fails_its_vm_only(what, failure):
    engine = Engine()
    good, bad = backup('good', 'snap1'), backup('vm', 'snap2')
    engine.add_vm('good', {'disk-good': 'overlay'}, {'snap1': OK})
    engine.add_vm('vm', {'disk-vm': 'overlay'}, {'snap2': LOCKED})
    if what == 'dropped':
        del engine.vms['vm']['snapshots']['snap2']
    elif what == 'vm gone':
        del engine.vms['vm']
    run = make_run([good, bad], wait_timeout=0.0005 if what == 'locked' else 1.0)
    vmbackup.wait_for_snapshots(run, engine, [good, bad])
    assert run.failures == [failure]
    assert good.snapshot_ready and not bad.snapshot_ready
    assert bad.snapshot_id == (None if what == 'dropped' else 'snap2')


def test_require_quiesce_fails_a_crash_consistent_copy():
    b = backup('vm', 'snap')
    b.snapshot_ready, b.consistency = True, vmbackup.CRASH_CONSISTENT
    b.consistency_reason = vmbackup.NO_GUEST_AGENT
    run = make_run([b])
    run.settings.require_quiesce = True
    vmbackup.report_consistency(run, [b])
    (failure,) = run.failures
    assert failure.startswith('VM vm not backed up: its snapshot is crash-consistent only')
    assert b.disks[0].problem == 'its snapshot is crash-consistent only'
    run = make_run([b])
    vmbackup.report_consistency(run, [b])
    assert run.failures == [] and run.notes == ['crash-consistent only: vm']
