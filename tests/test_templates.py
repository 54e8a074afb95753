"""Templates: a template's image (one SHARED volume) and thin VMs made from
it (the template's volume hard-linked at the bottom of the VM's image, the
VM's own volumes on it), backed up and verified through the fake engine and
the fake gluster sites; the OVF store holds the templates' OVFs too."""
import importlib.util
import os
import re

import pytest

from conftest import VMBACKUP, assert_invariants, needs_root, tree

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
    of its own. Return (template disk view, thin's disk view)."""
    engine = site.engine
    engine.add_template('tpl', disks=[dict(sd=site.sd_id)])
    engine.add_vm('thin', template='tpl')
    site.add_vm('web')
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
    summary = '2 disks of 2 VMs and 1 disk of 1 template verified restorable'
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
