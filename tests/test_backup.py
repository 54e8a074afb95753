"""The whole run, against the fake engine and the fake gluster sites."""
import json
import os
import re

import pytest

from support.site import (BARE_DESCRIPTION, DESCRIPTION, MASTER, PASSWORD, SLAVE,
                          SLAVE_HOST, SLAVEVOL, assert_invariants, needs_root, ovf_store_paths,
                          tree, without_voltype)

pytestmark = needs_root


def snapshot_posts(engine):
    return [r for r in engine.requests
            if r['method'] == 'POST' and re.fullmatch(r'/vms/[^/]+/snapshots', r['path'])]


def test_backup_of_running_vms_on_the_volume_copies_bases_and_drops_only_this_runs_overlays(site):
    engine = site.engine
    site.add_vm('web', disks=2)
    site.add_vm('db')
    site.add_vm('stopped', status='down')
    site.add_vm('HostedEngine')
    site.add_vm('on-nfs', sd=site.nfs_id)
    mixed = engine.add_vm('mixed', disks=[dict(sd=site.sd_id), dict(sd=site.nfs_id)])
    # a user's own snapshot: its overlay must survive at the remote site
    engine.add_snapshot('db', 'before upgrade')
    master_before = tree(site.master)

    result = site.run()

    assert result.code == 0, result.output
    assert_invariants(site, result)
    # one snapshot per chosen VM, no memory, only the disks on the volume
    posts = snapshot_posts(engine)
    posted_vms = sorted(engine.vm_name_of(p['path'].split('/')[2]) for p in posts)
    assert posted_vms == ['db', 'mixed', 'web']
    for post in posts:
        assert '<persist_memorystate>false</persist_memorystate>' in post['body']
        assert '<description>%s</description>' % DESCRIPTION in post['body']
    mixed_post = [p for p in posts if p['path'].split('/')[2] == mixed][0]
    gluster_disk, nfs_disk = engine.vm('mixed')['disks']
    assert gluster_disk['id'] in mixed_post['body']
    assert nfs_disk['id'] not in mixed_post['body']
    # at the remote site: every file the master had before the snapshots is
    # there, byte for byte; the overlays of this run are not
    slave = tree(site.slave)
    for path, content in master_before.items():
        if path in ovf_store_paths(engine):
            continue        # written by the engine during the run
        if path.endswith('.meta'):
            # a snapshot turns its parent's VOLTYPE from LEAF to INTERNAL
            assert without_voltype(slave[path]) == without_voltype(content), path
        else:
            assert slave.get(path) == content, path
    extra = set(slave) - set(master_before)
    assert extra == set(), extra
    assert len(site.mounts()) == 1 and len(site.mounts(MASTER)) == 1
    # all snapshots merged: the disks are on their base images again
    for name in ('web', 'db', 'mixed'):
        for disk in engine.vm(name)['disks']:
            assert os.path.exists(engine.disk_path(disk['id'], disk['image_id']))
    # the user's snapshot is untouched
    assert [s['description'] for s in engine.vm('db')['snapshots']
            if s['type'] != 'active'] == ['before upgrade']
    # the event
    assert len(engine.events) == 1
    event = engine.events[0]
    assert event['origin'] == 'ovirt-georep-backup'
    assert event['severity'] == 'normal'
    assert event['description'].startswith(
        'Successfully backed up gluster volume %s to remote site. Backup '
        'completed in ' % MASTER)
    assert engine.logged_out == 1


def test_scheduler_and_mount_client_get_exactly_the_documented_command_lines(site):
    site.add_vm('web')
    result = site.run('-i', '7', '-t', '30')
    assert result.code == 0, result.output
    (scheduler,) = site.calls('schedule_georep')
    assert scheduler['argv'] == [MASTER, SLAVE, SLAVEVOL, '--interval', '7',
                                 '--timeout', '30']
    (master,) = site.mounts(MASTER)
    assert master['argv'][:7] == ['--volfile-server', 'localhost', '--volfile-id',
                                  MASTER, '--read-only', '-l', str(site.mount_log)]
    (mount,) = site.mounts()
    argv = mount['argv']
    assert argv[:7] == ['--volfile-server', SLAVE_HOST, '--volfile-id', SLAVEVOL,
                        '--client-pid=-4', '-l', str(site.mount_log)]
    assert os.path.dirname(argv[7]) == str(site.scratch)
    assert os.path.dirname(master['argv'][7]) == str(site.scratch)
    assert [c['argv'] for c in site.calls('umount')] == [[argv[7]], [master['argv'][7]]]
    # the scheduler's colours (it writes them to a pipe too) are dropped
    assert 'schedule_georep: [    OK] Set Checkpoint' in result.err
    assert 'schedule_georep: [    OK] All Checkpoints COMPLETE' in result.err
    assert '\x1b' not in result.output


def test_the_scheduler_output_reaches_the_log_line_by_line(site):
    site.add_vm('web')
    site.behave(schedule_georep={'lines': ['[  WARN] first', '[    OK] second']})
    result = site.run()
    assert result.code == 0
    lines = [l for l in result.err.splitlines() if 'schedule_georep:' in l]
    assert any(l.endswith('schedule_georep: [  WARN] first') for l in lines)
    assert any(l.endswith('schedule_georep: [    OK] second') for l in lines)


def test_overlay_deletion_goes_by_exact_paths_and_spares_a_lookalike(site):
    engine = site.engine
    site.add_vm('web')
    result = site.run('--dry-run')
    assert result.code == 0
    disk = engine.vm('web')['disks'][0]
    # a file at the remote site whose name starts like the disk's next image
    # ids is never found by a walk: only the three exact names go
    image_dir = site.slave / site.sd_id / 'images' / disk['id']
    image_dir.mkdir(parents=True)
    (image_dir / 'unrelated-volume').write_bytes(b'keep me')
    result = site.run()
    assert result.code == 0, result.output
    assert (image_dir / 'unrelated-volume').read_bytes() == b'keep me'
    assert (image_dir / disk['image_id']).exists()


@pytest.mark.parametrize('inline', [False, 'refuse'], ids=['ignored', 'refused'])
def test_an_engine_without_follow_gets_asked_for_the_rest_and_the_backup_is_the_same(
        site, inline):
    engine = site.engine
    engine.inline = inline         # links only, or a 400 to any follow
    site.add_vm('web', disks=2)
    site.add_vm('db')
    engine.add_snapshot('db', 'before upgrade')
    master_before = tree(site.master)
    result = site.run()
    assert result.code == 0, result.output
    assert_invariants(site, result)
    made = [o for o in engine.overlays if o['description'] == DESCRIPTION]
    assert len(made) == 3
    slave = tree(site.slave)
    for path, content in master_before.items():
        if not path.endswith('.meta') and path not in ovf_store_paths(engine):
            assert slave.get(path) == content, path
    for overlay in made:
        volume = '%s/images/%s/%s' % (site.sd_id, overlay['disk_id'], overlay['overlay'])
        assert not [p for p in slave if p.startswith(volume)], volume
    paths = {r['path'] for r in engine.requests if r['method'] == 'GET'}
    assert any(p.endswith('/snapshots') for p in paths)
    assert any(p.startswith('/disks/') for p in paths)


def test_dry_run_prints_the_plan_and_changes_nothing(site):
    site.add_vm('web', disks=2)
    site.add_vm('on-nfs', sd=site.nfs_id)
    master_before = tree(site.master)
    result = site.run('--dry-run')
    assert result.code == 0, result.output
    assert 'web' in result.out and 'on-nfs' not in result.out
    for disk in site.engine.vm('web')['disks']:
        assert disk['id'] in result.out
        assert disk['image_id'] in result.out
    assert 'schedule_georep' in result.out and '--client-pid=-4' in result.out
    assert [r for r in site.engine.requests if r['method'] in ('POST', 'DELETE')
            and not r['path'].startswith('/ovirt-engine/s')] == []
    # only the preflight's look at the geo-replication session
    assert [call['argv'][1:5] for call in site.calls()] == [
        ['volume', 'geo-replication', MASTER, SLAVE + '::' + SLAVEVOL]]
    assert tree(site.master) == master_before
    assert tree(site.slave) == {}
    assert site.engine.events == []


def test_vm_and_exclude_narrow_the_choice(site):
    for name in ('a', 'b', 'c'):
        site.add_vm(name)
    result = site.run('--vm', 'a', '--vm', 'b', '--exclude', 'b')
    assert result.code == 2    # a VM both wanted and excluded is refused
    result = site.run('--vm', 'a', '--vm', 'c')
    assert result.code == 0, result.output
    posted = sorted(site.engine.vm_name_of(p['path'].split('/')[2])
                    for p in snapshot_posts(site.engine))
    assert posted == ['a', 'c']
    result = site.run('--exclude', 'a')
    assert result.code == 0
    posted = [site.engine.vm_name_of(p['path'].split('/')[2])
              for p in snapshot_posts(site.engine)]
    assert sorted(posted[2:]) == ['b', 'c']


def test_a_vm_named_with_vm_that_is_not_running_fails_the_run(site):
    site.add_vm('a')
    site.add_vm('sleeping', status='down')
    result = site.run('--vm', 'a', '--vm', 'sleeping')
    assert result.code == 1
    assert 'sleeping' in site.engine.events[-1]['description']
    assert site.engine.events[-1]['severity'] == 'alert'
    assert_invariants(site, result)


def test_every_running_vm_counts_not_only_the_first_hundred(site):
    for index in range(130):
        site.engine.add_vm('vm%03d' % index, status='up',
                           disks=[dict(sd=site.sd_id, content=b'x')])
    result = site.run('--dry-run')
    assert result.code == 0, result.output
    assert 'VMs to snapshot (130 of 130 running)' in result.out
    searches = [r['query'] for r in site.engine.requests
                if r['method'] == 'GET' and r['path'] == '/vms']
    assert any('page 2' in q.get('search', [''])[0] for q in searches)


def test_a_stale_snapshot_of_an_earlier_run_is_removed_first_and_a_users_is_kept(site):
    site.add_vm('web')
    # older than the longest a run can take (-t 1: about 13 minutes)
    site.engine.add_snapshot('web', DESCRIPTION, age=3600)
    site.engine.add_snapshot('web', 'keep: ' + DESCRIPTION)
    result = site.run('-t', '1')
    assert result.code == 0, result.output
    assert 'left by an earlier run' in result.err
    assert_invariants(site, result)
    remaining = [s['description'] for s in site.engine.vm('web')['snapshots']
                 if s['type'] != 'active']
    assert remaining == ['keep: ' + DESCRIPTION]
    deletes = [r for r in site.engine.requests if r['method'] == 'DELETE']
    posts = snapshot_posts(site.engine)
    first_delete = site.engine.requests.index(deletes[0])
    assert first_delete < site.engine.requests.index(posts[0])


def test_a_volume_that_backs_no_storage_domain_fails_before_any_snapshot(site):
    site.add_vm('web')
    site.behave(gluster={'sessions': ['othervol %s::%s' % (SLAVE_HOST, SLAVEVOL)]})
    result = site.run('--', 'othervol', SLAVE, SLAVEVOL)
    assert result.code == 1, result.output
    assert 'no GlusterFS storage domain of the engine uses volume othervol' in result.err
    assert snapshot_posts(site.engine) == []
    assert site.calls_but_preflight() == []
    assert_invariants(site, result)


def test_all_vms_backs_up_every_running_vm_with_all_its_disks(site):
    site.add_vm('web')
    site.add_vm('on-nfs', sd=site.nfs_id)
    (site.root / 'volumes' / 'othervol').mkdir()     # a volume no domain uses
    site.behave(gluster={'sessions': ['othervol %s::%s' % (SLAVE_HOST, SLAVEVOL)]})
    result = site.run('--', 'othervol', SLAVE, SLAVEVOL, '--all-vms')
    assert result.code == 0, result.output
    posted = sorted(site.engine.vm_name_of(p['path'].split('/')[2])
                    for p in snapshot_posts(site.engine))
    assert posted == ['on-nfs', 'web']
    assert_invariants(site, result)


def test_a_named_storage_domain_that_does_not_exist_fails_before_any_snapshot(site):
    site.add_vm('web')
    result = site.run(config=site.config(gluster={'storage_domain': 'nope'}))
    assert result.code == 1
    assert snapshot_posts(site.engine) == []
    assert site.calls_but_preflight() == []
    assert "storage domain 'nope'" in site.engine.events[-1]['description']


def test_a_shareable_disk_is_left_out_of_the_snapshot_and_never_deleted(site):
    engine = site.engine
    engine.add_vm('cluster-node', disks=[dict(sd=site.sd_id),
                                         dict(sd=site.sd_id, shareable=True)])
    result = site.run()
    assert result.code == 0, result.output
    plain, shared = engine.vm('cluster-node')['disks']
    (post,) = snapshot_posts(engine)
    assert plain['id'] in post['body'] and shared['id'] not in post['body']
    assert (site.slave / site.sd_id / 'images' / shared['id'] /
            shared['image_id']).exists()


def test_a_vm_whose_only_disk_is_shareable_is_not_snapshotted(site):
    site.engine.add_vm('only-shared', disks=[dict(sd=site.sd_id, shareable=True)])
    site.add_vm('web')
    result = site.run()
    assert result.code == 0
    posted = [site.engine.vm_name_of(p['path'].split('/')[2])
              for p in snapshot_posts(site.engine)]
    assert posted == ['web']


def test_scheduler_failure_keeps_overlays_and_removes_snapshots(site):
    site.add_vm('web')
    site.behave(schedule_georep={'exit': 1, 'copy': True})
    result = site.run('-t', '5')
    assert result.code == 1
    assert_invariants(site, result)
    assert site.mounts() == []
    event = site.engine.events[-1]
    assert event['severity'] == 'alert'
    assert event['description'].startswith(
        'Failed to backup gluster volume %s to remote site. Please check backup '
        'log for details' % MASTER)
    assert 'checkpoint was not reached within --timeout 5 minutes' in event['description']
    # the overlay that was copied stays at the remote site
    disk = site.engine.vm('web')['disks'][0]
    image_dir = site.slave / site.sd_id / 'images' / disk['id']
    assert len([p for p in image_dir.iterdir() if '.' not in p.name]) == 2


@pytest.mark.parametrize('behaviour, expected', [
    ({'exit': 1}, 'glusterfs exited with status 1'),
    ({'mount': False}, 'is not a mount point'),
])
def test_a_failed_mount_fails_the_run_and_deletes_nothing(site, behaviour, expected):
    site.add_vm('web')
    site.behave(glusterfs=behaviour)
    result = site.run()
    assert result.code == 1
    assert expected in result.err
    assert_invariants(site, result)
    disk = site.engine.vm('web')['disks'][0]
    image_dir = site.slave / site.sd_id / 'images' / disk['id']
    assert len([p for p in image_dir.iterdir()]) == 6
    assert site.engine.events[-1]['severity'] == 'alert'


def test_a_snapshot_that_stays_locked_fails_that_vm_and_the_others_go_on(site):
    site.add_vm('web')
    site.add_vm('stuck')
    site.engine.stick_snapshot('stuck')
    result = site.run(config=site.config(snapshot={'wait_timeout': '0.05'}))
    assert result.code == 1
    assert "VM stuck: the snapshot was not ready" in result.err
    assert site.calls('schedule_georep') != []
    description = site.engine.events[-1]['description']
    assert 'VM stuck' in description
    assert 'web' not in description
    # the stuck one could not be removed: named, for the administrator
    assert 'remove it in the Administration Portal' in description


def test_a_merge_that_fails_once_is_retried(site):
    site.add_vm('web')
    site.engine.fail_merge('web', times=1)
    result = site.run()
    assert result.code == 0, result.output
    assert 'merge of snapshot' in result.err
    assert_invariants(site, result)


def test_a_merge_that_always_fails_is_named_in_the_alert(site):
    site.add_vm('web')
    site.engine.fail_merge('web', times=10)
    result = site.run()
    assert result.code == 1
    assert 'VM web: snapshot' in site.engine.events[-1]['description']
    assert 'still there' in site.engine.events[-1]['description']


def test_a_refused_custom_id_is_replaced_by_another(site):
    site.add_vm('web')
    site.engine.fail('POST', '^/events$', kind='fault', status=409, count=1)
    result = site.run()
    assert result.code == 0, result.output
    posts = [r for r in site.engine.requests
             if r['method'] == 'POST' and r['path'] == '/events']
    ids = [re.search(r'<custom_id>(-?\d+)</custom_id>', p['body']).group(1)
           for p in posts]
    assert len(ids) == 2 and ids[0] != ids[1]
    assert all(0 < int(value) < 2**31 for value in ids)
    assert len(site.engine.events) == 1


def test_the_event_names_the_configured_cluster_by_id(site):
    cluster_id = site.engine.add_cluster('Production')
    site.add_vm('web')
    result = site.run(config=site.config(event={'cluster': 'Production'}))
    assert result.code == 0
    assert site.engine.events[-1]['cluster_id'] == cluster_id


def test_another_run_holding_the_lock_means_exit_3_and_nothing_done(site):
    site.add_vm('web')
    with site.hold_lock():
        result = site.run()
    assert result.code == 3
    assert 'another backup of volume vmstore is running' in result.err
    assert site.engine.requests == []
    assert site.calls_but_preflight() == []


def test_a_logger_conf_file_receives_the_log(site, tmp_path):
    log_file = tmp_path / 'backup.log'
    conf = tmp_path / 'log.conf'
    conf.write_text(
        '[loggers]\nkeys=root\n[handlers]\nkeys=file\n[formatters]\nkeys=long\n'
        '[logger_root]\nlevel=DEBUG\nhandlers=file\n'
        '[handler_file]\nclass=logging.handlers.RotatingFileHandler\n'
        'args=(%r, "a", 1048576, 3)\nlevel=DEBUG\nformatter=long\n'
        '[formatter_long]\nformat=%%(levelname)s::%%(name)s::%%(message)s\n'
        % str(log_file))
    site.add_vm('web')
    result = site.run(config=site.config(logging={'logger_conf': str(conf)}))
    assert result.code == 0, result.output
    text = log_file.read_text()
    assert 'INFO::vmbackup::posted normal event' in text
    assert 'schedule_georep: [    OK] Set Checkpoint' in text
    assert PASSWORD not in text


def test_quiet_prints_nothing_when_all_went_well(site):
    site.add_vm('web')
    result = site.run('-q')
    assert result.code == 0
    assert result.err == '' and result.out == ''


def test_the_request_log_shows_the_snapshot_body_lists_disks_as_documented(site):
    site.add_vm('web', disks=2)
    result = site.run()
    assert result.code == 0
    (post,) = snapshot_posts(site.engine)
    ids = re.findall(r'<disk id="([^"]+)"', post['body'])
    assert sorted(ids) == sorted(d['id'] for d in site.engine.vm('web')['disks'])
    assert json.dumps(ids)


def test_a_2016_snapshot_under_a_node_local_lock_stops_before_any_snapshot(site):
    # its description names no volume: a run of any volume on another node
    # may own it, however old; only the cluster-wide lock allows removing it
    site.add_vm('web')
    site.engine.add_snapshot('web', BARE_DESCRIPTION, age=3600)
    result = site.run('-t', '1')
    assert result.code == 3, result.output
    assert 'names no volume' in result.err
    quiet = site.run('-t', '1', '-q')
    assert quiet.code == 3 and quiet.output == '', quiet.output
    assert snapshot_posts(site.engine) == []
    assert [r for r in site.engine.requests if r['method'] == 'DELETE'] == []
