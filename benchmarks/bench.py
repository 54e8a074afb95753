#!/usr/bin/env python3
"""make bench: how vmbackup.py scales with the number of VMs (issue 4).

For each N in --vms, the real vmbackup.py runs as a subprocess against a
fresh fake engine (tests/support/fake_engine.py, in this process, HTTPS, the
real SDK on the wire) holding N running VMs with one or two disks each, and
against the fake gluster sites (tests/fakebin: the scheduler copies the
master's files to the slave at once, the mount client bind-mounts the
slave, so this needs root; the scheduler is benchmarks/
instant_schedule_georep, which hard-links instead of copying). The engine takes --create-latency seconds to
finish each snapshot and --merge-latency seconds to merge each one away,
working on all of them at once.

The target: the run takes about as long as the requests it cannot avoid
plus the slowest snapshot and the slowest merge (the floor; geo-replication is
instant here), whatever N and however long the merges take, and sends few
requests and bytes per VM. One table row per N, and one more at the largest N
with merges of --long-merge seconds:

  merge s      the merge latency of the row
  wall s       the tool's wall time, start of the process to its exit
  bound s      create latency + merge latency
  wall/bound   for comparison with issue 4's table
  floor s      what a run that wastes nothing waiting on the engine takes:
               the engine's busy time on the requests no run can avoid (SSO
               login and logout, API root, storage domains, the VM list of
               step 4, the OVF store's update, the snapshot POSTs, the
               DELETEs, the event) + the engine's latencies (OVF store
               write, snapshot, merge) + the tool's own steps between the
               waits, their wall time from its log: master mount -> OVF
               store update asked, scheduler start ->
               removals' start (geo-rep, slave mount, confirm), the part of
               repair + verify + slave unmount that outlasts the merges, the
               master's unmount (see floor_seconds)
  wall/floor   the target is <= 1.25
  requests     every request the engine received, SSO included
  req/VM       the target is <= 3
  KiB/VM       bytes the engine served (answer bodies), per VM; the target:
               at --long-merge at most 10 % over the row of the same N
  busy s       the time the engine spent handling at least one request
  lag ok s     from the last snapshot ok (engine time) to the scheduler's
               start (the tool's log); the target is <= 0.5
  lag merge s  from the later of the last merge done (engine time) and the
               slave's unmount (repair and verify done: the tool cannot
               look before) to the tool's "all N snapshots removed"; the
               target is <= 0.5
  load         the machine's load average (1 minute) at the end of the row
  RSS MiB      peak resident memory of the tool (wait4's ru_maxrss, which
               also covers the children it waited for: scheduler, mount)
  paths        paths the remote cleanup looked up ("... paths looked up")
  deleted      files it deleted there (3 per disk: volume, .meta, .lease)

then, for the largest N, the requests by kind, the engine-side time per
kind, and the phases of the run from the tool's log.

Last, the remote cleanup (vmbackup.repair_chain, per disk: the base's and
the overlay's .meta read, the overlay's three files looked up and deleted,
the base's .meta set LEAF in place) is timed on a slave-like tree of
--files files against a walk of the same tree that finds the same files
(the 2016 way: os.walk, match each name against the ids),
on the local disk with a warm cache. On the real slave, a FUSE mount over a
WAN, every directory read and every look-up is a round trip, so the ratio
of file-system operations (also printed) is the better guide.
"""
import argparse
import collections
import datetime
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / 'tests'))
sys.path.insert(0, str(REPO))

import trustme  # noqa: E402

import vmbackup  # noqa: E402
from support.fake_engine import FakeEngine, _logged_path  # noqa: E402
from support.site import PASSWORD, USER, Site, mounts_under  # noqa: E402

INSTANT_SCHEDULER = HERE / 'instant_schedule_georep'
TARGET_RATIO = 1.25                         # wall / floor
TARGET_REQUESTS_PER_VM = 3
TARGET_LAG = 0.5                            # seconds, each detection lag
TARGET_LONG_BYTES = 1.10                    # bytes/VM, long merges over short
UNAVOIDABLE = re.compile(r'^(POST /ovirt-engine/sso/oauth/token|GET /|GET /storagedomains'
                         r'|POST /vms/\{id\}/snapshots|DELETE /vms/\{id\}/snapshots/\{id\}.*'
                         r'|POST /storagedomains/\{id\}/updateovfstore'
                         r'|POST /events|POST /ovirt-engine/services/sso-logout)$')
DISK_CONTENT = b'bench-base-image' * 4     # 64 bytes: small files, quick copies
RUN_LIMIT = 900                             # seconds before a run is killed
OVERLAYS_PICKED = 1000                      # overlays deleted in the tree test
UUID_TEXT = re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}')
LOG_LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ (.*)$')
CLEANUP_LINE = re.compile(r'deleted (\d+) overlay files at the remote site '
                          r'\((\d+) paths looked up\)')
PHASES = (      # (label, log text that starts it); each ends where the next starts
    ('start-up, login', None),
    ('list VMs, choose', 'connected to the engine'),
    ('master mount, OVF store', 'mounting the master volume'),
    ('snapshots: create, wait', 'creating snapshots of'),
    ('scheduler (geo-rep)', 'replicating:'),
    ('slave mount, confirm', 'mounting the slave volume'),
    ('DELETEs; repair, verify', 'removing '),
    ('merges: the rest of the wait', 'unmounted '),
    ('master unmount, event, exit', 'all '),
)
COLUMNS = ('%5s %6s %7s %7s %7s %10s %7s %10s %8s %6s %7s %6s %7s %11s %7s %6s %7s %4s %6s %5s %s',
           ('N', 'disks', 'merge s', 'wall s', 'bound s', 'wall/bound', 'floor s',
            'wall/floor', 'requests', 'req/VM', 'KiB/VM', 'busy s', 'lag ok s',
            'lag merge s', 'RSS MiB', 'paths', 'deleted', 'exit', 'event', 'load',
            'targets'))


def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--vms', default='10,100,500',
                        help='numbers of VMs, comma-separated (default 10,100,500)')
    parser.add_argument('--create-latency', type=float, default=2.0,
                        help='seconds the engine takes to create a snapshot (default 2)')
    parser.add_argument('--merge-latency', type=float, default=3.0,
                        help='seconds the engine takes to merge one away (default 3)')
    parser.add_argument('--long-merge', type=float, default=60.0,
                        help='merge latency of one more row at the largest N '
                             '(default 60; 0 leaves it out)')
    parser.add_argument('--poll-interval', type=float, default=1.0,
                        help='[snapshot] poll_interval of the tool (default 1)')
    parser.add_argument('--files', type=int, default=200000,
                        help='files in the slave-like tree of the cleanup test '
                             '(default 200000; 0 skips it)')
    parser.add_argument('--connections', type=int, default=None,
                        help='[connection] connections of the tool (default: '
                             "the tool's own)")
    parser.add_argument('--logs', metavar='DIR',
                        help='run the tool with -v and keep its log of each row '
                             'in DIR (vmbackup-N-MERGE.log)')
    parser.add_argument('--strict', action='store_true',
                        help='exit 1 when a target is missed, not only when a '
                             'run fails')
    args = parser.parse_args(argv)
    try:
        args.vms = [int(part) for part in args.vms.split(',') if part.strip()]
    except ValueError:
        parser.error('--vms takes whole numbers separated by commas, not %r' % args.vms)
    if not args.vms or min(args.vms) < 1:
        parser.error('--vms needs numbers of at least 1')
    return args


# The engine side: every request timed -------------------------------------------

def request_kind(method, path, query):
    """Given a request, return its kind: method, path with ids as {id}, and
    the names (not values) of its query parameters."""
    shape = UUID_TEXT.sub('{id}', path)
    if query:
        shape += '?' + '&'.join(sorted(query))
    return '%s %s' % (method, shape)


def time_requests(engine):
    """Given a FakeEngine, time the handling of every request it serves
    (lock wait included); return the list it fills with
    dict(kind, start (epoch s), seconds, search)."""
    timed = []
    dispatch = engine._dispatch

    def timed_dispatch(method, full_path, query, body, token):
        start = time.time()
        began = time.perf_counter()
        answer = None
        try:
            answer = dispatch(method, full_path, query, body, token)
            return answer
        finally:
            timed.append(dict(
                kind=request_kind(method, _logged_path(full_path), query),
                start=start, seconds=time.perf_counter() - began,
                search=(query.get('search') or [''])[-1],
                bytes=len(answer[2].encode('utf-8')) if answer else 0))

    engine._dispatch = timed_dispatch     # an instance attribute: the fake is unchanged
    return timed


def busy_seconds(timed):
    """Given timed requests, return the time during which the engine handled
    at least one (the union of their intervals)."""
    total, end = 0.0, None
    for start, stop in sorted((r['start'], r['start'] + r['seconds']) for r in timed):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def marks(log_text, started, wall):
    """Given the tool's log, the run's start (epoch s) and wall time, return
    {name: epoch s} of the steps around the waits: sched (the scheduler's
    start), removing (the removals' start, after the slave is mounted and
    confirmed), slave_off (the slave unmounted: repair and verify done),
    removed (all snapshots gone, as the tool saw it), exit."""
    found = {'exit': started + wall}
    lines = log_times(log_text)
    for name, text in (('master', 'mounting the master volume'),
                       ('ovf', 'storage domain .*: asking the engine to write'),
                       ('sched', 'replicating:'), ('removing', 'removing '),
                       ('removed', r'all \d+ snapshots removed')):
        hits = [seconds for seconds, message in lines if re.match(text, message)]
        found[name] = hits[0] if hits else None
    if found['removing'] is not None:
        hits = [seconds for seconds, message in lines
                if seconds >= found['removing'] and message.startswith('unmounted ')]
        found['slave_off'] = hits[0] if hits else None
    else:
        found['slave_off'] = None
    return found


def floor_seconds(timed, steps, create, merge, ovf_delay):
    """Given timed requests, the marks of the tool's steps, the create and
    merge latencies and the OVF store's write delay, return the floor: what
    a run that wastes nothing waiting on the engine still takes. That is
    the engine's busy time on the requests no run can avoid (login, API
    root, storage domains, the VM list pages before the first snapshot POST,
    the OVF store's update, the POSTs, the DELETEs, the event, the logout),
    plus the engine's latencies (the OVF store write, the snapshot, the
    merge), plus the tool's own steps that sit between the waits (its wall
    time on them, from its log): the master's mount up to the OVF store's
    update (the OVF store's disks asked for, their .meta read), from the scheduler's start
    to the removals' start (geo-replication, the slave mount, the confirm,
    the overlays' sizes: no merge may change a base before it is confirmed),
    the part of repair + verify + slave unmount that outlasts the merges
    (they run at the same time), and the master's unmount after the last
    merge is seen. The process start-up (Python, the SDK) is not in it."""
    first_post = min((r['start'] for r in timed
                      if r['kind'] == 'POST /vms/{id}/snapshots'), default=float('inf'))
    needed = [r for r in timed
              if UNAVOIDABLE.match(r['kind'].split('?')[0])
              or UNAVOIDABLE.match(r['kind'])
              or (r['kind'].startswith('GET /vms?') and r['start'] < first_post)]
    own = 0.0
    if steps['master'] is not None and steps['ovf'] is not None:
        own += steps['ovf'] - steps['master']
    if steps['sched'] is not None and steps['removing'] is not None:
        own += steps['removing'] - steps['sched']
    deletes = [r['start'] + r['seconds'] for r in timed
               if r['kind'].startswith('DELETE /vms/{id}/snapshots/{id}')]
    if deletes and steps['slave_off'] is not None:
        own += max(0.0, steps['slave_off'] - max(deletes) - merge)
    if steps['removed'] is not None:
        after = [r['start'] for r in timed
                 if r['kind'].startswith('POST /events') and r['start'] >= steps['removed']]
        own += max(0.0, (min(after) if after else steps['exit']) - steps['removed'])
    return busy_seconds(needed) + ovf_delay + create + merge + own


def lags(engine, steps):
    """Given the engine after a run and the marks of the tool's steps,
    return (last snapshot ok -> the scheduler's start, the later of the last
    merge done and the slave's unmount -> the tool's "all N snapshots
    removed"), seconds; None where not known. Nothing but the tool's own
    detection sits in either: the quiesce report between the first pair is
    a few log lines; the repair and verify that may outlast the merges are
    in the floor, not in the lag."""
    created = [e['time'].timestamp() for e in engine.engine_events(68)]
    merged = [e['time'].timestamp() for e in engine.engine_events(356)]
    lag_ok = steps['sched'] - max(created) if created and steps['sched'] else None
    lag_merge = None
    if merged:
        seen = steps['removed'] if steps['removed'] is not None else steps['exit']
        lag_merge = seen - max([max(merged)] + ([steps['slave_off']]
                                                if steps['slave_off'] else []))
    return lag_ok, lag_merge


def write_timeline(path, engine, timed):
    """Given a file path, the engine after a run and its timed requests,
    write the engine's side of the snapshot wait, one line per request
    (epoch start, engine seconds, kind) with the snapshot-ok events (68) in
    between: what the tool's "lag ok" is made of, beside the tool's log."""
    lines = [(e['time'].timestamp(), 'event 68 %s' % e.get('id', ''))
             for e in engine.engine_events(68)]
    lines += [(r['start'], 'request %.3f s %s' % (r['seconds'], r['kind']))
              for r in timed if not r['kind'].startswith(('POST /vms', 'DELETE'))]
    with open(path, 'w') as out:
        for when, what in sorted(lines):
            out.write('%s %s\n' % (datetime.datetime.fromtimestamp(when).strftime(
                '%H:%M:%S.%f')[:-3], what))


def polls(timed):
    """Given timed requests, return the VM list polls as (start, end, pages):
    a poll is a run of 'page 1', 'page 2', ... list requests."""
    found = []
    for record in sorted(timed, key=lambda r: r['start']):
        if not record['kind'].startswith('GET /vms?'):
            continue
        end = record['start'] + record['seconds']
        if re.search(r'page 1$', record['search']) or not found:
            found.append([record['start'], end, 1])
        else:
            found[-1][1] = end
            found[-1][2] += 1
    return found


# One run of the tool --------------------------------------------------------------------

def run_tool(ca, vm_count, args, merge_latency):
    """Given the number of VMs and the merge latency, run vmbackup.py once
    against a fresh fake engine and fake gluster sites; return what was
    measured."""
    with tempfile.TemporaryDirectory(prefix='vmbackup-bench-') as scratch, \
            FakeEngine(ca=ca, user=USER, password=PASSWORD,
                       snapshot_delay=args.create_latency,
                       merge_delay=merge_latency) as engine:
        scratch = pathlib.Path(scratch)
        try:
            site = Site(scratch, engine)
            disks = 0
            for index in range(vm_count):
                count = 1 + index % 2
                disks += count
                engine.add_vm('vm%04d' % index, disks=[
                    dict(sd=site.sd_id, content=DISK_CONTENT) for _ in range(count)])
            connection = {'timeout': '120'}
            if args.connections is not None:
                connection['connections'] = str(args.connections)
            config = site.config(
                connection=connection,
                gluster={'schedule_georep': str(INSTANT_SCHEDULER)},
                snapshot={'wait_timeout': '30',
                          'poll_interval': '%g' % args.poll_interval})
            timed = time_requests(engine)
            log_path = scratch / 'vmbackup.log'
            with open(log_path, 'wb') as log_file:
                started = time.time()
                began = time.monotonic()
                process = subprocess.Popen(site.command(*(['-v'] if args.logs else []),
                                                        config=config),
                                           env=site.env(), stdin=subprocess.DEVNULL,
                                           stdout=log_file, stderr=subprocess.STDOUT)
                watchdog = threading.Timer(RUN_LIMIT, process.kill)
                watchdog.daemon = True
                watchdog.start()
                _, status, usage = os.wait4(process.pid, 0)
                wall = time.monotonic() - began
                watchdog.cancel()
            process.returncode = os.waitstatus_to_exitcode(status)
            log_text = log_path.read_text(errors='replace')
            if args.logs:
                os.makedirs(args.logs, exist_ok=True)
                shutil.copyfile(str(log_path), os.path.join(
                    args.logs, 'vmbackup-%d-%g.log' % (vm_count, merge_latency)))
            if args.logs:
                write_timeline(os.path.join(args.logs, 'engine-%d-%g.txt' % (
                    vm_count, merge_latency)), engine, timed)
            cleanup = CLEANUP_LINE.search(log_text)
            steps = marks(log_text, started, wall)
            lag_ok, lag_merge = lags(engine, steps)
            bound = args.create_latency + merge_latency
            return dict(
                vms=vm_count, disks=disks, wall=wall, merge=merge_latency,
                bound=bound, floor=floor_seconds(timed, steps, args.create_latency,
                                                 merge_latency, engine.ovf_delay),
                bytes=sum(r['bytes'] for r in timed), busy=busy_seconds(timed),
                lag_ok=lag_ok, lag_merge=lag_merge,
                code=process.returncode,
                event=engine.events[-1]['severity'] if engine.events else 'none',
                requests=collections.Counter(
                    request_kind(r['method'], r['path'], r['query'])
                    for r in engine.requests),
                timed=timed, started=started, log=log_text,
                load=os.getloadavg()[0],
                rss_mib=usage.ru_maxrss / 1024,
                deleted=int(cleanup.group(1)) if cleanup else None,
                looked_up=int(cleanup.group(2)) if cleanup else None)
        finally:
            for point in reversed(mounts_under(scratch)):
                subprocess.run(['umount', '-l', point], check=False)


def targets_met(result, short=None):
    """Given a row's result (and, for a --long-merge row, the row of the
    same N with the usual merges), return the targets it misses."""
    ratio = result['wall'] / result['floor']
    per_vm = sum(result['requests'].values()) / result['vms']
    problems = []
    if ratio > TARGET_RATIO:
        problems.append('wall/floor > %g' % TARGET_RATIO)
    if per_vm > TARGET_REQUESTS_PER_VM:
        problems.append('req/VM > %g' % TARGET_REQUESTS_PER_VM)
    for key, label in (('lag_ok', 'lag ok'), ('lag_merge', 'lag merge')):
        if result[key] is None or result[key] > TARGET_LAG:
            problems.append('%s > %g' % (label, TARGET_LAG))
    if short is not None and (result['bytes'] / result['vms']
                              > TARGET_LONG_BYTES * short['bytes'] / short['vms']):
        problems.append('KiB/VM > %g x the %g s merges\'' % (TARGET_LONG_BYTES,
                                                             short['merge']))
    if result['looked_up'] is None or result['looked_up'] > 3 * result['disks']:
        problems.append('cleanup not O(disks)')
    return problems


def print_row(result, short=None):
    total = sum(result['requests'].values())
    problems = targets_met(result, short)
    print(COLUMNS[0] % (
        result['vms'], result['disks'], '%g' % result['merge'], '%.2f' % result['wall'],
        '%.2f' % result['bound'], '%.2f' % (result['wall'] / result['bound']),
        '%.2f' % result['floor'], '%.2f' % (result['wall'] / result['floor']),
        total, '%.2f' % (total / result['vms']),
        '%.2f' % (result['bytes'] / result['vms'] / 1024), '%.2f' % result['busy'],
        '-' if result['lag_ok'] is None else '%.2f' % result['lag_ok'],
        '-' if result['lag_merge'] is None else '%.2f' % result['lag_merge'],
        '%.1f' % result['rss_mib'],
        '-' if result['looked_up'] is None else result['looked_up'],
        '-' if result['deleted'] is None else result['deleted'],
        result['code'], result['event'], '%.1f' % result['load'],
        'met' if not problems else 'MISSED: ' + ', '.join(problems)), flush=True)


def log_times(log_text):
    """Given the tool's log, return [(epoch seconds, message)]."""
    lines = []
    for line in log_text.splitlines():
        match = LOG_LINE.match(line)
        if match:
            seconds = time.mktime(time.strptime(match.group(1), '%Y-%m-%d %H:%M:%S'))
            lines.append((seconds + int(match.group(2)) / 1000, match.group(3)))
    return lines


def print_details(result, args):
    """Given the largest run, print its requests by kind, the engine-side
    time, the polls and the phases of the run."""
    timed = result['timed']
    total = sum(result['requests'].values())
    print('\nRequests at N = %d, by kind (count, per VM, engine-side mean ms '
          'and total s, lock wait included):' % result['vms'])
    by_kind = collections.defaultdict(list)
    for record in timed:
        by_kind[record['kind']].append(record['seconds'])
    for kind, count in result['requests'].most_common():
        seconds = by_kind.get(kind, [])
        if seconds:
            timing = '%8.1f %8.2f' % (1000 * sum(seconds) / len(seconds), sum(seconds))
        else:
            timing = '%8s %8s' % ('-', '-')
        print('  %6d %6.2f %s  %s' % (count, count / result['vms'], timing, kind))
    print('  %6d %6.2f  in all; the engine was busy %.2f s of the %.2f s run'
          % (total, total / result['vms'], busy_seconds(timed), result['wall']))

    started = result['started']
    lines = log_times(result['log'])
    marks = [started]
    for label, text in PHASES[1:]:
        after = max([mark for mark in marks if mark is not None])
        found = [seconds for seconds, message in lines
                 if seconds >= after and message.startswith(text)]
        marks.append(found[0] if found else None)
    marks.append(started + result['wall'])
    print('\nPhases at N = %d (from the tool\'s log, 1 ms resolution):' % result['vms'])
    for index, (label, _) in enumerate(PHASES):
        begin, end = marks[index], next(
            (mark for mark in marks[index + 1:] if mark is not None), None)
        if begin is None or end is None:
            print('  %-28s        -' % label)
            continue
        print('  %-28s %7.2f s   (%6.2f -> %6.2f)' % (
            label, end - begin, begin - started, end - started))

    creates = [r for r in timed if r['kind'] == 'POST /vms/{id}/snapshots']
    deletes = [r for r in timed if r['kind'] == 'DELETE /vms/{id}/snapshots/{id}']
    found = polls(timed)
    if creates:
        first = min(r['start'] for r in creates)
        last = max(r['start'] + r['seconds'] for r in creates)
        print('\n  %d snapshot POSTs sent over %.2f s (%.1f ms each, engine side '
              '%.1f ms); the last snapshot is ready %.2f s after the first POST'
              % (len(creates), last - first, 1000 * (last - first) / len(creates),
                 1000 * sum(r['seconds'] for r in creates) / len(creates),
                 last - first + args.create_latency))
    if deletes:
        first = min(r['start'] for r in deletes)
        last = max(r['start'] + r['seconds'] for r in deletes)
        print('  %d snapshot DELETEs sent over %.2f s (%.1f ms each, engine side '
              '%.1f ms)' % (len(deletes), last - first,
                            1000 * (last - first) / len(deletes),
                            1000 * sum(r['seconds'] for r in deletes) / len(deletes)))
    if found:
        durations = [end - start for start, end, _ in found]
        first_delete = min((r['start'] for r in deletes), default=float('inf'))
        waiting = sum(1 for start, _, _ in found[1:] if start < first_delete)
        print('  %d VM list scans: 1 to choose, %d polls for the snapshots, %d '
              'for the merges; up to %d page%s each, %.2f s each on average '
              '(%.2f s the longest), %.2f s in all; start+duration (s): %s' % (
                  len(found), waiting, len(found) - 1 - waiting,
                  max(p for _, _, p in found),
                  '' if max(p for _, _, p in found) == 1 else 's',
                  sum(durations) / len(durations), max(durations), sum(durations),
                  ' '.join('%.2f+%.2f' % (start - started, end - start)
                           for start, end, _ in found)))


# The remote cleanup against a walk ------------------------------------------------------

def build_tree(root, file_count, rng):
    """Given an empty directory, lay out a storage domain of about
    file_count tiny files, 2 volumes per disk (a base, INTERNAL, and its
    overlay, the LEAF, with .meta lines as vdsm writes them), 3 files per
    volume; return the sd id and [(disk id, volume id)]."""
    sd_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    images = os.path.join(root, sd_id, 'images')
    os.makedirs(os.path.join(root, sd_id, 'dom_md'))
    os.makedirs(images)
    volumes = []
    disk_id = parent = None
    for index in range(max(1, file_count // 3)):
        if index % 2 == 0:
            disk_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            os.mkdir(os.path.join(images, disk_id))
            parent = vmbackup.BLANK_UUID
        volume_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        volumes.append((disk_id, volume_id))
        write_volume(os.path.join(images, disk_id, volume_id), meta_text(
            sd_id, disk_id, parent, 'INTERNAL' if index % 2 == 0 else 'LEAF'))
        parent = volume_id
    return sd_id, volumes


def meta_text(sd_id, disk_id, parent, voltype):
    return ('CAP=1073741824\nDOMAIN=%s\nFORMAT=COW\nIMAGE=%s\nLEGALITY=LEGAL\n'
            'PUUID=%s\nVOLTYPE=%s\nEOF\n' % (sd_id, disk_id, parent, voltype)).encode()


def write_volume(path, meta):
    for suffix, data in (('', b'QFI\xfb'), ('.meta', meta), ('.lease', b'\0')):
        descriptor = os.open(path + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(descriptor, data)
        finally:
            os.close(descriptor)


def walk_and_delete(root, volume_ids):
    """The 2016 way, made as cheap as it gets: one walk of the whole tree,
    every name matched against the set of ids (fnmatch(name, id + '*') for
    a 36-character id is name[:36] == id); then delete what was found.
    Return (paths deleted, directories read, entries seen, seconds the
    walk took before the deletions)."""
    began = time.perf_counter()
    wanted = set(volume_ids)
    found = []
    directories = entries = 0
    for directory, dirnames, filenames in os.walk(root):
        directories += 1
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            if name[:36] in wanted:
                found.append(os.path.join(directory, name))
    walked = time.perf_counter() - began
    for path in found:
        os.unlink(path)
    return found, directories, entries, walked


def cleanup_against_walk(file_count, seed=4):
    """Given a number of files, time repair_chain (what step 7 does at the
    slave for each disk) and a walk on the same tree, deleting the same
    files; print both and the ratio."""
    rng = random.Random(seed)
    base = tempfile.mkdtemp(prefix='vmbackup-bench-tree-')
    try:
        began = time.perf_counter()
        sd_id, volumes = build_tree(base, file_count, rng)
        built = time.perf_counter() - began
        bases = dict(volumes[0::2])           # disk id -> its base
        leaves = volumes[1::2]                # the overlay of each disk
        picked = rng.sample(leaves, min(OVERLAYS_PICKED, len(leaves)))
        paths = [os.path.join(sd_id, 'images', disk_id, volume_id + suffix)
                 for disk_id, volume_id in picked
                 for suffix in vmbackup.OVERLAY_SUFFIXES]
        print('\nRemote cleanup on a slave-like tree: %d files (%d disks, %d '
              'volumes), built in %.1f s; %d overlays picked (%d paths)'
              % (3 * len(volumes), len({d for d, _ in volumes}), len(volumes),
                 built, len(picked), len(paths)), flush=True)

        disks = [vmbackup.DiskRecord(disk_id=disk_id, sd_id=sd_id,
                                     base_id=bases[disk_id], overlay_id=volume_id)
                 for disk_id, volume_id in picked]
        files = {'looked up': 0, 'deleted': 0}
        began = time.perf_counter()
        problems = [vmbackup.repair_chain(base, disk, files) for disk in disks]
        ours = time.perf_counter() - began
        deleted = files['deleted']
        ours_gone = {path for path in paths if not os.path.exists(os.path.join(base, path))}
        if any(problems) or deleted != len(paths) or len(ours_gone) != len(paths):
            raise SystemExit('repair_chain did not delete the %d picked files: %s'
                             % (len(paths), [p for p in problems if p]))
        for disk in disks:                       # put them back for the walk
            write_volume(os.path.join(base, sd_id, 'images', disk.disk_id,
                                      disk.overlay_id),
                         meta_text(sd_id, disk.disk_id, disk.base_id, 'LEAF'))

        began = time.perf_counter()
        found, directories, entries, walk_only = walk_and_delete(base, [v for _, v in picked])
        walked = time.perf_counter() - began
        walk_gone = {os.path.relpath(path, base) for path in found}
        if walk_gone != ours_gone:
            raise SystemExit('the walk found other files than repair_chain '
                             '(%d against %d)' % (len(walk_gone), len(ours_gone)))
        operations = 2 * len(disks) + files['looked up'] + deleted + len(disks)
        print('  repair_chain:    %8.3f s  %7d .meta reads, %d look-ups + %d '
              'unlinks, %d .meta rewritten in place'
              % (ours, 2 * len(disks), files['looked up'], deleted, len(disks)))
        print('  os.walk + match: %8.3f s  %7d directories read, %d entries '
              'seen + %d unlinks (no .meta repaired)' % (walked, directories,
                                                         entries, len(found)))
        print('  walk / repair_chain: %.1f times the time, %.1f times the '
              'file-system operations (local disk, warm cache)' % (
                  walked / ours, (directories + entries + len(found))
                  / operations))
        print('  the 2016 tool walked once per overlay (os.walk + fnmatch(id + '
              "'*')): %d walks of %.3f s, about %.0f s here"
              % (len(picked), walk_only, len(picked) * walk_only))
    finally:
        began = time.perf_counter()
        shutil.rmtree(base, ignore_errors=True)
        print('  tree removed in %.1f s' % (time.perf_counter() - began))


def main(argv=None):
    args = parse_arguments(argv)
    if os.geteuid() != 0:
        print('make bench mounts the fake slave volume (mount --bind): run it '
              'as root, as vmbackup.py itself runs on a gluster node.')
        return 1
    print('vmbackup.py against the fake engine: create latency %g s, merge '
          'latency %g s (concurrent), poll_interval %g s, connections %s, '
          'scheduler instant; targets wall/floor <= %g, req/VM <= %g, each '
          'lag <= %g s, KiB/VM at %g s merges <= %g x\n' % (
              args.create_latency, args.merge_latency, args.poll_interval,
              args.connections if args.connections is not None
              else '%d (default)' % vmbackup.DEFAULT_CONNECTIONS,
              TARGET_RATIO, TARGET_REQUESTS_PER_VM, TARGET_LAG, args.long_merge,
              TARGET_LONG_BYTES), flush=True)
    print(COLUMNS[0] % COLUMNS[1], flush=True)
    ca = trustme.CA()
    results = []
    for vm_count in args.vms:
        result = run_tool(ca, vm_count, args, args.merge_latency)
        results.append(result)
        print_row(result)
    largest = max(results, key=lambda result: result['vms'])
    checked = [(result, None) for result in results]
    if args.long_merge > 0:
        long_run = run_tool(ca, largest['vms'], args, args.long_merge)
        results.append(long_run)
        checked.append((long_run, largest))
        print_row(long_run, largest)
    print_details(largest, args)
    failed = [r for r in results if r['code'] != 0 or r['event'] != 'normal']
    for result in failed:
        print('\nThe run with N = %d failed (exit %d, event %s); its log:\n%s'
              % (result['vms'], result['code'], result['event'], result['log']))
    if args.files > 0:
        cleanup_against_walk(args.files)
    if failed:
        return 1
    if args.strict and any(targets_met(result, short) for result, short in checked):
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
