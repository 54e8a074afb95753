#!/usr/bin/env python3
"""The snapshot window on real gluster, with and without the pre-sync
(issue 19). Slow (about 25 minutes), root only, not in make test.

Each case is a lab of its own (tests/support/georep.py's GeoRepLab: a real
GlusterFS geo-replication session on this machine, xsync as the change
detector, which the scheduler drives reliably: gluster-notes.md), so that
the shared lab is held for one case at a time:

1. set up the lab; the fake engine (tests/support/fake_engine.py, in this
   process) holds --vms running VMs, one raw disk of --base-mib each, written through
   the lab's FUSE mount of the master;
2. "last night": the packaged schedule_georep.py once, unthrottled, so that
   the slave holds every base;
3. throttle geo-replication: `config rsync-options --bwlimit=KIB`;
4. "the day's changes": --changes-mib of each base rewritten in place, the
   same blocks (seeded) in both cases;
5. a "guest" per VM writes --guest-kib KiB a second into its active volume
   through the master's mount: in place into the base until the snapshot,
   appended to the overlay (as qcow2 allocates clusters) once the engine has
   switched the disk to it, into the base again after the merge;
6. run the real vmbackup.py (the packaged scheduler, the real glusterfs
   client, -t --timeout), with `[gluster] presync` no or yes;
7. read the window and the overlays' bytes at merge from its status file
   (snapshot_window), and check that the run succeeded.

    python3 benchmarks/window_lab.py [--cases no,yes] [--vms 2] [--base-mib 64]
        [--changes-mib 56] [--bwlimit 256] [--guest-kib 8] [--timeout 20]
        [--logs DIR]

Prints one table row per case, then the ratios (the target: window and
overlay bytes with the pre-sync each at most a quarter of the run without).
Exit 0 when every run succeeded and the target is met, 1 otherwise, 77 when
the machine cannot run the lab.
"""
import argparse
import json
import os
import pathlib
import random
import subprocess
import sys
import threading
import time

import trustme

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))            # support

from support import georep  # noqa: E402
from support.fake_engine import FakeEngine  # noqa: E402

VMBACKUP = ROOT / 'vmbackup.py'
USER = 'admin@internal'
PASSWORD = 'window-lab-password'
MiB = 1 << 20
BLOCK = MiB                 # the day's changes, in blocks of this size
GUEST_TICK = 0.5            # seconds between two writes of a guest


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--cases', default='no,yes',
                        help='[gluster] presync of each case, in order')
    parser.add_argument('--vms', type=int, default=2)
    parser.add_argument('--base-mib', type=int, default=64)
    parser.add_argument('--changes-mib', type=int, default=56,
                        help="MiB of each base rewritten before the run")
    parser.add_argument('--bwlimit', type=int, default=256,
                        help="geo-replication's rsync --bwlimit, KiB/s")
    parser.add_argument('--guest-kib', type=int, default=8,
                        help='KiB each guest writes a second')
    parser.add_argument('--timeout', type=int, default=20,
                        help="the tool's -t, minutes")
    parser.add_argument('--interval', type=int, default=5,
                        help="the tool's -i, seconds")
    parser.add_argument('--logs', help="directory for the tool's -v logs")
    args = parser.parse_args(argv)
    args.cases = [case.strip() for case in args.cases.split(',')]
    if any(case not in ('no', 'yes') for case in args.cases):
        parser.error('--cases: a list of no and yes')
    if args.changes_mib > args.base_mib:
        parser.error('--changes-mib must not exceed --base-mib')
    return args


class Guest(threading.Thread):
    """A VM's guest writing steadily into its disk's active volume through
    the master's mount: the volume the engine says the disk is on now."""

    def __init__(self, engine, name, rate, seed):
        super().__init__(name='guest-' + name, daemon=True)
        self.engine = engine
        self.vm = name
        self.chunk = max(512, int(rate * 1024 * GUEST_TICK)) // 512 * 512
        self.random = random.Random(seed)
        self.quit = threading.Event()
        self.written = {'base': 0, 'overlay': 0}
        self.error = None

    def run(self):
        try:
            while not self.quit.wait(GUEST_TICK):
                self.write()
        except Exception as error:         # told in the report
            self.error = error

    def write(self):
        # the engine's lock: the disk switches to the overlay between two
        # writes, never during one (qemu's snapshot is atomic for the guest)
        with self.engine._lock:
            (disk,) = self.engine.vm(self.vm)['disks']
            path = self.engine.disk_path(disk['id'], disk['image_id'])
            on_base = disk['image_id'] == disk['chain'][0]
            data = os.urandom(self.chunk)
            with open(path, 'r+b') as volume:
                if on_base:
                    size = os.fstat(volume.fileno()).st_size
                    volume.seek(self.random.randrange(0, size - self.chunk, 512))
                else:
                    volume.seek(0, os.SEEK_END)
                volume.write(data)
                volume.flush()
                os.fsync(volume.fileno())
            self.written['base' if on_base else 'overlay'] += len(data)


def day_of_changes(engine, names, changes_mib, seed):
    """Rewrite changes_mib blocks of each VM's base in place, the same
    blocks for the same seed; return the bytes written."""
    rng = random.Random(seed)
    written = 0
    for name in names:
        (disk,) = engine.vm(name)['disks']
        path = engine.disk_path(disk['id'], disk['chain'][0])
        blocks = os.path.getsize(path) // BLOCK
        with open(path, 'r+b') as volume:
            for block in sorted(rng.sample(range(blocks), changes_mib)):
                volume.seek(block * BLOCK)
                volume.write(os.urandom(BLOCK))
                written += BLOCK
            volume.flush()
            os.fsync(volume.fileno())
    return written


def write_config(work, engine, lab, presync):
    path = work / 'backup.cfg'
    (work / 'lock').mkdir(exist_ok=True)
    (work / 'status').mkdir(exist_ok=True)
    (work / 'metrics').mkdir(exist_ok=True)
    path.write_text(
        '[connection]\nserver = %s\nuser_name = %s\npassword = %s\n'
        'ca_file = %s\ntimeout = 60\n'
        '[snapshot]\nwait_timeout = 2\npoll_interval = 1\n'
        '[gluster]\nmount_log = %s\nmaster_server = %s\npresync = %s\n'
        '[lock]\nlock_dir = %s\nskip_within = 0\n'
        '[status]\ndir = %s\ntextfile_dir = %s\n'
        % (engine.url, USER, PASSWORD, engine.ca_pem_path(str(work)),
           work / 'dr_slave.mount.log', lab.host, presync, work / 'lock',
           work / 'status', work / 'metrics'))
    path.chmod(0o600)
    return path


def run_case(args, presync, seed=19):
    """One case in a lab of its own; return its row (a dict)."""
    row = {'presync': presync}
    lab = georep.GeoRepLab()
    with lab, FakeEngine(ca=trustme.CA(), user=USER, password=PASSWORD,
                         snapshot_delay=2, merge_delay=2) as engine:
        work = lab.workdir / 'window'
        work.mkdir()
        (work / 'scratch').mkdir()
        sd_id = engine.add_storage_domain(
            'window-sd', str(lab.master_mount), type='glusterfs',
            address=lab.host, path='/' + lab.master)
        lab.write_master('%s/dom_md/metadata' % sd_id,
                         b'CLASS=Data\nSDUUID=%s\n' % sd_id.encode())
        names = ['vm%d' % number for number in range(1, args.vms + 1)]
        for name in names:
            engine.add_vm(name, disks=[dict(sd=sd_id, content=os.urandom(
                args.base_mib * MiB))])

        began = time.monotonic()
        night = lab.run_scheduler(interval=args.interval, timeout=10)
        row['first sync s'] = time.monotonic() - began
        if night.returncode != 0:
            raise SystemExit('the first sync failed (exit %s):\n%s'
                             % (night.returncode, night.stderr))
        # without --mode=script: gluster's CLI leaves the words of
        # `volume geo-replication M S config ...` alone only when they stand
        # at those places (cli.c parse_cmdline, GEO_REP_CMD_CONFIG_INDEX);
        # anywhere else it takes --bwlimit=... for an option of its own
        session = ['gluster', 'volume', 'geo-replication', lab.master,
                   lab.slave_url, 'config', 'rsync-options']
        lab.run(session + ['--bwlimit=%d' % args.bwlimit])
        said = lab.run(session).stdout.strip()
        if '--bwlimit=%d' % args.bwlimit not in said:
            raise SystemExit('geo-replication did not take the rsync option: '
                             '%r' % said)
        row['changes MiB'] = day_of_changes(engine, names, args.changes_mib,
                                            seed) / MiB

        guests = [Guest(engine, name, args.guest_kib, seed + number)
                  for number, name in enumerate(names)]
        config = write_config(work, engine, lab, presync)
        command = [sys.executable, str(VMBACKUP), lab.master, lab.host,
                   lab.slave, '-c', str(config), '-i', str(args.interval),
                   '-t', str(args.timeout), '-v']
        env = dict(lab.env, TMPDIR=str(work / 'scratch'))
        for guest in guests:
            guest.start()
        began = time.monotonic()
        process = subprocess.run(command, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT,
                                 timeout=(2 * args.timeout + 10) * 60)
        row['wall s'] = time.monotonic() - began
        for guest in guests:
            guest.quit.set()
        for guest in guests:
            guest.join()
        log = process.stdout.decode('utf-8', 'replace')
        if args.logs:
            os.makedirs(args.logs, exist_ok=True)
            pathlib.Path(args.logs, 'window-presync-%s.log' % presync).write_text(log)
        status = json.loads((work / 'status' / ('%s.json' % lab.master)).read_text())
        window = status.get('snapshot_window') or {}
        row.update({
            'exit': process.returncode,
            'window s': window.get('seconds'),
            'overlay MiB': (window.get('overlay_bytes') or 0) / MiB,
            'presync s': status['steps'].get('presync'),
            'replicate s': status['steps'].get('replicate'),
            'guest MiB': sum(sum(g.written.values()) for g in guests) / MiB,
            'errors': [str(g.error) for g in guests if g.error]
                      + list(status['failures']),
        })
        if process.returncode != 0:
            print(log[-6000:], file=sys.stderr)
    return row


COLUMNS = ('presync', 'exit', 'changes MiB', 'first sync s', 'presync s',
           'replicate s', 'window s', 'overlay MiB', 'guest MiB', 'wall s')


def print_row(row):
    def cell(value):
        if value is None:
            return '-'
        return '%.1f' % value if isinstance(value, float) else str(value)
    print('| ' + ' | '.join(cell(row.get(column)) for column in COLUMNS) + ' |',
          flush=True)


def main(argv=None):
    args = parse_arguments(argv)
    reason = georep.skip_reason()
    if reason:
        print('SKIP: ' + reason)
        return 77
    print('window lab: %d VMs, %d MiB bases, %d MiB changed each, rsync '
          '--bwlimit=%d KiB/s, guests %d KiB/s each, -t %d -i %d; load '
          'average %s' % (args.vms, args.base_mib, args.changes_mib,
                          args.bwlimit, args.guest_kib, args.timeout,
                          args.interval, ' '.join(
                              '%.2f' % load for load in os.getloadavg())),
          flush=True)
    print('| ' + ' | '.join(COLUMNS) + ' |')
    print('|' + ' --- |' * len(COLUMNS))
    rows = []
    for presync in args.cases:
        rows.append(run_case(args, presync))
        print_row(rows[-1])
        print('  (load average after: %s)' % ' '.join(
            '%.2f' % load for load in os.getloadavg()), flush=True)
    failed = [row for row in rows if row['exit'] != 0 or row['errors']]
    for row in failed:
        print('presync %s: exit %s: %s' % (row['presync'], row['exit'],
                                           '; '.join(row['errors'])))
    by_case = {row['presync']: row for row in rows}
    if 'no' in by_case and 'yes' in by_case and not failed:
        without, wth = by_case['no'], by_case['yes']
        window = wth['window s'] / without['window s']
        overlays = wth['overlay MiB'] / without['overlay MiB']
        print('with / without the pre-sync: window %.2f, overlay bytes at '
              'merge %.2f (target: each <= 0.25)' % (window, overlays))
        return 0 if window <= 0.25 and overlays <= 0.25 else 1
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
