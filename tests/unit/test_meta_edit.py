"""The .meta edit at the slave (step 7): the base's edit checked before the
overlay's files go, a file longer than what is read refused, no symlink
followed on the way to the base's .meta or the OVF store, and ids that are
UUIDs to their last character. Pure file work in a temporary directory."""
import os
import uuid

import pytest

import vmbackup

SD, DISK, BASE, OVERLAY = (str(uuid.uuid4()) for _ in range(4))
BLANK = vmbackup.BLANK_UUID


def meta(**values):
    """A .meta as vdsm writes it: sorted KEY=value lines, then EOF."""
    fields = dict(CAP='1048576', CTIME='1', DESCRIPTION='{}', DISKTYPE='DATA',
                  DOMAIN=SD, FORMAT='RAW', GEN='0', IMAGE=DISK, LEGALITY='LEGAL',
                  PUUID=BLANK, SEQ='0', TYPE='SPARSE', VOLTYPE='INTERNAL')
    fields.update(values)
    return ''.join('%s=%s\n' % item for item in sorted(fields.items())) + 'EOF\n'


def slave(tmp_path, base_meta=None):
    """A slave's image with a base and this run's overlay on it; return
    (root, DiskRecord)."""
    image = tmp_path / SD / 'images' / DISK
    image.mkdir(parents=True)
    (image / BASE).write_bytes(b'\0' * 512)
    (image / (BASE + '.lease')).write_bytes(b'')
    (image / (BASE + '.meta')).write_bytes(
        (meta() if base_meta is None else base_meta).encode())
    (image / OVERLAY).write_bytes(b'qcow2')
    (image / (OVERLAY + '.lease')).write_bytes(b'')
    (image / (OVERLAY + '.meta')).write_text(meta(FORMAT='COW', PUUID=BASE, VOLTYPE='LEAF'))
    disk = vmbackup.DiskRecord(sd_id=SD, disk_id=DISK, base_id=BASE, overlay_id=OVERLAY)
    return str(tmp_path), disk


def repair(root, disk):
    return vmbackup.repair_chain(root, disk, {'looked up': 0, 'deleted': 0})


def overlay_files(root):
    image = os.path.join(root, SD, 'images', DISK)
    return sorted(name for name in os.listdir(image) if name.startswith(OVERLAY))


def base_meta(root):
    return open(os.path.join(root, SD, 'images', DISK, BASE + '.meta'), 'rb').read()


def test_a_good_base_becomes_the_leaf_and_the_overlay_goes(tmp_path):
    root, disk = slave(tmp_path)
    assert repair(root, disk) is None
    assert overlay_files(root) == []
    assert base_meta(root) == meta(VOLTYPE='LEAF').encode()


@pytest.mark.parametrize('text, problem', [
    (meta() + '', None),
    (meta().replace('VOLTYPE=INTERNAL\n', 'VOLTYPE=INTERNAL\nVOLTYPE=INTERNAL\n'),
     'has 2 VOLTYPE lines'),
    (meta().replace('VOLTYPE=INTERNAL\n', ''), 'says VOLTYPE=None'),
    # vdsm strips the key as str.strip does (volumemetadata._lines_to_dict):
    # '\x1f' is white space to it, so this later line is what vdsm reads
    (meta().replace('EOF\n', '\x1fVOLTYPE=INTERNAL\nEOF\n'),
     'would not say VOLTYPE=LEAF after the edit'),
], ids=['good', 'two-voltype-lines', 'no-voltype-line', 'a-line-vdsm-reads-and-we-would-not-edit'])
def test_the_bases_edit_is_checked_before_the_overlay_is_deleted(tmp_path, text, problem):
    root, disk = slave(tmp_path, text)
    found = repair(root, disk)
    if problem is None:
        assert found is None
        return
    assert problem in found and 'left alone' in found
    assert overlay_files(root) == sorted([OVERLAY, OVERLAY + '.lease', OVERLAY + '.meta'])
    assert base_meta(root) == text.encode()


def test_a_key_written_with_a_space_is_the_key_vdsm_reads_and_is_edited(tmp_path):
    root, disk = slave(tmp_path, meta().replace('VOLTYPE=INTERNAL', 'VOLTYPE = INTERNAL'))
    assert repair(root, disk) is None
    assert overlay_files(root) == []
    assert vmbackup.parse_meta(base_meta(root), 'x')['VOLTYPE'] == 'LEAF'
    assert base_meta(root) == meta(VOLTYPE='LEAF').encode()


def test_a_meta_longer_than_what_is_read_is_refused_not_cut(tmp_path):
    text = meta().replace('EOF\n', 'EOF\n' + 'x' * vmbackup.META_READ_LIMIT + '\n')
    root, disk = slave(tmp_path, text)
    found = repair(root, disk)
    assert 'longer than %d bytes' % vmbackup.META_READ_LIMIT in found
    assert len(overlay_files(root)) == 3
    assert base_meta(root) == text.encode()
    with pytest.raises(vmbackup.MetaError, match='longer than'):
        vmbackup.set_meta_key(os.path.join(root, SD, 'images', DISK, BASE + '.meta'),
                              'VOLTYPE', 'LEAF')


def test_a_symlinked_base_meta_is_not_followed(tmp_path):
    root, disk = slave(tmp_path)
    elsewhere = tmp_path / 'elsewhere.meta'
    elsewhere.write_text(meta())
    path = os.path.join(root, SD, 'images', DISK, BASE + '.meta')
    os.unlink(path)
    os.symlink(str(elsewhere), path)
    found = repair(root, disk)
    assert 'symbolic link' in found, found
    assert len(overlay_files(root)) == 3
    assert elsewhere.read_text() == meta()


@pytest.mark.parametrize('link', ['images', 'image'])
def test_a_symlinked_directory_on_the_way_is_not_followed(tmp_path, link):
    root, disk = slave(tmp_path / 'volume')
    moved = tmp_path / 'elsewhere'
    moved.mkdir()
    inside = os.path.join(root, SD, 'images')
    if link == 'image':
        inside = os.path.join(inside, DISK)
    os.rename(inside, str(moved / 'dir'))
    os.symlink(str(moved / 'dir'), inside)
    found = repair(root, disk)
    assert 'symbolic link' in found, found
    assert len(overlay_files(root)) == 3
    assert b'VOLTYPE=INTERNAL' in base_meta(root)


class FakeRun:
    def __init__(self):
        self.failures = []

    def fail(self, message, *args):
        self.failures.append(message % args)


def ovf_store(tmp_path, link):
    """An OVF store volume at the slave whose tar differs from the kept one,
    with its volume, its .meta or its image directory a symlink."""
    root = tmp_path / 'volume'
    disk_id, volume_id = str(uuid.uuid4()), str(uuid.uuid4())
    image = root / SD / 'images' / disk_id
    image.mkdir(parents=True)
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    old_meta = meta(DISKTYPE='OVFS', DESCRIPTION='old').encode()
    for name, data in ((volume_id, b'old tar'), (volume_id + '.meta', old_meta)):
        (elsewhere / name).write_bytes(data)
        if link != name.replace(volume_id, 'volume'):
            (image / name).write_bytes(data)
        else:
            os.symlink(str(elsewhere / name), str(image / name))
    if link == 'image':
        os.rename(str(image), str(elsewhere / 'image'))
        os.symlink(str(elsewhere / 'image'), str(image))
    kept = vmbackup.OvfStore(sd_id=SD, disk_id=disk_id, volume_id=volume_id,
                             meta=meta(DISKTYPE='OVFS').encode(), data=b'new tar',
                             last_updated='x')
    return str(root), kept, elsewhere


@pytest.mark.parametrize('link', ['volume', 'volume.meta', 'image'])
def test_the_ovf_store_is_not_written_through_a_symlink(tmp_path, link):
    root, kept, elsewhere = ovf_store(tmp_path, link)
    run = FakeRun()
    vmbackup.restore_ovf_stores(run, root, [kept], confirmed=[object()])
    (failure,) = run.failures
    assert 'cannot restore OVF store' in failure and 'symbolic link' in failure, failure
    for name in os.listdir(str(elsewhere)):
        if os.path.isfile(str(elsewhere / name)):
            assert b'old' in (elsewhere / name).read_bytes()


def test_the_ovf_store_is_put_back_where_nothing_is_a_symlink(tmp_path):
    root, kept, _ = ovf_store(tmp_path, None)
    run = FakeRun()
    vmbackup.restore_ovf_stores(run, root, [kept], confirmed=[object()])
    assert run.failures == []
    path = vmbackup.volume_path(root, SD, kept.disk_id, kept.volume_id)
    assert open(path, 'rb').read().startswith(b'new tar')
    assert open(path + '.meta', 'rb').read() == kept.meta


def test_a_uuid_ends_at_its_last_character():
    assert vmbackup.UUID.match(DISK)
    assert not vmbackup.UUID.match(DISK + '\n')
    with pytest.raises(vmbackup.MetaError, match='is not a UUID'):
        vmbackup.volume_path('/x', SD, DISK + '\n', BASE)
