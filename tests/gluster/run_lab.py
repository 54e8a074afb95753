#!/usr/bin/env python3
"""One whole real geo-replication cycle on this machine, timed.

Sets up GeoRepLab, writes disk images into the master in a storage-domain
layout, runs the packaged schedule_georep.py, checks the files arrive
byte-identical at the slave, checks that the slave is read-only to an
ordinary client and that a --client-pid=-1 mount deletes an overlay through
it, then tears everything down. With --failure it also breaks the session
and checks that `schedule_georep.py --timeout 1` gives up with a non-zero
exit in bounded time.

    python3 tests/gluster/run_lab.py [--failure] [--workdir DIR]

Exit 0 when every check passed, 1 otherwise; 77 when the machine cannot run
it (skip_reason()).
"""
import argparse
import errno
import os
import pathlib
import signal
import sys
import time
import uuid

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))     # support

from support.georep import GeoRepLab, skip_reason  # noqa: E402

EXPECTED_USAGE = ('usage: schedule_georep.py [-h] [--interval INTERVAL] '
                  '[--timeout TIMEOUT]')


def disk_files(sd, disks):
    """{relpath: bytes} of a storage domain with one base image per disk."""
    files = {}
    for n, (disk, vol) in enumerate(disks):
        base = '%s/images/%s/%s' % (sd, disk, vol)
        # image data of a few sizes, one not a multiple of a block
        files[base] = os.urandom((n + 1) * 1024 * 1024 + 123 * n)
        files[base + '.meta'] = (
            'CAP=%d\nDISKTYPE=DATA\nFORMAT=RAW\nIMAGE=%s\nVOLTYPE=LEAF\n'
            'EOF\n' % (len(files[base]), disk)).encode()
        files[base + '.lease'] = b'\0' * 4096
    files['%s/dom_md/metadata' % sd] = b'CLASS=Data\nSDUUID=%s\n' % \
        sd.encode()
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--workdir', help='work directory (default: a new '
                        'temporary one, removed afterwards)')
    parser.add_argument('--failure', action='store_true',
                        help='also check a geo-replication that cannot '
                        'complete')
    parser.add_argument('--host', help='slave host name (default: this '
                        "machine's; added to /etc/hosts if it does not "
                        'resolve to a loopback address)')
    parser.add_argument('--interval', type=int, default=5)
    parser.add_argument('--timeout', type=int, default=5,
                        help="the scheduler's --timeout, minutes")
    args = parser.parse_args()

    reason = skip_reason()
    if reason:
        print('SKIP: ' + reason)
        return 77

    def terminated(signum, frame):
        # tear down on SIGTERM/SIGHUP as on Ctrl-C; a second one is ignored
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, terminated)
    signal.signal(signal.SIGHUP, terminated)

    started = time.monotonic()
    phases = []
    failures = []

    def phase(name, t0):
        took = time.monotonic() - t0
        phases.append((name, took))
        print('== %s: %.1f s' % (name, took), flush=True)

    def check(ok, what):
        print('%s %s' % ('ok  ' if ok else 'FAIL', what), flush=True)
        if not ok:
            failures.append(what)

    lab = GeoRepLab(args.workdir, host=args.host)
    with lab:
        # usage line, as the tool will rely on it
        proc = lab.run(['python3', lab.scheduler, '--help'])
        check(proc.stdout.startswith(EXPECTED_USAGE),
              'scheduler usage: ' + ' '.join(proc.stdout.split('\n\n')[0]
                                             .split()))
        check(lab.session_state() == 'Created', 'session Created after '
              'set-up (%s)' % lab.session_state())

        t0 = time.monotonic()
        sd = str(uuid.uuid4())
        disks = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(2)]
        files = disk_files(sd, disks)
        for rel, data in files.items():
            lab.write_master(rel, data)
        check(lab.master_tree() == files, 'master holds the %d files'
              % len(files))
        phase('write master', t0)

        t0 = time.monotonic()
        proc = lab.run_scheduler(interval=args.interval, timeout=args.timeout)
        phase('schedule_georep.py', t0)
        sys.stdout.write(''.join('   | ' + line + '\n'
                                 for line in proc.stderr.splitlines()))
        check(proc.returncode == 0, 'scheduler exit 0 (got %s)'
              % proc.returncode)
        check('All Checkpoints COMPLETE' in proc.stderr,
              'scheduler says All Checkpoints COMPLETE')
        check(proc.stdout == '', 'scheduler prints nothing on stdout')
        state = lab.session_state()
        check(state == 'Stopped', 'session Stopped afterwards (%s)' % state)
        slave = lab.slave_tree()
        same = {rel for rel, data in files.items() if slave.get(rel) == data}
        check(same == set(files), 'slave files byte-identical: %d/%d%s' % (
            len(same), len(files), '' if same == set(files) else
            ' missing/different: %s' % sorted(set(files) - same)))

        # an overlay: a new volume in one disk, synced by a second run
        t0 = time.monotonic()
        disk, _ = disks[0]
        overlay = '%s/images/%s/%s' % (sd, disk, uuid.uuid4())
        new = {overlay: os.urandom(256 * 1024),
               overlay + '.meta': b'VOLTYPE=LEAF\nEOF\n',
               overlay + '.lease': b'\0' * 4096}
        for rel, data in new.items():
            lab.write_master(rel, data)
        proc = lab.run_scheduler(interval=args.interval, timeout=args.timeout)
        phase('schedule_georep.py (overlay)', t0)
        check(proc.returncode == 0, 'second scheduler run exit 0 (got %s)'
              % proc.returncode)
        check(all(lab.read_slave(rel) == data for rel, data in new.items()),
              'overlay files byte-identical at the slave')

        t0 = time.monotonic()
        with lab.mount_slave(client_pid=None) as mnt:
            try:
                os.unlink(mnt / overlay)
                erofs = False
            except OSError as exc:
                erofs = exc.errno == errno.EROFS
                print('   plain mount: %s' % exc)
        check(erofs, 'plain mount of the slave refuses the deletion (EROFS)')
        with lab.mount_slave(client_pid=-1) as mnt:
            for suffix in ('', '.meta', '.lease'):
                os.unlink(mnt / (overlay + suffix))
        gone = not any(lab.slave_exists(overlay + s)
                       for s in ('', '.meta', '.lease'))
        check(gone, '--client-pid=-1 mount deleted the overlay at the slave')
        check(all(lab.read_slave(rel) == data for rel, data in files.items()),
              'the base images are still at the slave')
        check(lab.master_tree() == dict(files, **new),
              'the master is untouched')
        phase('slave mounts and delete', t0)

        if args.failure:
            t0 = time.monotonic()
            lab.break_replication()
            proc = lab.run_scheduler(interval=args.interval, timeout=1,
                                     limit=240)
            phase('schedule_georep.py --timeout 1 (broken)', t0)
            sys.stdout.write(''.join('   | ' + line + '\n'
                                     for line in proc.stderr.splitlines()))
            check(proc.returncode != 0, 'broken: scheduler exit non-zero '
                  '(got %s after %.0f s)' % (proc.returncode, proc.elapsed))
            check(proc.elapsed < 150, 'broken: scheduler ended within 150 s')
            state = lab.session_state()
            check(state == 'Stopped', 'broken: session Stopped afterwards '
                  '(%s)' % state)
            lab.repair_replication()
            t0 = time.monotonic()
            proc = lab.run_scheduler(interval=args.interval,
                                     timeout=args.timeout)
            phase('schedule_georep.py (repaired)', t0)
            check(proc.returncode == 0, 'repaired: scheduler exit 0 (got %s)'
                  % proc.returncode)
            check(lab.read_slave('.georep-lab-pending') ==
                  (lab.master_mount / '.georep-lab-pending').read_bytes(),
                  'repaired: the pending file reached the slave')
        t0 = time.monotonic()
    phase('tear-down', t0)
    lab_phases = [(n, t) for n, t in lab.timings
                  if n in ('packages', 'leftovers', 'host name', 'glusterd', 'volumes',
                           'ssh', 'geo-replication session', 'master mount',
                           'set-up total')]
    print('\nset-up phases: ' + ', '.join('%s %.1f s' % p
                                          for p in lab_phases))
    print('run phases:    ' + ', '.join('%s %.1f s' % p for p in phases))
    total = time.monotonic() - started
    print('total: %.1f s' % total)
    if failures:
        print('%d check(s) FAILED: %s' % (len(failures),
                                          '; '.join(failures)))
        return 1
    print('all checks passed')
    return 0


if __name__ == '__main__':
    sys.exit(main())
