"""Shared by the fake gluster executables: where the fake sites live, how a
test tells a fake what to do, and how a fake records its call.

FAKE_GLUSTER_ROOT holds:
  volumes/<VOLNAME>/   the bricks of every volume, master and slave alike
  behaviour.json       {"schedule_georep": {...}, "glusterfs": {...}, "umount": {...}}
  calls.jsonl          one JSON line per call: {"program", "argv", "pid"}
"""
import json
import os
import sys
import time


def root():
    value = os.environ.get('FAKE_GLUSTER_ROOT')
    if not value:
        sys.exit('%s: FAKE_GLUSTER_ROOT is not set' % os.path.basename(sys.argv[0]))
    return value


def behaviour(program):
    try:
        with open(os.path.join(root(), 'behaviour.json')) as handle:
            return json.load(handle).get(program, {})
    except FileNotFoundError:
        return {}


def record(program, argv, **extra):
    entry = dict(program=program, argv=argv, pid=os.getpid(), time=time.time(),
                 **extra)
    with open(os.path.join(root(), 'calls.jsonl'), 'a') as handle:
        handle.write(json.dumps(entry) + '\n')


def volume_dir(name):
    return os.path.join(root(), 'volumes', name)


def hang_if_asked(settings):
    """Sleep as told: {"hang": seconds} or {"hang": true} for ever; and
    {"gate": PATH} waits until PATH exists (the test opens the gate)."""
    hang = settings.get('hang')
    if hang is True:
        while True:
            time.sleep(3600)
    if hang:
        time.sleep(float(hang))
    gate = settings.get('gate')
    while gate and not os.path.exists(gate):
        time.sleep(0.02)
