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

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import trustme  # noqa: E402

from conftest import (DESCRIPTION, MASTER, PASSWORD, SLAVE, SLAVEVOL, USER,  # noqa: E402
                      Site, mounts_under, tree)
from fake_engine import FakeEngine  # noqa: E402


def describe_changes(before, after):
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    return added, removed, changed


def show(title, before, after):
    added, removed, changed = describe_changes(before, after)
    print('  %s: %d files before, %d after' % (title, len(before), len(after)))
    for label, paths in (('+', added), ('-', removed), ('~', changed)):
        for path in paths:
            print('    %s %s' % (label, path))


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
            show('master volume %s' % MASTER, master_before, tree(site.master))
            show('slave volume %s (was empty)' % SLAVEVOL, {}, tree(site.slave))
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
            print('  snapshots left (only the user\'s should be): %s' % left)
            assert all(DESCRIPTION not in snaps for snaps in left.values())
            for event in engine.events:
                print('  event: [%s] %s' % (event['severity'], event['description']))
            calls = site.calls()
            for call in calls:
                print('  ran %s %s' % (call['program'], ' '.join(call['argv'])))
            print('  mounts left: %s' % (mounts_under(scratch) or 'none'))
            overlays_at_slave = [p for p in tree(site.slave)
                                 if p not in master_before]
            print('  files at the slave that were not in the master before '
                  'the snapshots: %s' % (overlays_at_slave or 'none'))
            return code
        finally:
            for point in reversed(mounts_under(scratch)):
                subprocess.run(['umount', '-l', point], check=False)


if __name__ == '__main__':
    sys.exit(main())
