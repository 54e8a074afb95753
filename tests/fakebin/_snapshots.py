"""gluster's volume snapshots, for the fake gluster CLI: `gluster --mode=script
snapshot WORDS [--xml]` as GlusterFS 10.3's CLI and glusterd answer them.

Sources (github:gluster/glusterfs, tag v10.3):
- the syntax: cli/src/cli-cmd-snapshot.c (snapshot_cmds) and
  cli/src/cli-cmd-parser.c (cli_snap_create_parse: SNAPNAME VOLNAME
  [no-timestamp] [description TEXT] [force], a name of alphanumerics, "-"
  and "_" shorter than 256; cli_snap_info_parse: info [(NAME | volume
  VOL)]; cli_snap_list_parse: list [VOL]; cli_snap_delete_parse: delete
  (all | NAME | volume VOL), its question answered yes by --mode=script;
  cli_snap_clone_parse: clone CLONENAME SNAPNAME; activate NAME [force]);
- the plain answers: cli/src/cli-rpc-ops.c (gf_cli_snapshot_cbk: "snapshot
  create: success: Snap %s created successfully"; a failure "snapshot
  create: failed: %s" on stderr; gf_cli_snapshot_for_delete / delete cbk:
  "snapshot delete: %s: snap removed successfully"; "No snapshots
  present"), and cli/src/cli-cmd-snapshot.c (cli_cmd_snapshot_cbk: after
  a failure "Snapshot command failed" on stdout), cli/src/input.c
  (cli_batch: exit(-ret), so a failure exits 1);
- the XML: cli/src/cli-xml-output.c (cli_xml_output_snapshot: cliOutput
  with opRet, opErrno, opErrstr, and on success snapCreate/snapshot{name,
  uuid}, snapList{count, snapshot*}, snapInfo (cli_xml_snapshot_info: an
  originVolume{name, snapCount, snapRemaining} first when asked by volume,
  count, snapshots/snapshot{name, uuid, description, createTime, volCount,
  snapVolume{name, status[, originVolume]}}), snapActivate/snapshot, and
  CloneCreate/volume{name, uuid}); with --xml a refusal is opRet -1 and
  opErrstr, exit 0 (the CLI's exit is whether it wrote the XML);
- glusterd's refusals, in the order glusterd_snapshot_create_prevalidate
  checks them (xlators/mgmt/glusterd/src/glusterd-snapshot.c): "Snapshot
  %s already exists", "Volume (%s) does not exist ", "geo-replication
  session is running for the volume %s. Session needs to be stopped
  before taking a snapshot." (gd_vol_is_geo_rep_active: a volume that is
  a session's primary; a slave volume only in a cascade), "The number of
  existing snaps has reached the effective maximum limit of %lu, for the
  volume (%s). Please delete few snapshots before taking further
  snapshots.", then per brick (glusterd_snap_create_clone_common_prevalidate)
  "Snapshot is supported only for thin provisioned LV. Ensure that all
  bricks of %s are thinly provisioned LV."; and "Snapshot (%s) does not
  exist", "Snapshot %s is already activated.", "Snapshot %s is already
  deactivated.", "Snapshot %s is not activated" (clone), "Volume with
  name:%s already exists" (clone);
- createTime: glusterd_snapshot_get_snap_detail, gf_time_fmt(...,
  gf_timefmt_FT): "%Y-%m-%d %H:%M:%S", UTC; a snapshot is created
  deactivated (activate-on-create is off by default) and its volume's
  status is "Started" or "Stopped" (glusterd_snapshot_get_snapvol_detail);
  its volume is read-only to clients (glusterd-volgen.c: "As of now
  snapshot volume is read-only").

State: FAKE_GLUSTER_ROOT/snapshots.json ({"snapshots": [{name, uuid,
volume, description, time, status}]}); a snapshot's files are a copy of
volumes/VOL made at create, in snaps/NAME (the fake glusterfs mounts
/snaps/NAME/VOL from there). A volume is a directory under volumes/.

behaviour {"gluster": {...}} for the refusals:
  "lvm": false                  the node has no lvm2: glusterd_handle_snapshot
                                refuses every snapshot command, info and list
                                too, "LVM commands not found, snapshot
                                functionality is disabled" (no /sbin/lvcreate,
                                glusterd_is_lvm_cmd_available; what the real
                                lab's 10.3 answers, tests/gluster/NOTES.md)
  "thin_provisioned": false     the bricks are not thin LVs (every create)
  "geo_rep_running": [VOL...]   a geo-replication session of VOL runs
  "snap_max_hard_limit": N      glusterd's effective limit (default 256)
  "now": UNIX_TIME              the clock of snapshot create
"""
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time
import uuid
from xml.sax.saxutils import escape

import _fake

HARD_LIMIT = 256            # glusterd.h, GLUSTERD_SNAPS_MAX_HARD_LIMIT
NAME = re.compile(r'^[A-Za-z0-9_-]+$')


class Refused(Exception):
    """glusterd said no: op_ret -1 and this op_errstr."""


@contextlib.contextmanager
def state():
    path = os.path.join(_fake.root(), 'snapshots.json')
    with open(os.path.join(_fake.root(), 'snapshots.lock'), 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as handle:
                data = json.load(handle)
        except FileNotFoundError:
            data = {'snapshots': []}
        yield data
        with open(path + '.new', 'w') as handle:
            json.dump(data, handle, indent=1)
        os.replace(path + '.new', path)


def snaps_dir(name):
    return os.path.join(_fake.root(), 'snaps', name)


def find(data, name):
    for snapshot in data['snapshots']:
        if snapshot['name'] == name:
            return snapshot
    return None


def volume_exists(name):
    return os.path.isdir(_fake.volume_dir(name))


def of_volume(data, volume):
    return [s for s in data['snapshots'] if s['volume'] == volume]


def gmt(epoch):
    return time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(epoch))


def usage(pattern):
    """cli_cmd_snapshot_cbk after a parse error: cli_usage_out, exit 1."""
    print('Usage:\n%s' % pattern, file=sys.stderr)
    raise SystemExit(1)


# ------------------------------------------------------------------ commands

def create(words, settings):
    pattern = ('snapshot create <snapname> <volname> [no-timestamp] '
               '[description <description>]')
    if len(words) < 2:
        usage(pattern)
    name, rest = words[0], words[1:]
    if len(name) >= 255:
        print('snapshot create: failed: snapname cannot exceed 255 characters.',
              file=sys.stderr)
        raise SystemExit(1)
    if not NAME.match(name):
        print('Snapname can contain only alphanumeric, "-" and "_" characters',
              file=sys.stderr)
        raise SystemExit(1)
    volumes = []
    while rest and rest[0] not in ('description', 'force', 'no-timestamp'):
        volumes.append(rest.pop(0))
    if len(volumes) != 1:
        usage(pattern)
    timestamp = True
    if rest[:1] == ['no-timestamp']:
        timestamp = False
        rest.pop(0)
    description = None
    if rest[:1] == ['description']:
        rest.pop(0)
        if not rest:
            print('Please provide a description', file=sys.stderr)
            raise SystemExit(1)
        description = rest.pop(0)
        if len(description) >= 1024:
            print('snapshot create: description truncated: Description '
                  'provided is longer than 1024 characters')
            description = description[:1024]
    if rest and rest != ['force']:
        usage(pattern)
    now = settings.get('now', time.time())
    if timestamp:   # glusterd_snapshot_create_commit: _GMT-%Y.%m.%d-%H.%M.%S
        name += time.strftime('_GMT-%Y.%m.%d-%H.%M.%S', time.gmtime(now))
    volume = volumes[0]
    with state() as data:
        if description is not None and not description:
            raise Refused('Snapshot cannot be created with empty description')
        if find(data, name):
            raise Refused('Snapshot %s already exists' % name)
        if not volume_exists(volume):
            raise Refused('Volume (%s) does not exist ' % volume)
        if volume in settings.get('geo_rep_running', []):
            raise Refused('geo-replication session is running for the volume '
                          '%s. Session needs to be stopped before taking a '
                          'snapshot.' % volume)
        limit = min(settings.get('snap_max_hard_limit', HARD_LIMIT), HARD_LIMIT)
        if len(of_volume(data, volume)) >= limit:
            raise Refused('The number of existing snaps has reached the '
                          'effective maximum limit of %d, for the volume (%s). '
                          'Please delete few snapshots before taking further '
                          'snapshots.' % (limit, volume))
        if settings.get('thin_provisioned', True) is False:
            raise Refused('Snapshot is supported only for thin provisioned LV. '
                          'Ensure that all bricks of %s are thinly provisioned '
                          'LV.' % volume)
        os.makedirs(os.path.dirname(snaps_dir(name)), exist_ok=True)
        subprocess.run(['cp', '-a', '--sparse=always', _fake.volume_dir(volume),
                        snaps_dir(name)], check=True)
        snapshot = dict(name=name, uuid=str(uuid.uuid4()), volume=volume,
                        description=description, time=int(now),
                        status='Stopped', volume_id=uuid.uuid4().hex)
        data['snapshots'].append(snapshot)
    return ('snapshot create: success: Snap %s created successfully' % name,
            '<snapCreate><snapshot><name>%s</name><uuid>%s</uuid></snapshot>'
            '</snapCreate>' % (escape(name), snapshot['uuid']))


def snapshot_xml(snapshot, data, by_volume):
    origin = ''
    if not by_volume:
        origin = origin_xml(data, snapshot['volume'])
    return ('<snapshot><name>%s</name><uuid>%s</uuid><description>%s'
            '</description><createTime>%s</createTime><volCount>1</volCount>'
            '<snapVolume><name>%s</name><status>%s</status>%s</snapVolume>'
            '</snapshot>' % (escape(snapshot['name']), snapshot['uuid'],
                             escape(snapshot['description'] or ''),
                             gmt(snapshot['time']), snapshot['volume_id'],
                             snapshot['status'], origin))


def origin_xml(data, volume):
    count = len(of_volume(data, volume))
    return ('<originVolume><name>%s</name><snapCount>%d</snapCount>'
            '<snapRemaining>%d</snapRemaining></originVolume>'
            % (escape(volume), count, max(HARD_LIMIT - count, 0)))


def snapshot_text(snapshot):
    return ('Snapshot                  : %s\nSnap UUID                 : %s\n'
            'Description               : %s\nCreated                   : %s\n'
            % (snapshot['name'], snapshot['uuid'], snapshot['description'] or '',
               gmt(snapshot['time'])))


def info(words, settings):
    with state() as data:
        if not words:
            chosen, by_volume = data['snapshots'], False
        elif words[0] != 'volume' and len(words) == 1:
            snapshot = find(data, words[0])
            if snapshot is None:
                raise Refused('Snapshot (%s) does not exist' % words[0])
            chosen, by_volume = [snapshot], False
        elif words[0] == 'volume' and len(words) == 2:
            if not volume_exists(words[1]):
                raise Refused('Volume (%s) does not exist' % words[1])
            chosen, by_volume = of_volume(data, words[1]), True
        else:
            usage('snapshot info [(snapname | volume <volname>)]')
        xml = '<snapInfo>%s<count>%d</count><snapshots>%s</snapshots></snapInfo>' % (
            origin_xml(data, words[1]) if by_volume else '', len(chosen),
            ''.join(snapshot_xml(s, data, by_volume) for s in chosen))
    text = '\n'.join(snapshot_text(s) for s in chosen) or 'No snapshots present'
    return text, xml


def listing(words, settings):
    if len(words) > 1:
        usage('snapshot list [volname]')
    with state() as data:
        if words and not volume_exists(words[0]):
            raise Refused('Volume (%s) does not exist' % words[0])
        chosen = of_volume(data, words[0]) if words else data['snapshots']
    xml = '<snapList><count>%d</count>%s</snapList>' % (len(chosen), ''.join(
        '<snapshot>%s</snapshot>' % escape(s['name']) for s in chosen))
    return '\n'.join(s['name'] for s in chosen) or 'No snapshots present', xml


def delete(words, settings):
    if len(words) != 1 or words[0] in ('all', 'volume'):
        # delete all / volume VOL: not a call vmbackup.py makes
        usage('snapshot delete (all | snapname | volume <volname>)')
    name = words[0]
    with state() as data:
        snapshot = find(data, name)
        if snapshot is None:
            raise Refused('Snapshot (%s) does not exist' % name)
        data['snapshots'].remove(snapshot)
        subprocess.run(['rm', '-rf', snaps_dir(name)], check=True)
    return ('snapshot delete: %s: snap removed successfully' % name,
            '<snapDelete><snapshots><snapshot><status>Success</status>'
            '<name>%s</name><uuid>%s</uuid></snapshot></snapshots></snapDelete>'
            % (escape(name), snapshot['uuid']))


def activation(words, settings, activate):
    verb = 'activate' if activate else 'deactivate'
    if not words or len(words) > (2 if activate else 1) or words[1:] not in ([], ['force']):
        usage('snapshot %s <snapname>%s' % (verb, ' [force]' if activate else ''))
    name = words[0]
    with state() as data:
        snapshot = find(data, name)
        if snapshot is None:
            raise Refused('Snapshot (%s) does not exist' % name)
        wanted = 'Started' if activate else 'Stopped'
        if snapshot['status'] == wanted and words[1:] != ['force']:
            raise Refused('Snapshot %s is already %sd.' % (name, verb))
        snapshot['status'] = wanted
    tag = 'snapActivate' if activate else 'snapDeactivate'
    return ('Snapshot %s: %s: Snap %sd successfully' % (verb, name, verb),
            '<%s><snapshot><name>%s</name><uuid>%s</uuid></snapshot></%s>'
            % (tag, escape(name), snapshot['uuid'], tag))


def clone(words, settings):
    if len(words) != 2:
        usage('snapshot clone <clonename> <snapname>')
    clonename, name = words
    if not NAME.match(clonename):
        print('Clonename can contain only alphanumeric, "-" and "_" characters',
              file=sys.stderr)
        raise SystemExit(1)
    with state() as data:
        if volume_exists(clonename):
            raise Refused('Volume with name:%s already exists' % clonename)
        snapshot = find(data, name)
        if snapshot is None:
            raise Refused('Failed to find :%s snap' % name)
        if snapshot['status'] != 'Started':
            raise Refused('Snapshot %s is not activated' % name)
        subprocess.run(['cp', '-a', '--sparse=always', snaps_dir(name),
                        _fake.volume_dir(clonename)], check=True)
    return ('snapshot clone: success: Clone %s created successfully' % clonename,
            '<CloneCreate><volume><name>%s</name><uuid>%s</uuid></volume>'
            '</CloneCreate>' % (escape(clonename), uuid.uuid4()))


COMMANDS = {'create': create, 'info': info, 'list': listing, 'delete': delete,
            'clone': clone,
            'activate': lambda w, s: activation(w, s, True),
            'deactivate': lambda w, s: activation(w, s, False)}


def main(words, settings):
    """Given the words after --mode=script (`snapshot ...`, maybe --xml
    among them) and the behaviour, answer; return the exit status."""
    xml = '--xml' in words
    words = [word for word in words if word != '--xml'][1:]
    if not words or words[0] not in COMMANDS:
        sys.exit('gluster: the fake has no snapshot command %r' % words)
    command = words[0]
    try:
        if settings.get('lvm', True) is False:
            raise Refused('LVM commands not found, snapshot functionality is '
                          'disabled')
        text, body = COMMANDS[command](words[1:], settings)
    except Refused as refusal:
        if xml:
            print('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                  '<cliOutput><opRet>-1</opRet><opErrno>30800</opErrno>'
                  '<opErrstr>%s</opErrstr></cliOutput>' % escape(str(refusal)))
            return 0
        print('snapshot %s: failed: %s' % (command, refusal), file=sys.stderr)
        print('Snapshot command failed')
        return 1
    if xml:
        print('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
              '<cliOutput><opRet>0</opRet><opErrno>0</opErrno><opErrstr/>'
              '%s</cliOutput>' % body)
    else:
        print(text)
    return 0
