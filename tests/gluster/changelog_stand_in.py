#!/usr/bin/env python3
"""A stand-in for schedule_georep.py in changelog mode, for
test_changelog_lab.py (run by hand).

The real scheduler stops and starts the session on every run, and in
changelog mode here about half of the starts are dead (the worker never
gets a change notice: gluster-notes.md, "Changelog mode and sharding,
measured"); it completed 1 run in 4. So this one keeps the live session the
lab made and does the rest of what the real one does (extras/geo-rep/
schedule_georep.py.in main): set the checkpoint (`config checkpoint now`,
which does not restart the worker), touch the master's root (a checkpoint
completes only when something changed after it), poll `status --xml` every
--interval until every Active worker says the checkpoint is complete; print
the real one's words on stderr; exit 0, or 1 on its --timeout. It does not
stop the session (so the next night finds it live).

    changelog_stand_in.py [--interval S] [--timeout M] [--fail]
                          MASTERVOL SLAVEHOST SLAVEVOL

Environment: GEOREP_LAB_MASTER_MOUNT, the lab's mount of the master (to
touch). --fail: wait for the checkpoint as usual, then say "Timed out" and
exit 1 (a failed night whose copy did reach the slave).
"""
import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET


def gluster(*words):
    return subprocess.run(['gluster', '--mode=script'] + list(words),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('mastervol')
    parser.add_argument('slave')
    parser.add_argument('slavevol')
    parser.add_argument('--interval', type=int, default=5)
    parser.add_argument('--timeout', type=int, default=3)
    parser.add_argument('--no-color', action='store_true')
    parser.add_argument('--fail', action='store_true')
    args = parser.parse_args()
    session = ['volume', 'geo-replication', args.mastervol,
               '%s::%s' % (args.slave.rsplit('@', 1)[-1], args.slavevol)]
    done = gluster(*(session + ['config', 'checkpoint', 'now']))
    if done.returncode:
        print('[NOT OK] %s' % (done.stderr or done.stdout).strip(), file=sys.stderr)
        return 255
    print('[    OK] Set Checkpoint', file=sys.stderr, flush=True)
    os.utime(os.environ['GEOREP_LAB_MASTER_MOUNT'])
    start = time.monotonic()
    turns = 0
    while True:
        turns += 1
        status = gluster(*(session + ['status', '--xml']))
        try:
            pairs = list(ET.fromstring(status.stdout).iter('pair'))
        except ET.ParseError:
            pairs = []
        active = [p for p in pairs if p.findtext('status') == 'Active']
        if active and all(p.findtext('checkpoint_completed') == 'Yes' for p in active):
            print('[    OK] All Checkpoints COMPLETE, All status OK (Turns %3d)' % turns,
                  file=sys.stderr, flush=True)
            break
        if time.monotonic() - start > args.timeout * 60:
            break
        time.sleep(args.interval)
    if args.fail or time.monotonic() - start > args.timeout * 60:
        print('[NOT OK] Timed out, Stopping Geo-replication(Duration: %dsec)'
              % (time.monotonic() - start), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
