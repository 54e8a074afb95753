"""The OVF store kept before the snapshots: read from the master as the
fake engine writes it (tests/support/fake_engine.py, in this process and
not serving: only its OVF store write, ProcessOvfUpdateForStorageDomain-
Command's as the fake's docstring cites), a store caught half written or
not the engine's refused, the VMs that carry another volume's backup
snapshot left out, and Java's Last Updated read."""
import argparse
import datetime
import io
import json
import logging
import tarfile

import ovirtsdk4.types as types
import pytest

import vmbackup
from support.fake_engine import FakeEngine


class Domain:
    """A storage domain of the fake engine in a temporary directory."""

    def __init__(self, root):
        self.root = root
        self.engine = FakeEngine(ca=None, user='admin@internal', password='secret')
        self.sd_id = self.engine.add_storage_domain('vmstore-sd', str(root), type='glusterfs',
                                                    address='g1', path='/vmstore')
        self.disk_id, self.volume_id = self.engine.ovf_stores(self.sd_id)[0]

    def path(self, suffix=''):
        return self.root / self.sd_id / 'images' / self.disk_id / (self.volume_id + suffix)

    def sdk_vms(self):
        """The fake's VMs as the SDK gives them to select_backups."""
        return [types.Vm(id=vm['id'], name=vm['name'], snapshots=[], disk_attachments=[
            types.DiskAttachment(disk=types.Disk(
                id=disk['id'], image_id=disk['image_id'],
                storage_type=types.DiskStorageType.IMAGE,
                storage_domains=[types.StorageDomain(id=self.sd_id)]))
            for disk in vm['disks']])
            for vm in map(self.engine.vm, self.engine.vm_names())]

    def read(self):
        return vmbackup.read_ovf_store(str(self.root), self.sd_id, self.disk_id,
                                       self.volume_id)

    def description(self):
        values = vmbackup.parse_meta(self.path('.meta').read_bytes(), 'meta')
        return json.loads(values['DESCRIPTION'])

    def describe(self, **changes):
        """Rewrite the .meta's DESCRIPTION with changes (None: drop the key)."""
        description = self.description()
        for key, value in changes.items():
            if value is None:
                description.pop(key, None)
            else:
                description[key] = value
        lines = [b'DESCRIPTION=' + json.dumps(description).encode()
                 if line.startswith(b'DESCRIPTION=') else line
                 for line in self.path('.meta').read_bytes().split(b'\n')]
        self.path('.meta').write_bytes(b'\n'.join(lines))


@pytest.fixture
def domain(tmp_path):
    return Domain(tmp_path)


def test_a_written_store_is_read_with_its_meta_its_tar_and_its_date(domain):
    domain.engine.add_vm('web', disks=[dict(sd=domain.sd_id)])
    domain.engine.write_ovf_stores(domain.sd_id)
    store = domain.read()
    written = domain.engine.ovf_writes[-1]
    assert (store.sd_id, store.disk_id, store.volume_id) == (
        domain.sd_id, domain.disk_id, domain.volume_id)
    assert store.meta == domain.path('.meta').read_bytes()
    assert store.data == domain.path().read_bytes()[:len(store.data)]
    assert len(store.data) == domain.description()['Size']
    assert store.last_updated == written['last_updated']
    assert vmbackup.ovf_info(store.data)['Last Updated'] == written['last_updated']
    (vm_id,) = written['vms']
    assert vmbackup.read_ovf_tar(store.data)[vm_id].name == 'web'


def test_a_store_the_engine_never_wrote_is_none(domain):
    # as the fake makes a new store volume, before its first write
    # (_write_ovf_volume), and as a write leaves it until it ends
    domain.describe(Updated=False, Size=None)
    assert domain.read() is None
    domain.engine.write_ovf_stores(domain.sd_id)
    domain.describe(Size=None)
    assert domain.read() is None
    domain.engine.write_ovf_stores(domain.sd_id)
    assert domain.read() is not None


def test_a_size_given_as_digits_is_read_as_bytes(domain):
    domain.engine.write_ovf_stores(domain.sd_id)
    size = domain.description()['Size']
    domain.describe(Size=str(size))
    assert len(domain.read().data) == size


@pytest.mark.parametrize('size, problem', [
    (-1, 'its .meta gives Size -1, not a number of bytes'),
    ('lots', 'its .meta gives Size "lots", not a number of bytes'),
    (True, 'its .meta gives Size true, not a number of bytes'),
    (1.5, 'its .meta gives Size 1.5, not a number of bytes'),
    (10 ** 9, 'holds 1048576 bytes, its .meta says 1000000000'),
])
def test_a_size_that_is_not_the_volumes_is_refused(domain, size, problem):
    domain.engine.write_ovf_stores(domain.sd_id)
    domain.describe(Size=size)
    with pytest.raises(vmbackup.MetaError) as raised:
        domain.read()
    assert str(raised.value) == 'OVF store %s%s%s' % (
        domain.volume_id, ': ' if 'gives' in problem else ' ', problem)


def test_a_tar_that_is_not_the_one_its_meta_describes_is_refused(domain):
    # caught half written, or stale in a client's cache: info.json names
    # another write than the .meta's Last Updated
    domain.engine.write_ovf_stores(domain.sd_id)
    domain.describe(**{'Last Updated': 'Mon Dec 07 01:00:00 UTC 2026'})
    with pytest.raises(vmbackup.MetaError, match=r'holds the tar of \w{3} .*, its .meta says '
                                                 r'Mon Dec 07 01:00:00 UTC 2026$'):
        domain.read()


def test_a_volume_whose_meta_is_no_ovf_stores_is_refused(domain):
    domain.engine.add_vm('web', disks=[dict(sd=domain.sd_id)])
    disk = domain.engine.vm('web')['disks'][0]
    with pytest.raises(vmbackup.MetaError, match="is not an OVF store's"):
        vmbackup.read_ovf_store(str(domain.root), domain.sd_id, disk['id'], disk['image_id'])


def test_an_id_that_is_not_a_uuid_reads_nothing(domain):
    with pytest.raises(vmbackup.MetaError, match="'../x' is not a UUID"):
        vmbackup.read_ovf_store(str(domain.root), domain.sd_id, '../x', domain.volume_id)


def test_a_store_rewritten_while_it_is_read_is_refused_after_three_reads(domain, monkeypatch):
    domain.engine.write_ovf_stores(domain.sd_id)
    reads = []
    original = vmbackup.read_meta

    def read_meta(path, root=None):
        data, values = original(path, root)
        reads.append(path)
        return data + b'#' * len(reads), values      # each read another write

    monkeypatch.setattr(vmbackup, 'read_meta', read_meta)
    with pytest.raises(vmbackup.MetaError, match='kept changing while it was read'):
        domain.read()
    assert len(reads) == 6


# the tar's info.json -------------------------------------------------------------------

def tar_of(*members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w', format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize('data, problem', [
    (b'', 'has no readable info.json'),
    (b'not a tar' * 100, 'has no readable info.json'),
    (tar_of(('metadata.json', b'{}')), 'has no readable info.json'),
    (tar_of(('info.json', b'{not json')), 'has no readable info.json'),
    (tar_of(('info.json', b'\xff\xfe')), 'has no readable info.json'),
    (tar_of(('info.json', b'["a list"]')), "info.json is not an object"),
])
def test_a_tar_without_a_readable_info_json_is_refused(data, problem):
    with pytest.raises(vmbackup.MetaError, match=problem):
        vmbackup.ovf_info(data)


# Java's Date.toString() ------------------------------------------------------------

@pytest.mark.parametrize('text, date', [
    ('Thu Dec 03 01:30:02 UTC 2026', datetime.datetime(2026, 12, 3, 1, 30, 2)),
    ('Mon Feb 29 23:59:59 CET 2028', datetime.datetime(2028, 2, 29, 23, 59, 59)),
    ('Thu Dec 03 01:30:02 2026', None),           # no zone: not Date.toString()
    ('Thu Dec 32 01:30:02 UTC 2026', None),
    ('yesterday', None),
    ('', None),
    (None, None),
])
def test_last_updated_is_read_as_javas_date_without_its_zone(text, date):
    assert vmbackup.java_date(text) == date


# the VMs that carry another volume's backup snapshot --------------------------------

def leave_out_run(domain, chosen):
    args = argparse.Namespace(mastervol='vmstore')
    run = vmbackup.Run(args, vmbackup.Settings(), vmbackup.Stop())
    backups, _ = vmbackup.select_backups(
        [vm for vm in domain.sdk_vms() if vm.name in chosen],
        {domain.sd_id: 'vmstore-sd'}, set(), set(), 'vmstore')
    run.plan = vmbackup.Plan(backups=backups)
    return run




def test_a_vm_with_another_volumes_backup_snapshot_is_left_out_of_plan_and_store(
        domain, caplog):
    for name in ('web', 'db', 'app'):
        domain.engine.add_vm(name, disks=[dict(sd=domain.sd_id)])
    theirs = domain.engine.add_snapshot('db', 'GLUSTER-Geo-rep-snapshot data')
    domain.engine.add_snapshot('web', 'GLUSTER-Geo-rep-snapshot vmstore')   # ours: stale
    domain.engine.add_snapshot('app', 'before the upgrade')                 # a user's
    domain.engine.write_ovf_stores(domain.sd_id)
    store = domain.read()
    run = leave_out_run(domain, chosen={'web', 'db', 'app'})
    with caplog.at_level(logging.WARNING, logger='vmbackup'):
        (kept,) = vmbackup.leave_out_vms(run, [store])
    assert [b.name for b in run.plan.backups] == ['app', 'web']
    assert sorted(vm.name for vm in vmbackup.read_ovf_tar(kept.data).values()) == [
        'app', 'web']
    assert json.loads(vmbackup.parse_meta(kept.meta, 'meta')['DESCRIPTION'])['Size'] == \
        len(kept.data)
    assert kept.last_updated == store.last_updated
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith('VM db left out of this backup of volume vmstore: it carries '
                              'the backup snapshot %s of volume data, ' % theirs)
    assert 'not snapshotted, its disks here copied as they are' in warning
    assert run.notes == ["left out (another volume's backup snapshot on them): db"]


def test_a_vm_not_chosen_is_still_dropped_from_the_store(domain, caplog):
    for name in ('web', 'db'):
        domain.engine.add_vm(name, disks=[dict(sd=domain.sd_id)])
    domain.engine.add_snapshot('db', 'GLUSTER-Geo-rep-snapshot data')
    domain.engine.write_ovf_stores(domain.sd_id)
    run = leave_out_run(domain, chosen={'web'})
    with caplog.at_level(logging.WARNING, logger='vmbackup'):
        (kept,) = vmbackup.leave_out_vms(run, [domain.read()])
    assert [b.name for b in run.plan.backups] == ['web']
    assert [vm.name for vm in vmbackup.read_ovf_tar(kept.data).values()] == ['web']
    assert "; not chosen, and left out of this volume's OVF store" in caplog.text


def test_without_another_volumes_snapshot_the_stores_are_kept_as_they_are(domain):
    domain.engine.add_vm('web', disks=[dict(sd=domain.sd_id)])
    domain.engine.add_snapshot('web', 'GLUSTER-Geo-rep-snapshot')     # the 2016 tool's
    domain.engine.write_ovf_stores(domain.sd_id)
    store = domain.read()
    unreadable = vmbackup.OvfStore(sd_id='sd', disk_id='d', volume_id='v', meta=b'',
                                   data=b'not a tar')
    run = leave_out_run(domain, chosen={'web'})
    kept = vmbackup.leave_out_vms(run, [store, unreadable])
    assert kept[0] is store and kept[1] is unreadable
    assert [b.name for b in run.plan.backups] == ['web'] and run.notes == []


@pytest.mark.parametrize('meta', [b'CAP=1\nEOF\n', b'DESCRIPTION={not json\nEOF\n'])
def test_a_store_whose_meta_cannot_be_edited_is_returned_as_it_is(meta):
    store = vmbackup.OvfStore(sd_id='sd', disk_id='d', volume_id='v', meta=meta,
                              data=tar_of(('info.json', b'{}'), ('a.ovf', b'<x/>')))
    assert vmbackup.ovf_store_without(store, {'a'}) is store
