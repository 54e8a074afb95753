"""Verify's parsers and its checks of a copy (parse_ovf, Verifier.domain,
Verifier.image_problems), on a domain laid out in a temporary directory as
vdsm lays one out (images/<disk>/<volume> with its .meta) and checked with
the real qemu-img."""
import io
import json
import os
import shutil
import subprocess
import tarfile
import uuid

import pytest

import vmbackup
from vmbackup import DiskRecord, VmBackup

BLANK = vmbackup.BLANK_UUID
LAST_UPDATED = 'Thu Dec 03 01:30:02 UTC 2026'
QEMU_IMG = shutil.which('qemu-img')
needs_qemu_img = pytest.mark.skipif(QEMU_IMG is None, reason='needs qemu-img')


def new_id():
    return str(uuid.uuid4())


def meta(sd_id, image, **values):
    """A .meta as vdsm writes it: sorted KEY=value lines, then EOF."""
    fields = dict(CAP='1048576', CTIME='1', DESCRIPTION='{}', DISKTYPE='DATA',
                  DOMAIN=sd_id, FORMAT='RAW', GEN='0', IMAGE=image, LEGALITY='LEGAL',
                  PUUID=BLANK, SEQ='0', TYPE='SPARSE', VOLTYPE='LEAF')
    fields.update(values)
    return ''.join('%s=%s\n' % item for item in sorted(fields.items())) + 'EOF\n'


def ovf(name, files=(), active=(), snapshots=(), template=False):
    """A VM's (or template's) OVF as OvfVmWriter writes the parts verify
    reads: References/File href DISK/VOLUME, Disk fileRef and
    vm_snapshot_id, the Snapshot list, TemplateType for a template."""
    active_id = new_id()
    snapshot_list = [(active_id, 'ACTIVE', 'Active VM')] + list(snapshots)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/">'
        '<References>%s</References>'
        '<Section><Disk ovf:diskId="x"/>%s</Section>'
        '<Content><Name>%s</Name>%s<Section>%s</Section>'
        '<Section><Item><Name>a disk</Name></Item></Section></Content>'
        '</ovf:Envelope>' % (
            ''.join('<File ovf:href="%s" ovf:id="x"/>' % href for href in files),
            ''.join('<Disk ovf:fileRef="%s" ovf:vm_snapshot_id="%s"/>'
                    % (href, active_id) for href in active),
            name,
            '<TemplateType>TEMPLATE</TemplateType>' if template else '',
            ''.join('<Snapshot ovf:id="%s"><Type>%s</Type><Description>%s'
                    '</Description></Snapshot>' % snapshot
                    for snapshot in snapshot_list))).encode()


class Domain:
    """A storage domain at the slave: images of volumes with their .meta,
    and one OVF store volume."""

    def __init__(self, root):
        self.root = str(root)
        self.sd_id = new_id()
        self.store = (new_id(), new_id())
        self.ovfs = {}

    def image_dir(self, disk_id):
        path = os.path.join(self.root, self.sd_id, 'images', disk_id)
        os.makedirs(path, exist_ok=True)
        return path

    def raw(self, disk_id, volume_id, **values):
        image = self.image_dir(disk_id)
        with open(os.path.join(image, volume_id), 'wb') as data:
            data.truncate(1 << 20)
        self.write_meta(disk_id, volume_id, meta(self.sd_id, disk_id, **values))

    def qcow2(self, disk_id, volume_id, parent, **values):
        image = self.image_dir(disk_id)
        subprocess.check_call([QEMU_IMG, 'create', '-q', '-f', 'qcow2', '-b', parent,
                               '-F', 'raw', volume_id], cwd=image)
        self.write_meta(disk_id, volume_id, meta(
            self.sd_id, disk_id, FORMAT='COW', PUUID=parent, **values))

    def write_meta(self, disk_id, volume_id, text):
        with open(os.path.join(self.image_dir(disk_id), volume_id + '.meta'), 'w') as out:
            out.write(text)

    def vm(self, vm_id, ovf_text):
        self.ovfs[vm_id] = ovf_text

    def write_store(self, updated=True):
        buffer = io.BytesIO()
        members = [('info.json', json.dumps({'Last Updated': LAST_UPDATED}).encode())]
        members += [(vm_id + '.ovf', text) for vm_id, text in sorted(self.ovfs.items())]
        with tarfile.open(fileobj=buffer, mode='w', format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                member = tarfile.TarInfo(name)
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
        data = buffer.getvalue()
        disk_id, volume_id = self.store
        with open(os.path.join(self.image_dir(disk_id), volume_id), 'wb') as out:
            out.write(data)
        description = {'Updated': updated, 'Size': len(data), 'Last Updated': LAST_UPDATED,
                       'Disk Description': 'OVF_STORE'}
        self.write_meta(disk_id, volume_id, meta(
            self.sd_id, disk_id, DISKTYPE='OVFS',
            DESCRIPTION=json.dumps(description, separators=(',', ':'))))

    def verifier(self):
        return vmbackup.Verifier(self.root, QEMU_IMG, vmbackup.Stop())

    def verify(self, backups=(), skip=(), volumes=None):
        self.write_store()
        verifier = self.verifier()
        results = verifier.domain(self.sd_id, volumes, backups, skip)
        return verifier, results


def details(verifier):
    return [(what, check, detail) for what, check, detail in verifier.failures]


# parse_ovf -------------------------------------------------------------------

def test_parse_ovf_reads_the_name_volumes_snapshots_and_active_volumes():
    disk, base, leaf, snapshot = new_id(), new_id(), new_id(), new_id()
    text = ovf('web', files=['%s/%s' % (disk, base), '%s/%s' % (disk, leaf),
                             'not-a-uuid/%s' % base],
               active=['%s/%s' % (disk, leaf)],
               snapshots=[(snapshot, 'REGULAR', 'before the upgrade')])
    vm = vmbackup.parse_ovf('vm-1', text)
    assert (vm.vm_id, vm.name, vm.template, vm.template_id) == ('vm-1', 'web', False, None)
    assert vm.volumes == {disk: [base, leaf]}
    assert vm.active == {disk: leaf}
    assert [kind for _, kind, _ in vm.snapshots] == ['ACTIVE', 'REGULAR']
    assert vm.snapshots[1] == (snapshot, 'REGULAR', 'before the upgrade')


def test_parse_ovf_tells_a_template_and_the_template_of_a_vm():
    template = vmbackup.parse_ovf('t-1', ovf('rhel9', template=True))
    assert template.template and template.name == 'rhel9'
    text = ovf('thin').replace(b'<Name>thin</Name>', b'<Name>thin</Name>'
                               b'<TemplateId> t-1 </TemplateId>')
    thin = vmbackup.parse_ovf('vm-2', text)
    assert not thin.template and thin.template_id == 't-1'


def test_parse_ovf_without_a_name_or_an_active_snapshot_keeps_the_id_and_no_active():
    text = (b'<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/">'
            b'<Content><Name></Name></Content></ovf:Envelope>')
    vm = vmbackup.parse_ovf('vm-3', text)
    assert (vm.name, vm.active, vm.snapshots, vm.volumes) == ('vm-3', {}, [], {})


def test_an_ovf_that_is_not_xml_is_a_meta_error_naming_the_vm():
    with pytest.raises(vmbackup.MetaError) as raised:
        vmbackup.parse_ovf('vm-4', b'<ovf:Envelope')
    assert 'the OVF of VM vm-4 is not XML' in str(raised.value)


def test_read_ovf_tar_keeps_only_the_ovf_files_and_refuses_what_is_no_tar():
    domain = Domain('/nonexistent')
    domain.vm('vm-1', ovf('web'))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w') as tar:
        for name in ('info.json', 'vm-1.ovf', 'ovf'):
            member = tarfile.TarInfo(name)
            member.size = len(domain.ovfs['vm-1'])
            tar.addfile(member, io.BytesIO(domain.ovfs['vm-1']))
    assert list(vmbackup.read_ovf_tar(buffer.getvalue())) == ['vm-1']
    with pytest.raises(vmbackup.MetaError):
        vmbackup.read_ovf_tar(b'not a tar')


# Verifier.domain -------------------------------------------------------------

def one_vm(domain, **ovf_fields):
    """A VM with one raw disk of one volume; return (vm id, disk id, volume id)."""
    vm_id, disk_id, volume_id = new_id(), new_id(), new_id()
    domain.raw(disk_id, volume_id)
    fields = dict(files=['%s/%s' % (disk_id, volume_id)],
                  active=['%s/%s' % (disk_id, volume_id)])
    fields.update(ovf_fields)
    domain.vm(vm_id, ovf('web', **fields))
    return vm_id, disk_id, volume_id


@needs_qemu_img
@pytest.mark.parametrize('listed', [True, False], ids=['stores listed', 'stores given'])
def test_a_good_vm_is_verified_restorable(tmp_path, listed):
    domain = Domain(tmp_path)
    _, disk_id, _ = one_vm(domain)
    verifier, results = domain.verify(volumes=None if listed else [domain.store])
    assert results == {disk_id: True} and verifier.failures == []
    assert verifier.summary() == '1 disk of 1 VM verified restorable'


@needs_qemu_img
def test_a_thin_vm_on_its_templates_shared_volume_is_verified_with_the_template(tmp_path):
    domain = Domain(tmp_path)
    template_id, template_disk, shared = new_id(), new_id(), new_id()
    domain.raw(template_disk, shared, VOLTYPE='SHARED')
    domain.vm(template_id, ovf('rhel9', files=['%s/%s' % (template_disk, shared)],
                               template=True))
    vm_id, disk_id, leaf = new_id(), new_id(), new_id()
    image = domain.image_dir(disk_id)
    for suffix in ('', '.meta'):      # vdsm's Volume.share: hard links
        os.link(os.path.join(domain.image_dir(template_disk), shared + suffix),
                os.path.join(image, shared + suffix))
    domain.qcow2(disk_id, leaf, shared)
    domain.vm(vm_id, ovf('thin', files=['%s/%s' % (disk_id, leaf)],
                         active=['%s/%s' % (disk_id, leaf)]))
    verifier, results = domain.verify()
    assert details(verifier) == []
    assert results == {template_disk: True, disk_id: True}
    assert verifier.summary() == ('1 disk of 1 VM and 1 disk of 1 template verified '
                                  'restorable')


@needs_qemu_img
def test_an_ovf_store_listing_a_backup_snapshot_fails_its_vm(tmp_path):
    domain = Domain(tmp_path)
    snapshot = new_id()
    one_vm(domain, snapshots=[(snapshot, 'REGULAR', 'GLUSTER-Geo-rep-snapshot vmstore')])
    verifier, _ = domain.verify()
    (failure,) = details(verifier)
    assert failure[:2] == ('VM web', 'OVF store')
    assert 'it lists the backup snapshot %s' % snapshot in failure[2]


def test_a_domain_without_a_written_ovf_store_fails_and_checks_nothing(tmp_path):
    domain = Domain(tmp_path)
    one_vm(domain)
    domain.write_store(updated=False)
    verifier = domain.verifier()
    assert verifier.domain(domain.sd_id, [domain.store]) == {}
    (failure,) = details(verifier)
    assert failure[1] == 'OVF store' and 'no written OVF store found (1 ' in failure[2]


def test_an_unreadable_ovf_store_listing_fails_the_domain(tmp_path):
    verifier = vmbackup.Verifier(str(tmp_path), QEMU_IMG, vmbackup.Stop())
    sd_id = new_id()
    assert verifier.domain(sd_id) == {}
    (failure,) = details(verifier)
    assert failure[:2] == ('storage domain %s' % sd_id, 'OVF store')


@needs_qemu_img
def test_a_backed_up_disk_is_checked_against_the_ovf_store_and_its_overlay(tmp_path):
    domain = Domain(tmp_path)
    vm_id, disk_id, volume_id = one_vm(domain)
    overlay = new_id()
    with open(os.path.join(domain.image_dir(disk_id), overlay), 'wb'):
        pass      # this run's overlay, still there
    missing = new_id()
    backup = VmBackup(vm_id=vm_id, name='web', snapshot_id=new_id(), disks=[
        DiskRecord(disk_id=disk_id, sd_id=domain.sd_id, base_id=new_id(),
                   overlay_id=overlay),
        DiskRecord(disk_id=missing, sd_id=domain.sd_id, base_id=new_id()),
        DiskRecord(disk_id=new_id(), sd_id=new_id(), base_id=new_id())])
    verifier, results = domain.verify(backups=[backup])
    assert results == {disk_id: False, missing: False}
    checks = {(what, check) for what, check, _ in details(verifier)}
    assert checks == {('VM web disk %s' % disk_id, 'OVF store'),
                      ('VM web disk %s' % disk_id, 'overlay'),
                      ('VM web disk %s' % missing, 'OVF store')}
    text = ' '.join(detail for _, _, detail in details(verifier))
    assert 'its active volume is %s, not the base' % volume_id in text
    assert "this run's overlay %s is still there" % overlay in text
    assert 'not in the newest OVF store' in text


@needs_qemu_img
def test_a_skipped_disk_and_a_disk_of_another_domain_are_not_checked(tmp_path):
    domain = Domain(tmp_path)
    _, disk_id, _ = one_vm(domain)
    elsewhere = new_id()
    domain.vm(new_id(), ovf('db', files=['%s/%s' % (elsewhere, new_id())]))
    verifier, results = domain.verify(skip={disk_id})
    assert results == {} and verifier.failures == []


@needs_qemu_img
def test_a_stop_leaves_the_images_not_checked(tmp_path):
    domain = Domain(tmp_path)
    _, disk_id, _ = one_vm(domain)
    domain.write_store()
    verifier = domain.verifier()
    verifier.stop.signal_name = 'SIGTERM'
    verifier.stop.event.set()
    assert verifier.domain(domain.sd_id, [domain.store]) == {disk_id: False}
    (failure,) = details(verifier)
    assert failure[1:] == ('qemu-img', 'not checked: stopped by SIGTERM')


@needs_qemu_img
def test_an_image_the_ovf_store_does_not_name_fails_the_dr_import_when_vdsm_cannot_read_it(
        tmp_path):
    domain = Domain(tmp_path)
    one_vm(domain)
    broken, volume = new_id(), new_id()
    domain.raw(broken, volume)
    domain.write_meta(broken, volume, 'NONE=#####\nEOF\n')
    two = new_id()
    domain.raw(two, new_id())
    domain.raw(two, new_id())           # of two volumes: the engine skips it
    verifier, _ = domain.verify()
    (failure,) = details(verifier)
    assert failure[:2] == ('image %s' % broken, 'DR import')
    assert 'a cleared .meta' in failure[2]


# Verifier.image_problems -----------------------------------------------------

def problems_of(domain, disk_id, named, template=False, template_images=()):
    return domain.verifier().image_problems(domain.sd_id, disk_id, named, template,
                                            template_images)


def test_an_image_directory_that_cannot_be_listed_is_one_problem(tmp_path):
    domain = Domain(tmp_path)
    assert problems_of(domain, new_id(), []) == [
        ('volumes', 'cannot list the image directory: No such file or directory')]


@pytest.mark.parametrize('values, check, text', [
    (dict(LEGALITY='ILLEGAL'), 'chain', 'says LEGALITY=ILLEGAL'),
    (dict(FORMAT='VMDK'), 'chain', 'says FORMAT=VMDK'),
    (dict(CTIME='soon'), 'chain', 'CTIME=soon, not a number'),
    (dict(VOLTYPE='INTERNAL'), 'chain', 'no LEAF volume'),
    (dict(VOLTYPE='SHARED'), 'chain', "one SHARED volume: a template's image"),
], ids=['illegal', 'unknown format', 'bad number', 'no leaf', 'a template image'])
def test_a_volume_whose_meta_vdsm_would_refuse_is_a_chain_problem(tmp_path, values,
                                                                     check, text):
    domain = Domain(tmp_path)
    disk_id, volume_id = new_id(), new_id()
    domain.raw(disk_id, volume_id, **values)
    found = problems_of(domain, disk_id, [volume_id])
    assert any(kind == check and text in detail for kind, detail in found), found


def test_a_volume_without_data_named_volumes_missing_and_overlays_are_told(tmp_path):
    domain = Domain(tmp_path)
    disk_id, base, overlay, named = new_id(), new_id(), new_id(), new_id()
    domain.raw(disk_id, base, VOLTYPE='INTERNAL')
    domain.write_meta(disk_id, overlay, meta(domain.sd_id, disk_id, PUUID=base))
    domain.write_meta(disk_id, 'x' * 36 + '.meta', 'junk')     # no UUID: not a volume
    found = problems_of(domain, disk_id, [base, named])
    assert ('volumes', 'volume %s has a .meta but no data file' % overlay) in found
    assert ('volumes', 'volume %s named by the OVF store is missing' % named) in found
    assert ('overlay', 'volume %s is not in the OVF store (an overlay left by a '
            'backup?)' % overlay) in found


def test_an_unreadable_meta_is_a_chain_problem(tmp_path):
    domain = Domain(tmp_path)
    disk_id, volume_id = new_id(), new_id()
    domain.raw(disk_id, volume_id)
    domain.write_meta(disk_id, volume_id, 'CAP=1\n')       # no EOF line
    found = problems_of(domain, disk_id, [volume_id])
    assert found and all(kind in ('chain', 'volumes') for kind, _ in found)
    assert any(detail.startswith('volume %s: ' % volume_id) for _, detail in found)


def test_a_shared_volume_of_no_template_in_the_ovf_store_is_refused(tmp_path):
    domain = Domain(tmp_path)
    disk_id, shared, leaf, other = new_id(), new_id(), new_id(), new_id()
    domain.raw(disk_id, shared, VOLTYPE='SHARED', IMAGE=other)
    domain.raw(disk_id, leaf, FORMAT='COW', PUUID=shared)
    found = problems_of(domain, disk_id, [leaf])
    assert [kind for kind, _ in found] == ['template']
    assert 'TEMPLATE_DOES_NOT_EXIST' in found[0][1]
    found = problems_of(domain, disk_id, [leaf], template_images={other})
    assert found == [('template', "volume %s is not in its template's image %s"
                      % (shared, other))]


def test_a_template_image_must_hold_one_shared_volume(tmp_path):
    domain = Domain(tmp_path)
    disk_id, volume_id = new_id(), new_id()
    domain.raw(disk_id, volume_id)       # a LEAF, not SHARED
    found = problems_of(domain, disk_id, [volume_id], template=True)
    assert found == [('chain', "a template's image holds one SHARED volume, this "
                      'one %s' % volume_id)]


@needs_qemu_img
def test_qemu_img_disagreeing_with_the_meta_is_told(tmp_path):
    domain = Domain(tmp_path)
    disk_id, base, leaf = new_id(), new_id(), new_id()
    domain.raw(disk_id, base, VOLTYPE='INTERNAL', CAP='2097152')
    domain.qcow2(disk_id, leaf, base, VOLTYPE='LEAF')
    found = problems_of(domain, disk_id, [base, leaf])
    assert found == [('qemu-img info', 'volume %s has virtual size 1048576, its '
                      '.meta says 2097152' % base)]
    domain.write_meta(disk_id, base, meta(domain.sd_id, disk_id, VOLTYPE='INTERNAL',
                                          FORMAT='COW'))
    found = problems_of(domain, disk_id, [base, leaf])
    assert ('qemu-img info', 'volume %s is raw, its .meta says COW' % base) in found
