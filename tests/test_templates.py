"""Templates: a template's image (one SHARED volume) and thin VMs made from
it (the template's volume hard-linked at the bottom of the VM's image, the
VM's own volumes on it), backed up and verified through the fake engine and
the fake gluster sites; the OVF store holds the templates' OVFs too."""
import importlib.util
import os
import re

import pytest

from support.site import VMBACKUP, assert_invariants, needs_root, tree

pytestmark = needs_root

spec = importlib.util.spec_from_file_location('vmbackup_under_test', str(VMBACKUP))
vmbackup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vmbackup)


def path(site, root, disk_id, volume_id, suffix=''):
    return os.path.join(str(root), site.sd_id, 'images', disk_id, volume_id + suffix)


def meta_of(file):
    return dict(line.split('=', 1) for line in
                open(file).read().split('EOF')[0].splitlines() if '=' in line)


def build(site):
    """tpl: a template with a raw disk; thin: a VM made from it; web: a VM
    of its own; deep: a VM on a qcow2 template, under a user's snapshot.
    Return (tpl's disk view, thin's disk view)."""
    engine = site.engine
    engine.add_template('tpl', disks=[dict(sd=site.sd_id)])
    engine.add_vm('thin', template='tpl')
    site.add_vm('web')
    engine.add_template('tplq', disks=[dict(sd=site.sd_id, format='cow')])
    engine.add_vm('deep', template='tplq')
    engine.add_snapshot('deep', 'before upgrade')
    (template_disk,) = engine.template('tpl')['disks']
    (thin_disk,) = engine.vm('thin')['disks']
    return template_disk, thin_disk


def test_the_fake_shares_the_templates_volume_into_the_vms_image_as_vdsm_does(site):
    template_disk, thin_disk = build(site)
    shared = template_disk['image_id']
    assert thin_disk['template'] == (template_disk['id'], shared)
    for suffix in ('', '.meta', '.lease'):
        own = os.stat(path(site, site.master, template_disk['id'], shared, suffix))
        linked = os.stat(path(site, site.master, thin_disk['id'], shared, suffix))
        assert own.st_ino == linked.st_ino and own.st_nlink == 2
    shared_meta = meta_of(path(site, site.master, thin_disk['id'], shared, '.meta'))
    assert shared_meta['VOLTYPE'] == 'SHARED'
    assert shared_meta['IMAGE'] == template_disk['id']
    (own,) = thin_disk['chain']
    own_meta = meta_of(path(site, site.master, thin_disk['id'], own, '.meta'))
    assert (own_meta['PUUID'], own_meta['VOLTYPE'], own_meta['FORMAT'],
            own_meta['IMAGE']) == (shared, 'LEAF', 'COW', thin_disk['id'])
    # the OVF store has the template's OVF, read as a template
    site.engine.write_ovf_stores(site.sd_id)
    store = vmbackup.newest_ovf_store(str(site.master), site.sd_id,
                                      site.engine.ovf_stores(site.sd_id))
    entities = vmbackup.read_ovf_tar(store.data)
    template = entities[site.engine.template('tpl')['id']]
    assert template.template and template.name == 'tpl'
    assert template.volumes == {template_disk['id']: [shared]}
    thin = entities[site.engine.vm('thin')['id']]
    assert not thin.template and thin.template_id == template.vm_id
    assert thin.volumes == {thin_disk['id']: [own]}


def test_a_template_based_vm_is_backed_up_verified_and_verifies_again(site):
    template_disk, thin_disk = build(site)
    shared = template_disk['image_id']
    result = site.run()
    assert result.code == 0, result.output
    assert_invariants(site, result)
    summary = '3 disks of 3 VMs and 2 disks of 2 templates verified restorable'
    assert 'verify: %s' % summary in result.err
    assert re.search(r'verify: template tpl disk %s: restorable' % template_disk['id'],
                     result.err)
    assert site.engine.events[-1]['severity'] == 'normal'
    # at the slave: the VM's own base is its leaf again, the overlay gone,
    # the template's volume still the one file in both images
    (made,) = [m for m in site.engine.overlays if m['vm'] == 'thin']
    assert made['base'] == thin_disk['image_id']
    assert meta_of(path(site, site.slave, thin_disk['id'], made['base'], '.meta'))[
        'VOLTYPE'] == 'LEAF'
    assert not os.path.exists(path(site, site.slave, thin_disk['id'], made['overlay']))
    assert sorted(os.listdir(os.path.join(str(site.slave), site.sd_id, 'images',
                                          thin_disk['id']))) == sorted(
        v + s for v in (shared, made['base']) for s in ('', '.meta', '.lease'))
    assert os.stat(path(site, site.slave, thin_disk['id'], shared)).st_ino == \
        os.stat(path(site, site.slave, template_disk['id'], shared)).st_ino
    assert meta_of(path(site, site.slave, template_disk['id'], shared, '.meta')) == \
        meta_of(path(site, site.master, template_disk['id'], shared, '.meta'))

    before = tree(site.slave)
    site.engine.stop()
    again = site.run('--verify')
    assert again.code == 0, again.output
    assert summary in again.err
    assert tree(site.slave) == before


# ------------------------------------------- what verify finds wrong with them

def backed_up(site):
    template_disk, thin_disk = build(site)
    result = site.run()
    assert result.code == 0, result.output
    return template_disk, thin_disk


def template_volume_gone(site, template_disk, thin_disk):
    os.unlink(path(site, site.slave, template_disk['id'], template_disk['image_id']))
    return [(template_disk['id'], 'volumes'),
            (thin_disk['id'], 'template', "is not in its template's image")]


def shared_volume_of_no_template(site, template_disk, thin_disk):
    shared = path(site, site.slave, thin_disk['id'], template_disk['image_id'], '.meta')
    other = '11111111' + template_disk['id'][8:]
    text = open(shared).read().replace('IMAGE=%s' % template_disk['id'], 'IMAGE=%s' % other)
    os.unlink(shared)                   # the link only: the template keeps its own
    open(shared, 'w').write(text)
    return [(thin_disk['id'], 'template', "which is no template's in the OVF store")]


def template_says_leaf(site, template_disk, thin_disk):
    vmbackup.set_meta_key(path(site, site.slave, template_disk['id'],
                               template_disk['image_id'], '.meta'), 'VOLTYPE', 'LEAF')
    return [(template_disk['id'], 'chain', 'one SHARED volume'), (thin_disk['id'], 'chain')]


def template_link_gone(site, template_disk, thin_disk):
    for suffix in ('', '.meta', '.lease'):
        os.unlink(path(site, site.slave, thin_disk['id'], template_disk['image_id'], suffix))
    return [(thin_disk['id'], 'chain')]


def a_key_vdsm_requires_missing(site, template_disk, thin_disk):
    (web_disk,) = site.engine.vm('web')['disks']
    meta = path(site, site.slave, web_disk['id'], web_disk['image_id'], '.meta')
    text = open(meta).read()
    open(meta, 'w').write(re.sub(r'(?m)^DISKTYPE=.*\n', '', text))
    return [(web_disk['id'], 'chain', 'no DISKTYPE (vdsm requires it)')]


def lone_volume(site, meta_text, data):
    """An image at the slave that no OVF store names, of one volume."""
    disk_id, volume_id = ('%08x-1111-2222-3333-444444444444' % n for n in (1, 2))
    directory = os.path.join(str(site.slave), site.sd_id, 'images', disk_id)
    os.makedirs(directory)
    open(os.path.join(directory, volume_id), 'wb').write(data)
    open(os.path.join(directory, volume_id + '.lease'), 'wb').write(b'')
    open(os.path.join(directory, volume_id + '.meta'), 'w').write(meta_text % dict(
        sd=site.sd_id, disk=disk_id))
    return disk_id


LONE_META = ('CAP=1024\nCTIME=1\nDESCRIPTION={}\nDISKTYPE=DATA\nDOMAIN=%(sd)s\n'
             'FORMAT=%(format)s\nGEN=0\nIMAGE=%(disk)s\nLEGALITY=LEGAL\nPUUID='
             + vmbackup.BLANK_UUID + '\nSEQ=0\nTYPE=SPARSE\nVOLTYPE=LEAF\nEOF\n')


def an_unregistered_image_without_ctime(site, template_disk, thin_disk):
    text = LONE_META.replace('CTIME=1\n', '').replace('%(format)s', 'RAW')
    return [(lone_volume(site, text, b'\0' * 1024), 'DR import')]


def an_unregistered_qcow2_qemu_cannot_read(site, template_disk, thin_disk):
    text = LONE_META.replace('%(format)s', 'COW')
    return [(lone_volume(site, text, b'not a qcow2 at all' * 64), 'DR import')]


PLANTED = [template_volume_gone, shared_volume_of_no_template, template_says_leaf,
           template_link_gone, a_key_vdsm_requires_missing,
           an_unregistered_image_without_ctime, an_unregistered_qcow2_qemu_cannot_read]


@pytest.mark.parametrize('plant', PLANTED, ids=[p.__name__.replace('_', '-') for p in PLANTED])
def test_verify_names_the_image_and_the_check_of_a_planted_fault(site, plant):
    template_disk, thin_disk = backed_up(site)
    expected = plant(site, template_disk, thin_disk)
    result = site.run('--verify')
    assert result.code == 1, result.output
    errors = [line for line in result.err.splitlines() if ' ERROR verify: ' in line]
    for named, check, *phrase in expected:
        assert [line for line in errors if named in line and ': %s: ' % check in line
                and all(words in line for words in phrase)], (named, check, result.err)
    assert 'Traceback' not in result.output


def test_an_image_of_more_volumes_that_no_store_names_is_left_to_the_engine(site):
    """GetUnregisteredDisksQuery skips an image of several volumes: no
    alert, and no qemu-img for it."""
    backed_up(site)
    disk_id = lone_volume(site, LONE_META.replace('CTIME=1\n', '').replace(
        '%(format)s', 'COW'), b'garbage')
    directory = os.path.join(str(site.slave), site.sd_id, 'images', disk_id)
    open(os.path.join(directory, '%08x-1111-2222-3333-444444444444.meta' % 9), 'w').write(
        'EOF\n')
    result = site.run('--verify')
    assert result.code == 0, result.output
    assert disk_id not in result.err


def test_a_bad_image_of_no_vm_of_this_run_is_an_alert_naming_it(site):
    build(site)
    # at the master: it reaches the slave with the night's sync
    site.slave, slave = site.master, site.slave
    disk_id = lone_volume(site, LONE_META.replace('DISKTYPE=DATA\n', '').replace(
        '%(format)s', 'RAW'), b'\0' * 1024)
    site.slave = slave
    result = site.run()
    assert result.code == 1, result.output
    assert_invariants(site, result)
    (line,) = [line for line in result.err.splitlines()
               if ' ERROR verify: image %s: DR import: ' % disk_id in line]
    assert 'no DISKTYPE' in line and 'GetUnregisteredDisksQuery' in line
    event = site.engine.events[-1]
    assert event['severity'] == 'alert' and disk_id in event['description'], event


# ------------------------------------------------------ the pure decisions

LEAF, INTERNAL, SHARED, BLANK = 'LEAF', 'INTERNAL', 'SHARED', vmbackup.BLANK_UUID
T, A, B = ('%08d-0000-0000-0000-000000000000' % n for n in (7, 1, 2))


@pytest.mark.parametrize('own, shared, chain, problem', [
    ({A: (T, LEAF)}, {T}, [A], None),
    ({A: (T, INTERNAL), B: (A, LEAF)}, {T}, [A, B], None),
    ({T: (BLANK, SHARED)}, set(), [T], None),
    ({T: (A, SHARED)}, set(), None, 'the SHARED volume %s has parent %s' % (T, A)),
    ({A: (BLANK, LEAF)}, {T}, None, 'not on the chain of leaf %s: %s' % (A, T)),
    ({A: (T, LEAF)}, set(), None, 'names parent %s, which is not there' % T),
], ids=['on-a-template', 'two-on-a-template', 'a-templates-image', 'a-shared-volume-with-a-parent',
        'a-shared-volume-off-the-chain', 'the-template-volume-missing'])
def test_a_chain_ends_at_the_blank_uuid_or_at_a_templates_shared_volume(own, shared, chain,
                                                                       problem):
    metas = {v: {'PUUID': parent, 'VOLTYPE': kind} for v, (parent, kind) in own.items()}
    found, why = vmbackup.leaf_chain(metas, shared)
    assert found == chain
    assert (why is None) if problem is None else (problem in why), why


def test_a_templates_ovf_is_read_as_a_template_and_a_vms_names_its_template():
    template = ('<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/">'
                '<Content><Name>tpl</Name><TemplateId>%s</TemplateId>'
                '<TemplateType>TEMPLATE</TemplateType></Content></ovf:Envelope>' % T)
    vm = template.replace('<TemplateType>TEMPLATE</TemplateType>', '').replace('tpl', 'vm')
    assert vmbackup.parse_ovf(T, template).template is True
    parsed = vmbackup.parse_ovf(A, vm)
    assert parsed.template is False and parsed.template_id == T
