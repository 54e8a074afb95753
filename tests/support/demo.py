#!/usr/bin/env python3
"""make demo: one whole backup against the bundled fake engine (HTTPS, the
real SDK on the wire) and the fake gluster sites, then a summary of what
changed at each site and in the engine.

The fake gluster sites are two directories; the fake scheduler copies the
master's files to the slave as geo-replication would, and the fake mount
client bind-mounts the slave directory (so this needs root, as the real tool
does)."""
import collections
import os
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))     # support

import trustme  # noqa: E402

from support.fake_engine import FakeEngine  # noqa: E402
from support.site import (DESCRIPTION, MASTER, PASSWORD, SLAVE, SLAVEVOL, USER,  # noqa: E402
                          Site, mounts_under, tree)


def main():
    if os.geteuid() != 0:
        print('make demo mounts the fake slave volume (mount --bind): run it '
              'as root, as vmbackup.py itself runs on a gluster node.')
        return 1
    with tempfile.TemporaryDirectory(prefix='vmbackup-demo-') as scratch, \
            FakeEngine(ca=trustme.CA(), user=USER, password=PASSWORD,
                       snapshot_delay=1.0, merge_delay=1.5) as engine:
        site = Site(pathlib.Path(scratch), engine)
        try:
            engine.add_vm('web', disks=[dict(sd=site.sd_id)])
            engine.add_vm('db', disks=[dict(sd=site.sd_id), dict(sd=site.sd_id)])
            engine.add_vm('mixed', disks=[dict(sd=site.sd_id), dict(sd=site.nfs_id)])
            engine.add_vm('on-nfs', disks=[dict(sd=site.nfs_id)])
            engine.add_vm('stopped', status='down', disks=[dict(sd=site.sd_id)])
            engine.add_vm('HostedEngine', disks=[dict(sd=site.sd_id)])
            engine.add_snapshot('db', 'before upgrade')
            master_before = tree(site.master)
            print('== The fake data center ==')
            for name in ('web', 'db', 'mixed', 'on-nfs', 'stopped', 'HostedEngine'):
                vm = engine.vm(name)
                print('  %-12s %-5s %d disk(s)' % (name, vm['status'], len(vm['disks'])))
            config = site.config(snapshot={'wait_timeout': '1', 'poll_interval': '1'})
            command = site.command(config=config)
            print('\n== Running ==\n  %s %s %s %s -c %s -i 1\n' % (
                'vmbackup.py', MASTER, SLAVE, SLAVEVOL, config))
            sys.stdout.flush()
            code = subprocess.call(command, env=site.env())
            print('\n== What it did == (exit status %d)' % code)
            master_after, slave_after = tree(site.master), tree(site.slave)
            print('  master volume %s: %d files before, %d after (the overlays '
                  'were merged away)' % (MASTER, len(master_before), len(master_after)))
            print('  slave volume %s: was empty, now %d files' % (SLAVEVOL, len(slave_after)))
            for name in ('web', 'db', 'mixed', 'on-nfs', 'stopped', 'HostedEngine'):
                for disk in engine.vm(name)['disks']:
                    if disk['sd'] != site.sd_id:
                        state = 'on NFS: not on this volume'
                    else:
                        path = '%s/images/%s/%s' % (disk['sd'], disk['id'], disk['image_id'])
                        same = slave_after.get(path) == master_before.get(path)
                        state = 'base image %s at the slave, %s' % (
                            disk['image_id'][:8],
                            'byte-identical' if same else 'DIFFERENT')
                    print('    %-12s disk %s: %s' % (name, disk['id'][:8], state))
            strays = sorted(p for p in slave_after if p not in master_before)
            print('  files at the slave that are not base images of the master: %s'
                  % (strays or 'none: every overlay of this run was deleted there'))
            per_kind = collections.Counter(
                '%s %s' % (r['method'], '/'.join(
                    'ID' if len(part) == 36 else part
                    for part in r['path'].split('/'))) for r in engine.requests)
            print('  engine requests:')
            for request, count in sorted(per_kind.items()):
                print('    %3d  %s' % (count, request))
            left = {name: [s['description'] for s in engine.vm(name)['snapshots']
                           if s['type'] != 'active']
                    for name in ('web', 'db', 'mixed')}
            print("  snapshots now (only the user's is left): %s" % left)
            assert all(DESCRIPTION not in snaps for snaps in left.values())
            for event in engine.events:
                print('  event: [%s] %s' % (event['severity'], event['description']))
            for call in site.calls():
                print('  ran %s %s' % (call['program'], ' '.join(call['argv'])))
            print('  mounts left: %s' % (mounts_under(scratch) or 'none'))
            # the summary is at the end of the log above; this is what an
            # administrator asks in the morning (no engine, no lock)
            print('\n== vmbackup.py %s -c %s --status ==' % (MASTER, config))
            sys.stdout.flush()
            subprocess.call(site.command('--', MASTER, '--status', config=config),
                            env=site.env())
            print('\n== --check, as Nagios/Icinga run it ==')
            sys.stdout.flush()
            subprocess.call(site.command('--', MASTER, '--check', config=config),
                            env=site.env())
            return code
        finally:
            for point in reversed(mounts_under(scratch)):
                subprocess.run(['umount', '-l', point], check=False)


if __name__ == '__main__':
    sys.exit(main())
