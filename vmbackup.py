#!/usr/bin/env python3
"""Back up the disk images of running oVirt VMs on a GlusterFS volume to a
remote site, crash-consistently, through gluster geo-replication.

Geo-replication alone copies disk images while the guests write to them, so
the copy at the remote site may be torn. vmbackup first takes a live
snapshot of every VM on the volume: from then on the guests write into new
overlay images, and the base images stay still while gluster copies them.
Once the copy is complete and confirmed, the overlays are deleted at the
remote site (they were copied in an unknown state), and the snapshots are
removed again (live merge), so that the VMs end the night as they began it.

The steps of a run:

  1. Read the command line and the config file; refuse every bad value at
     once, before anything is contacted (exit 2).
  2. Take the lock for the master volume, an flock on
     LOCK_DIR/vmbackup-MASTERVOL.lock: on gluster's shared storage when it
     is mounted, so that one run per volume goes at a time in the pool;
     else in /run/lock, for this node only (a warning). Exit 3, nothing
     done, when another run holds it, or when a full run of the session
     MASTERVOL -> SLAVE::SLAVEVOL succeeded less than [lock] skip_within
     minutes ago (a run with --vm or --exclude is never skipped and does
     not count; --force runs anyway).
  3. Connect to the oVirt engine, verifying its TLS certificate.
  4. Check that the geo-replication session MASTERVOL -> SLAVE::SLAVEVOL
     and the storage domain the volume backs exist (else exit 1, nothing
     changed). Choose every VM that is up, is not HostedEngine and has a
     disk on that domain, narrowed by --vm and --exclude (a name that
     matches no VM is an error); with --all-vms, every running VM but
     HostedEngine with all its disks, as in 2016. Exit 3, nothing done,
     when a chosen VM has a snapshot of this volume's backup that a live
     run on another node may own.
  5. With [gluster] presync, replicate once first, with its own bound
     (presync_timeout; a failure is only a warning), so that the VMs run
     on overlays only while step 6 carries what was written since. Remove
     any snapshot of this volume's backup left by an earlier run; have the
     engine bring the domain's OVF store up to date and wait for its word
     on the events feed (199: written; 1052: nothing to update, the store
     is current, as on a quiet night), then read the store back through a
     read-only mount of the master and keep it; leave out a VM that
     carries another volume's backup snapshot (a warning); snapshot the
     VMs (disks on that domain only, no memory, description
     "GLUSTER-Geo-rep-snapshot MASTERVOL") all at once, wait until every
     snapshot is ready, and record each disk's image id before (the base)
     and after (the overlay).
  6. Replicate with gluster's schedule_georep.py (checkpoint, wait, stop).
     Its exit 0 is no proof: while it runs, read geo-replication's status
     (gluster volume geo-replication status detail --xml), and confirm that
     this run's checkpoint completed on an Active worker of every replica set
     of the master, that each disk's base at the slave is the master's (size,
     mtime and content: see "What the confirm proves") and that this run's
     snapshots are still there, before anything at the slave changes.
  7. Make the remote copy restorable: mount the slave volume; for each
     confirmed disk delete exactly <sd>/images/<disk>/<overlay> and its
     .meta and .lease, and set VOLTYPE=LEAF in the base's .meta, in place;
     put back the OVF store kept in step 5 where the engine rewrote it;
     verify the copy as a DR engine would import it; unmount. When every
     disk was verified, take a restore point: a gluster snapshot of the
     slave volume on a slave node, over ssh, keeping the newest
     [restore_points] keep of ours (0, none, by default).
  8. Remove the snapshots this run created (live merge), whatever happened
     before, and wait until they are gone (the removals start as soon as
     the copy is confirmed).
  9. Post an event to the engine: normal, or alert naming what failed. Any
     error after the engine is reached, a full disk included, is a failure
     of the run, told in one line.
 10. Log out; write the status file, and the metrics and the monitoring
     ping where configured; exit 0 when every step succeeded, 1 otherwise.

Errors always reach stderr, whatever the logging config says, so cron mails
them.

With --dry-run, steps 1, 3 and 4 are done, without the lock, and the rest is
only printed; it exits 1 when a check of step 4 fails. With --verify, only
the verify of step 7 is done, at the slave mounted read-only, with no engine
and no lock: what a DR administrator runs before a failover; with
--restore-point NAME too, of that restore point instead of the volume. --status and
--check read the last run's status file and nothing else.

Run it nightly on every gluster node of the master volume's pool, as root,
with the same line on each (/etc/cron.d/vmbackup); one node backs up, the
others exit 3:

  30 1 * * * root /usr/bin/vmbackup vmstore backup.example.com vmstore-dr -c /etc/vmbackup/backup.cfg -t 240 -q

Exit status: 0 backed up; 1 the backup failed (an alert event was posted
where the engine could be reached); 2 usage or config error, nothing done;
3 nothing done: another run holds the lock, a full run of the session
succeeded less than [lock] skip_within minutes ago, or a live run on another
node may own a snapshot of ours; silent under -q.

--status and --check take SLAVE SLAVEVOL, before the option, to name the
session where the volume has two.
"""

import argparse
import calendar
import collections
import concurrent.futures
import configparser
import contextlib
import copy
import datetime
import enum
import errno
import fcntl
import glob
import http.client
import io
import json
import logging
import logging.config
import math
import os
import random
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ElementTree

try:
    import ovirtsdk4 as sdk
    import ovirtsdk4.types as types
    import pycurl
except ImportError as error:     # main() says so in one line (exit 2)
    MISSING_SDK = error
    sdk = types = pycurl = None
else:
    MISSING_SDK = None

# For maintainers: the file from top to bottom. Each section starts with a
# "# ==== ..." banner; the steps are numbered as in the docstring above.
#
#   constants, Record, CONFIG_KEYS (every config key: its section, kind,
#     default, check, meaning; it gives KNOWN_KEYS, Settings, the reading,
#     the README's key table check and the man page), Run (what a run
#     collects; exit_status_of decides the exit status from it, once)
#   Step 1   the command line and the config file (parse_config, then
#            check_machine for the files and directories it names)
#   Step 2   the lock (take_lock) and skip_within
#   Step 3   the engine: connection, deadlines, the engine's errors
#   Layers   the engine client (VM look-ups), child processes and mounts,
#            volume files (vdsm's .meta, volume paths, the OVF store's tar)
#   Step 4   choose the VMs (check_and_choose)
#   Step 5   the OVF store kept (write_ovf_stores), then the stale
#            snapshots, the bases, the snapshots and their wait (Feed,
#            Watch, Polls: what to look at, and when)
#   Step 6   replicate (replicate, presync, CheckpointWatch), then confirm
#            the copy (confirm_copies)
#   Step 7   repair the chains and the OVF store (repair_chains,
#            restore_ovf_stores), verify (Verifier), restore points
#   Step 8   remove the snapshots (Removal)
#   Step 9   the event (post_event)
#   Step 10  the status file, metrics, ping; --status and --check read them
#   The run  back_up (the step list), dry_run, verify_only, run_command and
#            main; a run's exit status is exit_status_of's, --check's the
#            Nagios convention's (check_state)
#
# Conventions: a step takes (run, engine) and what earlier steps returned,
# and returns what it produces; a failure is run.fail(...), one line each;
# helpers take plain values. Nothing here imports from the tests.

VERSION = '2.1.0'

EVENT_ORIGIN = 'ovirt-georep-backup'
# the 2016 tool's snapshot description; ours name the volume after it
# (snapshot_description): a run finds, adopts and removes only its own
SNAPSHOT_DESCRIPTION = 'GLUSTER-Geo-rep-snapshot'
HOSTED_ENGINE_NAME = 'HostedEngine'
EVENT_SUCCEEDED = ('Successfully backed up gluster volume {volume} to remote '
                   'site. Backup completed in {minutes} minutes')
EVENT_FAILED = ('Failed to backup gluster volume {volume} to remote site. '
                'Please check backup log for details')
EVENT_DESCRIPTION_LIMIT = 4000

SCHEDULER_CANDIDATES = (
    '/usr/libexec/glusterfs/scripts/schedule_georep.py',   # RPM, since 2019
    '/usr/share/glusterfs/scripts/schedule_georep.py',     # RPM, before
    '/usr/lib/*/glusterfs/scripts/schedule_georep.py',     # Debian, Ubuntu
)
DEFAULT_GLUSTERFS = '/usr/sbin/glusterfs'
DEFAULT_GLUSTER = '/usr/sbin/gluster'
DEFAULT_MASTER_SERVER = 'localhost'
DEFAULT_QEMU_IMG = 'qemu-img'
DEFAULT_MOUNT_LOG = '/var/log/glusterfs/geo-replication/dr_slave.mount.log'
# gluster's shared storage volume, mounted on every node of the pool with
# cluster.enable-shared-storage: where cluster-wide locks and state live
SHARED_STORAGE = '/run/gluster/shared_storage'
# this node only: a directory of root's alone, since /run/lock is writable
# by every user (a lock file held or a symlink planted there by another)
FALLBACK_LOCK_DIR = '/run/lock/vmbackup'
DEFAULT_STORAGE_TIMEOUT = 60.0       # seconds, one access to the lock or status
READ_ONLY_STORAGE_TIMEOUT = 4.0      # the same for --check (NRPE waits 10 s)
DEFAULT_SKIP_WITHIN = 720.0          # minutes: a later run after a success is skipped
FALLBACK_STATUS_DIR = '/var/lib/vmbackup'     # this node only
DEFAULT_PING_TIMEOUT = 10.0          # seconds, one monitoring ping
DEFAULT_CHECK_WARNING = 25.0         # hours since the last success: WARNING
DEFAULT_CHECK_CRITICAL = 49.0        # hours since the last success: CRITICAL
STATUS_VERSION = 1                   # of the status file's schema (README)
PING_BODY_LIMIT = 10000              # bytes of summary sent with a ping
DEFAULT_REQUEST_TIMEOUT = 300        # seconds, one API request
DEFAULT_WAIT_TIMEOUT = 10.0          # minutes, snapshots to appear / to go
DEFAULT_POLL_INTERVAL = 5.0          # seconds, at most, between checks
DEFAULT_CONNECTIONS = 4              # API requests in flight at once
DEFAULT_SCHEDULER_GRACE = 300        # seconds past --timeout before we stop it
KILL_AFTER = 10                      # seconds from SIGTERM to SIGKILL, and after it
CHILD_POLL = 1.0                     # seconds between looks at a running child
FIRST_POLL = 0.25                    # seconds; each next wait is BACKOFF times longer
BACKOFF = 1.25
DEFAULT_MOUNT_TIMEOUT = 120          # seconds for the FUSE client to mount
UMOUNT_TIMEOUT = 60
GLUSTER_CLI_TIMEOUT = 120            # seconds for one gluster CLI call
DEFAULT_RESTORE_SSH = 'ssh -o BatchMode=yes'    # reaches a slave node
DEFAULT_RESTORE_GLUSTER = 'gluster'  # gluster's CLI on that node
# gluster's CLI gives up on glusterd after 120 s (cli/src/cli.c,
# cli_default_conn_timeout); ssh's own connection on top of that
RESTORE_POINT_TIMEOUT = GLUSTER_CLI_TIMEOUT + 60
# a snapshot's description longer than this is cut by gluster's CLI
# (cli/src/cli-cmd-parser.c, cli_snap_create_desc_parse: MAX_SNAP_DESCRIPTION_LEN)
RESTORE_POINT_DESCRIPTION_LIMIT = 1023
# glusterd's cap on a volume's snapshots (xlators/mgmt/glusterd/src/glusterd.h,
# GLUSTERD_SNAPS_MAX_HARD_LIMIT): more can never be kept
RESTORE_POINT_KEEP_MAX = 256
PAGE_SIZE = 100                      # the engine's cap on one search answer
LOOK_PAGE_SIZE = 20                  # VMs per page when looking again at some
REMOVE_ATTEMPTS = 3                  # removals of one snapshot whose merge failed
EVENT_ATTEMPTS = 3
EVENT_LOOKBACK = 100                 # latest events searched for our own

# the largest values the config and the command line take: beyond them a
# wait is a mistake, and the time arithmetic and the waits overflow
MAX_SECONDS = 7 * 86400              # a week, for every timeout in seconds
MAX_MINUTES = 30 * 24 * 60           # 30 days: -t, wait_timeout, skip_within
MAX_CHECK_HOURS = 10 * 365 * 24      # --warning, --critical
MAX_CONNECTIONS = 64                 # [connection] connections
MAX_STORAGE_TIMEOUT = 3600           # seconds, [lock] storage_timeout
LATEST_TIME = 2 ** 32                # a timestamp past this (2106) is garbage
CLOCK_SKEW = 300                     # seconds in the future a timestamp may be

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3

# --check speaks Nagios: its exit status is the service state
CHECK_OK = 0
CHECK_WARNING = 1
CHECK_CRITICAL = 2
CHECK_UNKNOWN = 3
CHECK_STATES = {CHECK_OK: 'OK', CHECK_WARNING: 'WARNING',
                CHECK_CRITICAL: 'CRITICAL', CHECK_UNKNOWN: 'UNKNOWN'}

VOLUME_NAME = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$')
SLAVE_NAME = re.compile(r'^(?:[A-Za-z0-9_][A-Za-z0-9_.-]*@)?[A-Za-z0-9][A-Za-z0-9_.:-]*$')
UUID = re.compile(r'^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-'
                  r'[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z')   # \Z: '$' takes a '\n'
# gluster's CLI takes a snapshot name of these, shorter than 256
# (cli/src/cli-cmd-parser.c, cli_snap_create_parse)
SNAPSHOT_NAME = re.compile(r'^[A-Za-z0-9_-]{1,255}\Z')
OVERLAY_SUFFIXES = ('', '.meta', '.lease')
FOLLOW = 'disk_attachments.disk,snapshots'   # what a VM look-up inlines

# What the engine logs about this run's snapshots: ovirt-engine's AuditLogType
# (backend/manager/modules/common/src/main/java/org/ovirt/engine/core/common/
# AuditLogType.java). The events only say which VMs to look at; what the run
# acts on is always read from the VM.
USER_CREATE_SNAPSHOT_FINISHED_SUCCESS = 68
USER_CREATE_SNAPSHOT_FINISHED_FAILURE = 69
USER_FAILED_CREATE_SNAPSHOT = 117
USER_CREATE_LIVE_SNAPSHOT_FINISHED_FAILURE = 170   # "might cause data inconsistency"
USER_FAILED_REMOVE_SNAPSHOT = 343
USER_REMOVE_SNAPSHOT_FINISHED_SUCCESS = 356
USER_REMOVE_SNAPSHOT_FINISHED_FAILURE = 357
USER_REMOVE_SNAPSHOT_FINISHED_FAILURE_PARTIAL_SNAPSHOT = 359
USER_REMOVE_SNAPSHOT_FINISHED_FAILURE_BASE_IMAGE_NOT_FOUND = 362
FAILED_TO_FREEZE_VM = 10764
NOT_FROZEN = {      # event code -> why the guest's filesystems were not frozen
    FAILED_TO_FREEZE_VM: 'the engine could not freeze its filesystems '
                         '(event FAILED_TO_FREEZE_VM)',
    USER_CREATE_LIVE_SNAPSHOT_FINISHED_FAILURE:
        'the live snapshot failed on the host (event '
        'USER_CREATE_LIVE_SNAPSHOT_FINISHED_FAILURE)',
}
CREATION_ENDS = frozenset((
    USER_CREATE_SNAPSHOT_FINISHED_SUCCESS, USER_CREATE_SNAPSHOT_FINISHED_FAILURE,
    USER_FAILED_CREATE_SNAPSHOT, USER_CREATE_LIVE_SNAPSHOT_FINISHED_FAILURE))
REMOVAL_ENDS = frozenset((
    USER_FAILED_REMOVE_SNAPSHOT, USER_REMOVE_SNAPSHOT_FINISHED_SUCCESS,
    USER_REMOVE_SNAPSHOT_FINISHED_FAILURE,
    USER_REMOVE_SNAPSHOT_FINISHED_FAILURE_PARTIAL_SNAPSHOT,
    USER_REMOVE_SNAPSHOT_FINISHED_FAILURE_BASE_IMAGE_NOT_FOUND))
# What the engine logs about an OVF store update asked for (POST
# /storagedomains/{id}/updateovfstore), the storage domain on the event
# (AuditLogableBase's storage domain id, EventMapper's storage_domain): 199
# written, at the end of ProcessOvfUpdateForStorageDomainCommand (for a
# user; the engine's hourly writer logs nothing); 190 or 1016 failed there;
# 1052 nothing to update, from UpdateOvfStoreForStorageDomainCommand.
# performNextOperation when the domain is not outdated (no store missing or
# OUTDATED, no VM on it changed: ProcessOvfUpdateForStoragePoolCommand.
# proccessDomainsForOvfUpdate): the store there is current.
UPDATE_OVF_FOR_STORAGE_DOMAIN_FAILED = 190
USER_UPDATE_OVF_STORE = 199
UPDATE_FOR_OVF_STORES_FAILED = 1016
OVF_STORES_UPDATE_IGNORED = 1052
OVF_STORE_KEPT = {USER_UPDATE_OVF_STORE: 'written',
                  OVF_STORES_UPDATE_IGNORED: 'current, nothing to update'}
OVF_STORE_ENDS = frozenset((UPDATE_OVF_FOR_STORAGE_DOMAIN_FAILED,
                            UPDATE_FOR_OVF_STORES_FAILED)) | set(OVF_STORE_KEPT)
NO_GUEST_AGENT = ('no guest agent reports from it (the engine shows no guest '
                  'operating system), so nothing froze its filesystems')
FEED_MAX = 1000                      # events asked for at once
NET_FIRST = 30.0                     # seconds to the safety net's first look,
NET_LAST = 300.0                     # then twice as long each time, up to this

# what a VM's copy is, by what the guest agent did at the snapshot
QUIESCED = 'quiesced'
CRASH_CONSISTENT = 'crash-consistent only'

log = logging.getLogger('vmbackup')


class UsageError(Exception):
    """A bad command line or config file: exit 2, nothing done."""


class StorageFailed(Exception):
    """Shared storage, the lock directory or the status directory answered
    with an error of the machine (a stale mount: ENOTCONN), or not at all
    (Hung): exit 1, nothing done; --check says UNKNOWN."""


class Hung(StorageFailed):
    """An access to storage did not return in time; the thread that made
    it is still blocked (see bounded)."""


class LockHeld(Exception):
    """Another run holds the lock of this master volume, may be live on
    another node, or has just backed it up: exit 3, nothing done."""


class Record:
    """A plain record: the class's DEFAULTS, then the keyword arguments.
    (Not a dataclass: EL8's Python 3.6 has no dataclasses.)"""
    DEFAULTS = {}
    HIDDEN = ()

    def __init__(self, **values):
        unknown = set(values) - set(self.DEFAULTS)
        if unknown:
            raise TypeError('%s has no field %s' % (
                type(self).__name__, ', '.join(sorted(unknown))))
        for name, default in self.DEFAULTS.items():
            # a default list or dict is copied: no two records share one
            value = values[name] if name in values else copy.copy(default)
            setattr(self, name, list(value) if isinstance(value, list) else value)

    def __repr__(self):
        return '%s(%s)' % (type(self).__name__, ', '.join(
            '%s=%r' % (name, getattr(self, name)) for name in self.DEFAULTS
            if name not in self.HIDDEN))


# The config file as one table: each key is one entry of CONFIG_KEYS,
# (section, key, kind, default, check). From it come the keys known
# (KNOWN_KEYS), Settings' defaults, the reading and its checks
# (ConfigReader), the README's table (tests/unit/test_docs.py checks it row
# by row) and the man page's CONFIGURATION (dist/manpage.py). A new key is
# an entry here, its row in the README's table and its lines in
# backup.cfg.example.

# a kind of value: its name (for the man page), how a text becomes one
# (raising ValueError) and what is said of a text that does not
Kind = collections.namedtuple('Kind', 'name parse refusal')


def yes_or_no(text):
    """Given a config text, return True or False; raise ValueError."""
    if text.lower() in ('yes', 'true', 'on', '1'):
        return True
    if text.lower() in ('no', 'false', 'off', '0'):
        return False
    raise ValueError(text)


TEXT = Kind('text', str, None)
SECRET = Kind('text, never logged', str, None)
PATH = Kind('path', os.path.expanduser, None)   # from the file's directory
WHOLE = Kind('whole number', int, 'is not a whole number')
NUMBER = Kind('number', float, 'is not a number')
YES_NO = Kind('yes or no', yes_or_no, 'must be yes or no')
COMMAND = Kind('command line, split like a shell', shlex.split,
               'is not a command line: {error}')


class Within:
    """The check of a number: more than 0 (or 0 or more, with zero) and at
    most maximum. Called with a value, it returns what is wrong with it, or
    None; rule says it in words."""

    def __init__(self, maximum=MAX_SECONDS, zero=False, why=''):
        self.maximum, self.zero, self.why = maximum, zero, why
        self.rule = '%s, at most %d%s' % (
            '0 or more' if zero else 'more than 0', maximum, why)

    def __call__(self, value):
        # (math.isfinite of an int past a float's range raises)
        not_finite = isinstance(value, float) and not math.isfinite(value)
        if not_finite or value < 0 or (value == 0 and not self.zero):
            return 'must be %s' % ('0 or more' if self.zero else 'more than 0')
        if value > self.maximum:
            return 'must be at most %d%s' % (self.maximum, self.why)
        return None


def is_host(text):
    """The check of [restore_points] host: given its text, return what is
    wrong with it, or None."""
    return None if SLAVE_NAME.match(text) else 'is not HOST or user@HOST'


def is_http_url(text):
    """The check of [status] ping_url: given its text, return what is wrong
    with it, or None."""
    url = split_url(text)
    if url is None or url.scheme not in ('http', 'https') or not url.hostname:
        return 'is not an http(s) URL'
    return None


ConfigKey = collections.namedtuple('ConfigKey', (
    'section key kind default check attribute required meaning shown'))


def config_key(section, key, kind, default=None, check=None, meaning='',
               shown=None, attribute=None, required=False):
    """Return the entry of CONFIG_KEYS of [section] key: of kind, default
    when absent or empty, check (None, or given the value, what is wrong
    with it); attribute names it in Settings (default: the key); required
    when the engine is needed. meaning and shown (the default as the README
    writes it; default: from default) are for the README and the man page."""
    if shown is None:
        shown = 'required' if required else default_text(default)
    return ConfigKey(section, key, kind, default, check, attribute or key,
                     required, meaning, shown)


def default_text(default):
    """Given a key's default, return it as the README's table writes it."""
    if isinstance(default, bool):
        return '`%s`' % ('yes' if default else 'no')
    if isinstance(default, (int, float)):
        return '%g' % default
    if isinstance(default, list):
        default = ' '.join(shlex.quote(word) for word in default)
    return '`%s`' % default if default else 'none'


CONFIG_KEYS = (
    # section, key, kind, default, check; what it means, for the README and
    # the man page
    config_key('connection', 'server', TEXT, None, None,
               'engine API URL, `https://ENGINE/ovirt-engine/api`',
               required=True),
    config_key('connection', 'user_name', TEXT, None, None,
               'e.g. `admin@internal`', required=True),
    config_key('connection', 'password', SECRET, '', None, '', required=True),
    config_key('connection', 'ca_file', PATH, None, None,
               'engine CA certificate (PEM)', shown='system store'),
    config_key('connection', 'insecure', YES_NO, False, None,
               '`yes` skips TLS verification (and allows `http://`)'),
    config_key('connection', 'timeout', WHOLE, DEFAULT_REQUEST_TIMEOUT, Within(),
               'seconds for one API request'),
    config_key('connection', 'connections', WHOLE, DEFAULT_CONNECTIONS,
               Within(MAX_CONNECTIONS), 'API requests in flight at once'),
    config_key('logging', 'logger_conf', PATH, None, None,
               'a `logging.config.fileConfig` file (see '
               '`logging.conf.example`); errors reach stderr too',
               shown='log to stderr'),
    config_key('snapshot', 'wait_timeout', NUMBER, DEFAULT_WAIT_TIMEOUT,
               Within(MAX_MINUTES),
               'minutes to wait for the snapshots to be created, and again to '
               "be removed (and for the engine's word on the OVF store)"),
    config_key('snapshot', 'poll_interval', NUMBER, DEFAULT_POLL_INTERVAL,
               Within(), 'seconds between status checks, at most (they start '
               'at 0.25 s and back off)'),
    config_key('snapshot', 'require_quiesce', YES_NO, False, None,
               '`yes`: a VM whose guest was not frozen fails the run (as '
               '`--require-quiesce`)'),
    # a command line: find_scheduler splits it, or finds one
    config_key('gluster', 'schedule_georep', TEXT, None, None,
               'the scheduler command line, split like a shell',
               shown='`schedule_georep.py` where the distribution installs '
               'it, run with `/usr/bin/python3`'),
    config_key('gluster', 'scheduler_grace', WHOLE, DEFAULT_SCHEDULER_GRACE,
               Within(zero=True), 'seconds the scheduler may run past `-t` '
               'before it is stopped (SIGTERM, then SIGKILL 10 seconds later)'),
    config_key('gluster', 'presync', YES_NO, False, None,
               '`yes`: run the scheduler once more before the OVF store and '
               'the snapshots, to shorten the snapshot window (see below)'),
    # None: the same as -t
    config_key('gluster', 'presync_timeout', WHOLE, None, Within(zero=True),
               'minutes the pre-sync may take (its `--timeout`); past it the '
               'run goes on, with a warning; 0: for ever', shown='`-t`'),
    config_key('gluster', 'gluster', PATH, DEFAULT_GLUSTER, None,
               "gluster's CLI, for the check of the geo-replication session"),
    config_key('gluster', 'glusterfs', PATH, DEFAULT_GLUSTERFS, None,
               'the FUSE client that mounts the volumes'),
    config_key('gluster', 'master_server', TEXT, DEFAULT_MASTER_SERVER, None,
               'host the master volume is mounted from, read-only'),
    config_key('gluster', 'mount_timeout', WHOLE, DEFAULT_MOUNT_TIMEOUT,
               Within(), 'seconds a mount may take before it is stopped'),
    config_key('gluster', 'mount_log', PATH, DEFAULT_MOUNT_LOG, None,
               "the FUSE client's log file"),
    config_key('gluster', 'storage_domain', TEXT, None, None,
               'the storage domain on MASTERVOL, when its path does not name '
               'the volume', shown='found'),
    config_key('verify', 'qemu_img', TEXT, DEFAULT_QEMU_IMG, None,
               'the `qemu-img` that checks the copy', shown='`qemu-img` on PATH'),
    config_key('event', 'cluster', TEXT, None, None,
               'cluster the event is attached to (sent by id)'),
    # None: on shared storage when it is mounted (place_lock_and_status)
    config_key('lock', 'lock_dir', PATH, None, None,
               'where `vmbackup-MASTERVOL.lock` lives',
               shown='`/run/gluster/shared_storage/vmbackup` when shared '
               "storage is mounted, else `/run/lock/vmbackup` (root's, 0700)"),
    config_key('lock', 'skip_within', NUMBER, DEFAULT_SKIP_WITHIN,
               Within(MAX_MINUTES, zero=True),
               'minutes after a full successful backup of a session during '
               'which a later full run of it exits 3; 0: never'),
    config_key('lock', 'storage_timeout', NUMBER, DEFAULT_STORAGE_TIMEOUT,
               Within(MAX_STORAGE_TIMEOUT),
               'seconds one access to shared storage, the lock or the status '
               'directory may take (a hung mount): then one line, exit 1 '
               '(`--check`: UNKNOWN, within 4 s)'),
    # None: as lock_dir, else /var/lib/vmbackup (place_lock_and_status)
    config_key('status', 'dir', PATH, None, None,
               'where the status file `MASTERVOL.json` is written (made, 0755, '
               'when missing)', attribute='status_dir',
               shown='`/run/gluster/shared_storage/vmbackup` when mounted, '
               'else `/var/lib/vmbackup`'),
    config_key('status', 'textfile_dir', PATH, None, None,
               'node_exporter textfile directory for the metrics (made, 0755, '
               'when missing)'),
    config_key('status', 'ping_url', TEXT, None, is_http_url,
               'Healthchecks-style URL pinged at start and end'),
    config_key('status', 'ping_timeout', NUMBER, DEFAULT_PING_TIMEOUT, Within(),
               'seconds one ping may take'),
    config_key('restore_points', 'keep', WHOLE, 0, Within(
        RESTORE_POINT_KEEP_MAX, zero=True, why=" (gluster's snap-max-hard-limit)"),
        'restore points (gluster snapshots of SLAVEVOL) of ours to keep, newest '
        "by gluster's creation time; 0: none taken; at most 256",
        attribute='restore_keep'),
    config_key('restore_points', 'ssh', COMMAND, shlex.split(DEFAULT_RESTORE_SSH),
               None, 'the command that reaches a slave node, split like a '
               "shell; the host and gluster's command line follow it",
               attribute='restore_ssh'),
    config_key('restore_points', 'host', TEXT, None, is_host,
               "the slave node where gluster's CLI runs, `HOST` or `user@HOST` "
               "(root's: gluster's snapshots need it)",
               attribute='restore_host', shown='SLAVE, with its user'),
    config_key('restore_points', 'gluster', COMMAND, [DEFAULT_RESTORE_GLUSTER],
               None, "gluster's CLI on that node, split like a shell",
               attribute='restore_gluster'),
)

KNOWN_KEYS = {entry.section: {other.key for other in CONFIG_KEYS
                               if other.section == entry.section}
              for entry in CONFIG_KEYS}


class Settings(Record):
    """The config file, checked: an attribute per entry of CONFIG_KEYS, and
    lock_is_shared (the lock directory is on gluster, seen by every node)."""
    DEFAULTS = dict([(entry.attribute, entry.default) for entry in CONFIG_KEYS]
                    + [('lock_is_shared', False)])
    HIDDEN = ('password',)


class DiskRecord(Record):
    """One disk of a VM in the backup: its ids before and after the snapshot,
    and what became of its copy at the remote site (None: not done)."""
    DEFAULTS = {
        'disk_id': None, 'sd_id': None, 'base_id': None, 'overlay_id': None,
        'name': None,
        'confirmed': None,        # the slave's base is the master's
        'overlay_dropped': None,  # the overlay's three files deleted
        'chain_repaired': None,   # the base's .meta says LEAF again
        'verified': None,         # the chain passed every check of verify
        'size': None,             # bytes of the base volume confirmed at the slave
        'overlay_bytes': None,    # bytes of the overlay at the master when
                                  # the merges were sent
        'problem': None,          # why it is not backed up, one line
    }


class VmBackup(Record):
    """One VM in the backup, and what this run did to it."""
    DEFAULTS = {
        'vm_id': None, 'name': None, 'disks': [],
        'stale_snapshot_ids': [],
        'snapshot_id': None,
        'snapshot_ready': False,
        'snapshot_ready_at': None,  # Unix time the tool saw the snapshot ok
        'removal_sent_at': None,    # Unix time the removals were first sent
        'request_error': None,      # why the snapshot request got no answer
        'consistency': None,        # QUIESCED or CRASH_CONSISTENT, when known
        'consistency_reason': None,  # why it is CRASH_CONSISTENT, one line
        'snapshot_removed': None,
    }


class Plan(Record):
    """What step 4 chose: the storage domains and the VMs."""
    DEFAULTS = {
        'storage_domains': {},      # id -> name; empty with --all-vms
        'backups': [],
        'up_vm_count': 0,
        'vm_positions': {},         # vm id -> its place in the list of running VMs
        'snapshot_description': None,   # of this run's snapshots
    }


class Failed(Exception):
    """A step failed and the run cannot go on; the failure was recorded
    with run.fail already."""


class Interrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM): the steps left are skipped,
    the cleanup is not."""


def exit_status_of(failures, ended_by=None):
    """The exit status, decided here only: given a run's failures and the
    exception that ended it early (None: none), return EXIT_LOCKED when
    another run owns the volume (LockHeld), EXIT_USAGE for a usage error,
    EXIT_FAILED when something failed (an interruption is a failure) or
    ended it early, else EXIT_OK."""
    if isinstance(ended_by, LockHeld):
        return EXIT_LOCKED
    if isinstance(ended_by, UsageError):
        return EXIT_USAGE
    if failures or ended_by is not None:
        return EXIT_FAILED
    return EXIT_OK


class Run:
    """One run: the command line, the settings, the stop request, what was
    chosen and done, the time each step took and what failed."""

    def __init__(self, args, settings, stop):
        self.args = args
        self.settings = settings
        self.stop = stop
        self.mastervol = args.mastervol
        self.started = time.monotonic()
        self.started_at = time.time()     # wall clock, for the status file
        self.ended_at = None
        self.failures = []
        self.step_seconds = collections.OrderedDict()   # step -> seconds
        self.plan = None                  # Plan, once the VMs are chosen
        self.notes = []                   # lines for the event, good or bad
        self.verify_summary = None        # "N disks of M VMs verified restorable"
        self.restore_points = None        # RestorePoints, when step 7 took one
        self.ended_by = None              # the exception that ended it early

    @property
    def exit_status(self):
        return exit_status_of(self.failures, self.ended_by)

    def fail(self, message, *args, told=False):
        """Log an error (unless told already) and remember it for the event
        and the exit status."""
        text = message % args if args else message
        if not told:
            log.error('%s', text)
        self.failures.append(text)

    def minutes(self):
        return (time.monotonic() - self.started) / 60

    def check_stop(self):
        """Raise Interrupted when a stop was requested."""
        if self.stop.requested:
            raise Interrupted(self.stop.signal_name)

    @contextlib.contextmanager
    def step(self, name, cleanup=False):
        """Time a step of the run (added to step_seconds under name); raise
        Interrupted before it starts when a stop was requested, unless it
        is a cleanup step, which always runs."""
        if not cleanup:
            self.check_stop()
        began = time.monotonic()
        try:
            yield
        finally:
            self.step_seconds[name] = (self.step_seconds.get(name, 0.0)
                                       + time.monotonic() - began)


class Stop:
    """SIGINT/SIGTERM: remember the request, stop the running child, and let
    the steps wind down at their next check; the cleanup is never cut short."""

    def __init__(self):
        self.event = threading.Event()
        self.signal_name = None
        self.child = None

    def install(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.event.is_set():
            log.warning('%s received again: still cleaning up, please wait',
                        name)
            return
        self.signal_name = name
        self.event.set()
        log.warning('%s received: stopping; the snapshots of this run will '
                    'be removed first', name)
        terminate_child(self.child)

    @property
    def requested(self):
        return self.event.is_set()

    def sleep(self, seconds):
        """Sleep, returning early when a stop is requested."""
        self.event.wait(max(seconds, 0))


# ==== Step 1: the command line and the config file ===========================

def build_parser():
    """Return the argparse parser of the command line (its text is the man
    page's too)."""
    parser = argparse.ArgumentParser(
        prog='vmbackup', description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('mastervol', metavar='MASTERVOL',
                        help='gluster volume that backs the oVirt storage domain')
    parser.add_argument('slave', metavar='SLAVE', nargs='?',
                        help='HOST, root@HOST or user@HOST of the remote site '
                             '(--status and --check: only to name one of a '
                             "volume's two sessions)")
    parser.add_argument('slavevol', metavar='SLAVEVOL', nargs='?',
                        help='gluster volume at the remote site (--status and '
                             "--check: only to name one of a volume's two "
                             'sessions)')
    parser.add_argument('-c', '--config', required=True,
                        help='path to the config file')
    parser.add_argument('-i', '--interval', type=int, default=10,
                        help="seconds between the scheduler's status checks "
                             '(default 10)')
    parser.add_argument('-t', '--timeout', type=float, default=0,
                        help='minutes before the scheduler gives up on the '
                             'checkpoint, e.g. 240 or 0.5: the scheduler is '
                             'given them rounded up to whole minutes, and is '
                             'stopped past -t plus [gluster] scheduler_grace; '
                             '0 waits for ever (default 0; give one under '
                             'cron)')
    parser.add_argument('--vm', action='append', default=[], metavar='NAME',
                        help='back up only this VM (repeatable)')
    parser.add_argument('--exclude', action='append', default=[],
                        metavar='NAME', help='leave this VM out (repeatable)')
    parser.add_argument('--all-vms', action='store_true',
                        help='the 2016 behaviour: every running VM but '
                             'HostedEngine, with all its disks, wherever they '
                             'are (no storage domain is looked for; the '
                             'geo-replication session is still checked)')
    parser.add_argument('--force', action='store_true',
                        help='run even when [lock] skip_within says this '
                             'session was backed up a short while ago')
    parser.add_argument('--require-quiesce', action='store_true',
                        help='fail the backup of a VM whose guest could not be '
                             'frozen (its copy is only crash-consistent)')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--dry-run', action='store_true',
                      help='check, choose the VMs and print what would be '
                           'done, changing nothing')
    mode.add_argument('--verify', action='store_true',
                      help='check the copy at the remote site as a DR engine '
                           'would import it; needs no engine, changes nothing')
    parser.add_argument('--restore-point', metavar='NAME',
                        help='--verify: verify this restore point (a gluster '
                             'snapshot of SLAVEVOL) instead of the volume, '
                             'activating it for the verify if it is not')
    mode.add_argument('--status', action='store_true',
                      help="print the last run's result for MASTERVOL")
    mode.add_argument('--check', action='store_true',
                      help='Nagios-style check of the last run: exit 0 OK, '
                           '1 WARNING, 2 CRITICAL, 3 UNKNOWN')
    parser.add_argument('--warning', type=float, metavar='HOURS',
                        default=DEFAULT_CHECK_WARNING,
                        help='--check: WARNING when the last success is older '
                             '(default %g)' % DEFAULT_CHECK_WARNING)
    parser.add_argument('--critical', type=float, metavar='HOURS',
                        default=DEFAULT_CHECK_CRITICAL,
                        help='--check: CRITICAL when the last success is older '
                             '(default %g)' % DEFAULT_CHECK_CRITICAL)
    parser.add_argument('--restore-point-warning', type=float, metavar='HOURS',
                        default=DEFAULT_CHECK_WARNING,
                        help='--check, with [restore_points] keep: WARNING '
                             'when the newest restore point is older '
                             '(default %g)' % DEFAULT_CHECK_WARNING)
    parser.add_argument('--restore-point-critical', type=float, metavar='HOURS',
                        default=DEFAULT_CHECK_CRITICAL,
                        help='--check, with [restore_points] keep: CRITICAL '
                             'when the newest restore point is older, or '
                             'there is none (default %g)' % DEFAULT_CHECK_CRITICAL)
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument('-v', '--verbose', action='store_true',
                           help='log debugging detail')
    verbosity.add_argument('-q', '--quiet', action='store_true',
                           help='log only warnings and errors')
    parser.add_argument('--version', action='version',
                        version='%(prog)s ' + VERSION)
    return parser


def parse_command_line(argv):
    """Given the arguments, return the argparse namespace; raise UsageError."""
    parser = build_parser()

    def error(message):
        raise UsageError(message)

    parser.error = error
    args = parser.parse_args(argv)
    args.read_only = args.status or args.check
    check_arguments(args)
    return args


def check_arguments(args):
    """Given the parsed arguments, raise UsageError for values that can't work."""
    problems = (name_problems(args) + number_problems(args)
                + vm_name_problems(args) + restore_point_problems(args))
    if problems:
        raise UsageError('; '.join(problems))


def name_problems(args):
    """Given the parsed arguments, return what is wrong with MASTERVOL,
    SLAVE and SLAVEVOL."""
    problems = []
    names = [('MASTERVOL', args.mastervol)]
    if args.read_only and (args.slave is None) != (args.slavevol is None):
        problems.append('--status and --check take SLAVE and SLAVEVOL both '
                        '(to name the session) or neither')
    elif args.slave is None or args.slavevol is None:
        if not args.read_only:
            problems.append('SLAVE and SLAVEVOL are needed (only --status and '
                            '--check do without)')
    else:
        names.append(('SLAVEVOL', args.slavevol))
        if not SLAVE_NAME.match(args.slave):
            problems.append('SLAVE %r is not HOST, root@HOST or user@HOST'
                            % args.slave)
    for label, value in names:
        if not VOLUME_NAME.match(value):
            problems.append('%s %r is not a gluster volume name' % (label, value))
    return problems


def number_problems(args):
    """Given the parsed arguments, return what is wrong with the numbers
    (--interval, --timeout and --check's hours)."""
    problems = []
    if not 1 <= args.interval <= MAX_SECONDS:
        problems.append('--interval must be at least 1 second and at most '
                        '%d, not %d' % (MAX_SECONDS, args.interval))
    if not 0 <= args.timeout <= MAX_MINUTES:
        problems.append('--timeout must be 0 (wait for ever) or a number of '
                        'minutes up to %d, not %g' % (MAX_MINUTES, args.timeout))
    elif args.timeout == int(args.timeout):
        args.timeout = int(args.timeout)    # whole minutes read as before: "-t 5"
    for options, warning, critical in (
            (('--warning', '--critical'), args.warning, args.critical),
            (('--restore-point-warning', '--restore-point-critical'),
             args.restore_point_warning, args.restore_point_critical)):
        if not (0 < warning <= critical <= MAX_CHECK_HOURS):
            problems.append('%s and %s are hours, 0 < warning <= critical <= %d '
                            '(not %g and %g)' % (options + (
                                MAX_CHECK_HOURS, warning, critical)))
    return problems


def vm_name_problems(args):
    """Given the parsed arguments, return what is wrong with --vm and
    --exclude."""
    problems = []
    for option, names in (('--vm', args.vm), ('--exclude', args.exclude)):
        if any(not name.strip() for name in names):
            problems.append('%s needs the name of a VM, not an empty one'
                            % option)
    overlap = sorted(set(args.vm) & set(args.exclude))
    if overlap:
        problems.append('VM named both in --vm and --exclude: %s'
                        % ', '.join(overlap))
    return problems


def restore_point_problems(args):
    """Given the parsed arguments, return what is wrong with --restore-point."""
    if args.restore_point is None:
        return []
    if not args.verify:
        return ['--restore-point goes with --verify']
    if not SNAPSHOT_NAME.match(args.restore_point):
        return ['--restore-point %r is not a gluster snapshot name'
                % args.restore_point]
    return []


class ConfigReader:
    """Given a parsed config file, read its keys by CONFIG_KEYS, collecting
    every problem (with the key's name) in self.problems instead of stopping
    at the first."""

    def __init__(self, parser, path, needs_engine=True):
        self.parser = parser
        self.base = os.path.dirname(os.path.abspath(path))
        self.needs_engine = needs_engine
        self.problems = []

    def value(self, entry):
        """Given an entry of CONFIG_KEYS, return its key's value, checked;
        its default when the key is absent or empty, or after adding what
        is wrong with it to the problems."""
        text = self.parser.get(entry.section, entry.key, fallback=None)
        text = text.strip() if text is not None else None
        if not text:
            if entry.required and self.needs_engine:
                self.missing(entry, text)
            return entry.default
        try:
            value = entry.kind.parse(text)
        except ValueError as error:
            return self.refuse(entry, repr(text),
                               entry.kind.refusal.format(error=error))
        if entry.kind is PATH:
            value = os.path.join(self.base, value)
        problem = entry.check(value) if entry.check else None
        if problem:
            # a number is shown as written, a text quoted
            return self.refuse(entry, text if entry.kind in (WHOLE, NUMBER)
                               else repr(text), problem)
        return value

    def missing(self, entry, text):
        """Add the problem of a required key that is absent or empty."""
        if self.parser.has_section(entry.section):
            self.problems.append('[%s] %s is %s' % (
                entry.section, entry.key, 'empty' if text == '' else 'missing'))
        elif entry.kind is not SECRET:
            # the keys before it said it: the password is no news
            self.problems.append('[%s] section is missing (it needs %s)'
                                 % (entry.section, entry.key))

    def refuse(self, entry, shown, problem):
        """Add a problem of the key's value; return its default."""
        self.problems.append('[%s] %s = %s %s' % (
            entry.section, entry.key, shown, problem))
        return entry.default

    def warn_unknown(self, path):
        for section in self.parser.sections():
            known = KNOWN_KEYS.get(section)
            if known is None:
                log.warning('config file %s: unknown section [%s] ignored',
                            path, section)
                continue
            for key in self.parser.options(section):
                if key not in known:
                    log.warning('config file %s: unknown key [%s] %s ignored',
                                path, section, key)


def read_config(path, needs_engine=True, storage_limit=None):
    """Given the config file's path, return Settings; raise UsageError naming
    every bad key at once, StorageFailed when shared storage or a directory
    the config names does not answer (or not in time). Without needs_engine
    (--verify, --status, --check) the engine's keys and the scheduler are
    not required. storage_limit caps [lock] storage_timeout (--check must
    answer within its own time)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(read_trusted_file(path, 'config file'),
                           source=path)
    except configparser.Error as error:
        first_line = str(error).splitlines()[0]
        raise UsageError('config file %s is not a valid INI file: %s'
                         % (path, first_line)) from None
    warn_if_readable_by_others(path)
    settings, problems = parse_config(parser, path, needs_engine, storage_limit)
    problems += check_machine(settings, needs_engine)
    if problems:
        raise UsageError('config file %s: %s' % (path, '; '.join(problems)))
    return settings


def parse_config(parser, path, needs_engine=True, storage_limit=None):
    """Given the parsed config file and its path, return (Settings, the
    problems found): every key of CONFIG_KEYS read and checked, looking at
    nothing on this machine (check_machine does). Unknown sections and keys
    are warnings."""
    config = ConfigReader(parser, path, needs_engine)
    config.warn_unknown(path)
    settings = Settings(**{entry.attribute: config.value(entry)
                           for entry in CONFIG_KEYS})
    problems = config.problems
    if settings.server is not None:
        settings.server, problem = check_server_url(settings.server,
                                                    settings.insecure)
        if problem:
            problems.append(problem)
    if settings.insecure:
        settings.ca_file = None
    if storage_limit is not None:
        settings.storage_timeout = min(settings.storage_timeout, storage_limit)
    return settings, problems


def check_machine(settings, needs_engine=True):
    """Given the Settings parsed, fill in what this machine decides (where
    the lock and the status file live, the scheduler's command line) and
    return the problems of the files, programs and directories they name;
    raise StorageFailed when shared storage or one of them does not answer
    (or not in time). Without needs_engine, the files of a run are not
    looked for."""
    # only a directory the config names must be there: the defaults are
    # made at the run's start
    directories = (
        ('[lock] lock_dir', settings.lock_dir if needs_engine else None, False),
        ('[status] dir', settings.status_dir, True),
        ('[status] textfile_dir', settings.textfile_dir, True))
    place_lock_and_status(settings, needs_engine)
    problems = file_problems(settings, needs_engine)
    for label, directory, missing_is_fine in directories:
        if directory is not None:
            problem = bounded(
                lambda: directory_problem(directory, label, missing_is_fine),
                settings.storage_timeout, '%s %s' % (label, directory))
            if problem:
                problems.append('%s %s %s' % (label, directory, problem))
    return problems


def place_lock_and_status(settings, needs_engine):
    """Given the Settings, set the lock and status directories the config
    leaves out (on gluster's shared storage when it is mounted, else this
    node's), and whether the lock is seen by every node."""
    shared = bounded(shared_storage_dir, settings.storage_timeout,
                     "gluster's shared storage %s" % SHARED_STORAGE)
    on_shared = os.path.join(shared, 'vmbackup') if shared else None
    if settings.lock_dir is None:
        settings.lock_dir = on_shared or FALLBACK_LOCK_DIR
        settings.lock_is_shared = bool(shared)
    else:
        lock_dir = settings.lock_dir
        settings.lock_is_shared = needs_engine and bounded(
            lambda: is_gluster_mount(lock_dir), settings.storage_timeout,
            'the lock directory %s' % lock_dir)
    if settings.status_dir is None:
        settings.status_dir = on_shared or FALLBACK_STATUS_DIR


def file_problems(settings, needs_engine):
    """Given the Settings, return the problems of the files and programs
    they name (the engine's CA, logging's config; for a run the scheduler,
    whose command line it sets, and gluster's programs)."""
    problems = []
    if settings.ca_file is not None and needs_engine:
        if not os.path.isfile(settings.ca_file):
            problems.append('[connection] ca_file %s does not exist'
                            % settings.ca_file)
        elif not os.access(settings.ca_file, os.R_OK):
            problems.append('[connection] ca_file %s is not readable'
                            % settings.ca_file)
    if settings.logger_conf is not None and not os.path.isfile(settings.logger_conf):
        problems.append('[logging] logger_conf %s does not exist'
                        % settings.logger_conf)
    if not needs_engine:
        settings.schedule_georep = None
        return problems
    settings.schedule_georep = find_scheduler(settings.schedule_georep, problems)
    for key, package in (('glusterfs', 'glusterfs-fuse / glusterfs-client'),
                         ('gluster', 'glusterfs-cli / glusterfs-cli')):
        program = getattr(settings, key)
        if not is_executable(program):
            problems.append('[gluster] %s %s is not an executable file '
                            '(install %s, or name it)' % (key, program, package))
    return problems


def shared_storage_dir():
    """Return gluster's shared storage mount point when a gluster volume is
    mounted there (the same file system on every node of the pool), else
    None."""
    if is_mount_point(SHARED_STORAGE) and is_gluster_mount(SHARED_STORAGE):
        return SHARED_STORAGE
    return None


def is_gluster_mount(path):
    """Tell whether path is on a gluster FUSE mount (fuse.glusterfs): an
    flock there is seen by every client of the volume, on every node."""
    with contextlib.suppress(OSError):
        with open('/proc/self/mountinfo', encoding='utf-8') as table:
            best = ('', '')
            target = os.path.realpath(path)
            for line in table:
                fields = line.split()
                point = unescape_mount_path(fields[4])
                fstype = fields[fields.index('-') + 1]
                inside = target == point or target.startswith(
                    point.rstrip('/') + '/')
                if inside and len(point) >= len(best[0]):
                    best = (point, fstype)
            return best[1] == 'fuse.glusterfs'
    return False


def directory_problem(path, label, missing_is_fine=False):
    """Given a directory the config names (and its key), return None when
    it is one (or is missing, with missing_is_fine), else what is wrong with
    it; raise StorageFailed for an error of the machine (ENOTCONN: a stale
    mount)."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None if missing_is_fine else 'is not a directory'
    except OSError as error:
        raise StorageFailed('%s %s: %s' % (label, path, error.strerror
                                           or error)) from None
    return None if stat.S_ISDIR(info.st_mode) else 'is not a directory'


def bounded(function, seconds, what):
    """Given a function that touches shared storage, the lock or the status
    directory, return what it returns (or raise what it raises), called in
    a thread of its own; raise Hung naming what when it has not returned
    after seconds ([lock] storage_timeout).

    A thread, not a child process: the lock must be held by this process's
    own open file, and a thread costs no fork of a process that holds the
    SDK's connections. A FUSE mount that stops answering (a glusterfs or
    bindfs process stopped, a gluster volume whose bricks are gone) blocks
    the thread in the kernel, where no timeout or signal of ours reaches
    it: the thread is left behind, named 'storage: ...', and main() ends
    the process without waiting for it (exit_now)."""
    return in_thread(function, seconds, 'storage: %s' % what, lambda: Hung(
        'no answer from %s within %g seconds ([lock] storage_timeout): is its '
        'mount hung?' % (what, seconds)))


def in_thread(function, seconds, name, late):
    """Given a function, return what it returns (or raise what it raises),
    called in a daemon thread named name; raise late() when it has not
    returned after seconds (the thread is left behind)."""
    outcome = {}

    def target():
        try:
            outcome['value'] = function()
        except BaseException as error:   # handed over to the caller
            outcome['error'] = error

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise late()
    if 'error' in outcome:
        raise outcome['error']
    return outcome.get('value')


def storage_left_hung():
    """Tell whether an access of bounded() is still blocked."""
    return any(thread.name.startswith('storage: ') and thread.is_alive()
               for thread in threading.enumerate())


def check_server_url(server, insecure):
    """Given [connection] server, return (the API URL to use, a problem or
    None). A 2016 config's https://ENGINE/api is taken as the v4 API."""
    url = split_url(server)
    if url is None or url.scheme not in ('https', 'http') or not url.hostname:
        return server, ('[connection] server = %r is not an '
                        'https://ENGINE/ovirt-engine/api URL' % server)
    if url.scheme == 'http' and not insecure:
        return server, ('[connection] server = %r is not https; the password '
                        'would cross the network in clear (set insecure = yes '
                        'to allow it)' % server)
    path = url.path.rstrip('/')
    if path in ('', '/api'):
        path = '/ovirt-engine/api'
    return urllib.parse.urlunsplit((url.scheme, url.netloc, path, '', '')), None


def split_url(text):
    """Given a URL, return urlsplit's answer, or None when it cannot be
    split (an unclosed IPv6 bracket) or names no valid port."""
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port             # a ValueError when out of range
    except ValueError:
        return None
    return url if port != 0 else None


def read_trusted_file(path, what):
    """Given the path of the config file (or of the logging config it
    names), return its text; raise UsageError when it cannot be read, is
    not a regular file (a FIFO would hang the run), or can be changed by
    someone other than root and the user running vmbackup: it names the
    programs run as root, and logging's config is evaluated as Python.
    """
    try:
        # O_NONBLOCK: opening a FIFO returns at once instead of waiting for
        # a writer; it changes nothing for a regular file
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise UsageError('cannot read %s %s: %s'
                         % (what, path, error.strerror or error)) from None
    with open(descriptor, 'rb') as stream:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UsageError('%s %s is not a regular file' % (what, path))
        if info.st_uid not in (0, os.geteuid()):
            raise UsageError(
                '%s %s belongs to uid %d, not to root or to the user running '
                'vmbackup, and it names what vmbackup runs: chown root %s'
                % (what, path, info.st_uid, path))
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UsageError(
                '%s %s can be changed by %s, and it names what vmbackup runs: '
                'chmod go-w %s' % (what, path, 'every user' if info.st_mode
                                   & stat.S_IWOTH else 'its group', path))
        try:
            data = stream.read()
        except OSError as error:
            raise UsageError('cannot read %s %s: %s'
                             % (what, path, error.strerror or error)) from None
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as error:
        raise UsageError('%s %s is not UTF-8 text: %s'
                         % (what, path, error.reason)) from None


def warn_if_readable_by_others(path):
    """Given the config file, warn when users other than its owner's group
    can read the engine password in it."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_mode & stat.S_IROTH:
            log.warning('config file %s is readable by every user and holds '
                        'the engine password: chmod 600 %s', path, path)


def is_executable(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_scheduler(configured, problems):
    """Given [gluster] schedule_georep or None, return the scheduler's command
    line as a list, or None after adding to problems."""
    if configured is not None:
        try:
            command = shlex.split(configured)
        except ValueError as error:
            problems.append('[gluster] schedule_georep cannot be split: %s'
                            % error)
            return None
        if not command:
            problems.append('[gluster] schedule_georep is empty')
            return None
        program = command[0]
        if os.sep in program:
            if not os.path.isfile(program):
                problems.append('[gluster] schedule_georep: %s does not exist'
                                % program)
                return None
        elif shutil.which(program) is None:
            problems.append('[gluster] schedule_georep: %s is not on PATH'
                            % program)
            return None
        return command
    for pattern in SCHEDULER_CANDIDATES:
        found = sorted(glob.glob(pattern))
        if found:
            python = shutil.which('python3', path='/usr/bin:/bin') or 'python3'
            return [python, found[0]]
    problems.append('no schedule_georep.py found in %s; install gluster\'s '
                    'geo-replication package or set [gluster] schedule_georep'
                    % ', '.join(SCHEDULER_CANDIDATES))
    return None


def configure_logging(settings, args):
    """Given the settings and the command line, set up logging; raise
    UsageError when the logger_conf file is broken."""
    if settings.logger_conf:
        text = read_trusted_file(settings.logger_conf, '[logging] logger_conf')
        try:
            logging.config.fileConfig(io.StringIO(text),
                                      disable_existing_loggers=False)
        except Exception as error:
            # fileConfig evaluates each handler's args= as Python: a syntax
            # error, an unknown name or any error of that expression is the
            # file's fault, as are its missing sections and bad levels
            raise UsageError('[logging] logger_conf %s cannot be used: %s'
                             % (settings.logger_conf,
                                str(error).splitlines()[0] if str(error)
                                else type(error).__name__)) from None
        for handler in list(log.handlers):
            if getattr(handler, '_vmbackup_bootstrap', False):
                log.removeHandler(handler)
        log.propagate = True
        if not errors_reach_a_terminal_stream():
            # cron mails what reaches stderr: a failure must, whatever the
            # logging config says
            handler = logging.StreamHandler(sys.stderr)
            handler.setLevel(logging.ERROR)
            handler.setFormatter(logging.Formatter('%(levelname)s %(message)s'))
            log.addHandler(handler)
    if args.verbose:
        log.setLevel(logging.DEBUG)
    elif args.quiet:
        log.setLevel(logging.WARNING)
    elif settings.logger_conf:
        log.setLevel(logging.NOTSET)     # the file's levels decide
    else:
        log.setLevel(logging.INFO)


def errors_reach_a_terminal_stream():
    """Tell whether an error logged by vmbackup reaches stderr or stdout
    through the handlers that logging's config set up."""
    logger = log
    while logger is not None:
        for handler in logger.handlers:
            stream = getattr(handler, 'stream', None)
            if (stream in (sys.stderr, sys.stdout)
                    and handler.level <= logging.ERROR):
                return True
        logger = logger.parent if logger.propagate else None
    return False


def bootstrap_logging():
    """Log to stderr until the config says otherwise."""
    if any(getattr(h, '_vmbackup_bootstrap', False) for h in log.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(
        '%(asctime)s %(levelname)s %(message)s'))
    handler._vmbackup_bootstrap = True
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


# ==== Step 2: the lock =======================================================

@contextlib.contextmanager
def take_lock(run):
    """Given the run, hold an exclusive flock on LOCK_DIR/vmbackup-VOL.lock
    for the block; raise LockHeld when another run has it, or when a full
    run (no --vm, no --exclude) on any node backed the same session up
    less than [lock] skip_within minutes ago (a run with --vm or --exclude,
    or --force, is never skipped; only a full success counts).

    On gluster's shared storage (a FUSE mount on every node) the flock is
    cluster-wide, so the same cron line on every node makes one backup per
    night. The lock file says who holds it and how the last run ended:
    one JSON object."""
    settings = run.settings
    lock_dir = settings.lock_dir
    path = os.path.join(lock_dir, 'vmbackup-%s.lock' % run.mastervol)

    def within(function, what='the lock file %s' % path):
        # every access to the lock under [lock] storage_timeout; its errors
        # are the machine's (ENOTCONN: a stale mount), not usage errors
        try:
            return bounded(function, settings.storage_timeout, what)
        except OSError as error:
            raise StorageFailed('%s: %s' % (what, error.strerror or error)
                                ) from None

    if settings.lock_is_shared:
        within(lambda: os.makedirs(lock_dir, mode=0o700, exist_ok=True),
               'the lock directory %s' % lock_dir)
    else:
        if lock_dir == FALLBACK_LOCK_DIR:
            within(lambda: make_private_directory(lock_dir),
                   'the lock directory %s' % lock_dir)
    handle = within(lambda: open_lock_file(path))
    try:
        if not within(lambda: try_flock(handle)):
            holder = within(lambda: read_lock_record(handle))
            raise LockHeld('another backup of volume %s is running (%s; lock '
                           '%s); nothing done' % (
                               run.mastervol, describe_holder(holder), path)
                           ) from None
        last = within(lambda: read_lock_record(handle))
        session = session_name(run.args.slave, run.args.slavevol)
        full = is_full_run(run.args)
        recent = recently_backed_up(last, session, settings.skip_within,
                                    time.time())
        if recent and full and not run.args.force:
            raise LockHeld('%s was backed up %s ([lock] skip_within = %g '
                           'minutes; --force runs anyway); nothing done'
                           % (session, recent, settings.skip_within))
        record = {'node': socket.gethostname(), 'pid': os.getpid(),
                  'started': run.started_at, 'session': session,
                  'sessions': lock_sessions(last)}
        within(lambda: write_lock_record(handle, record))
        if not settings.lock_is_shared:
            # said once the lock is ours: an exit 3 says nothing under -q
            # (the fallback warns; a local lock_dir set by hand was chosen)
            tell = log.warning if lock_dir == FALLBACK_LOCK_DIR else log.info
            tell('lock directory %s is on this node only: a run on another '
                 "node of the pool is not excluded (mount gluster's shared "
                 'storage: gluster volume set all '
                 'cluster.enable-shared-storage enable)', lock_dir)
        try:
            yield path
        finally:
            record['ended'] = time.time()
            record['exit'] = run.exit_status
            if run.exit_status == EXIT_OK and full:
                record['sessions'][session] = {'last_success': record['ended'],
                                               'node': record['node']}
            try:
                within(lambda: write_lock_record(handle, record))
            except StorageFailed as error:
                log.error('the lock file was not updated: %s', error)
    finally:
        # closing a file on a FUSE mount asks the mount too (a flush)
        with contextlib.suppress(StorageFailed):
            within(handle.close)


def try_flock(handle):
    """Given the open lock file, take its flock without waiting; return
    False when another process holds it."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return False
    return True


def make_private_directory(path):
    """Given the fallback lock directory, make it root's alone (0700) when it
    is missing; raise StorageFailed when it is not a directory of this
    user's that only this user can write to: /run/lock is writable by
    everyone, and a directory or symlink planted there would let another
    user hold the lock or point root's writes elsewhere."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() \
            or info.st_mode & 0o077:
        raise StorageFailed(
            'the lock directory %s is not a directory of uid %d that only it '
            'can use (mode %o, uid %d): another user may have made it; '
            'remove it (rm -r %s) and run again' % (
                path, os.geteuid(), stat.S_IMODE(info.st_mode), info.st_uid,
                path))


def open_lock_file(path):
    """Given the lock file's path, return it open for reading and writing
    (made, 0600, when missing), never through a symlink: O_NOFOLLOW."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise StorageFailed('the lock file %s is a symlink: remove it'
                                % path) from None
        raise StorageFailed('cannot open lock file %s: %s'
                            % (path, error.strerror or error)) from None
    return open(descriptor, 'r+', encoding='utf-8', errors='replace')


def read_lock_record(handle):
    """Given the open lock file, return its JSON object, {} when it has
    none (an empty file, or the 2.0 tool's bare pid)."""
    handle.seek(0)
    text = handle.read().strip()
    try:
        record = json.loads(text) if text else {}
    except ValueError:      # not JSON (also not UTF-8: read with replace)
        return {'pid': text} if text.isdigit() else {}
    return record if isinstance(record, dict) else {}


def write_lock_record(handle, record):
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record, sort_keys=True) + '\n')
    handle.flush()
    os.fsync(handle.fileno())


def describe_holder(record):
    """Given a lock record, say who holds the lock."""
    if not record.get('pid'):
        return 'holder unknown'
    text = 'pid %s' % record['pid']
    if record.get('node'):
        text += ' on %s' % record['node']
    if is_time(record.get('started')):
        text += ', since %s' % local_time(record['started'])
    return text


def session_name(slave, slavevol):
    """Given SLAVE and SLAVEVOL, return the session's name, HOST::SLAVEVOL
    (the user is no part of it), the key of its last full success."""
    return '%s::%s' % (slave_host(slave), slavevol)


def is_full_run(args):
    """Tell whether the run backs up every VM it finds (no --vm, no
    --exclude; --all-vms is full): only a full success counts for
    [lock] skip_within and as the last success."""
    return not args.vm and not args.exclude


def lock_sessions(record):
    """Given a lock record, return {session: {'last_success': epoch, 'node':
    name}} of its well-formed entries. A record of vmbackup 2.1 (one
    last_success for the volume, whichever session or VMs it was) has
    none: it skips nothing."""
    sessions = record.get('sessions')
    if not isinstance(sessions, dict):
        return {}
    return {name: {'last_success': entry['last_success'],
                   'node': str(entry.get('node') or '')}
            for name, entry in sessions.items()
            if isinstance(name, str) and isinstance(entry, dict)
            and is_number(entry.get('last_success'))}


def recently_backed_up(record, session, skip_within, now):
    """Given the lock record of the last run, the session, the [lock]
    skip_within minutes and the time now, return how long ago and by whom
    the session's last full success was when that is less than skip_within
    ago, else None."""
    last = lock_sessions(record).get(session)
    if not skip_within or last is None:
        return None
    age = now - last['last_success']
    if not 0 <= age < skip_within * 60:
        return None
    return '%s ago by %s' % (human_duration(age), last['node'] or 'a node')


# ==== Step 3: the engine: connection, deadlines, errors ======================

class Engine:
    """The connection to the engine: one sdk.Connection for the login and
    the requests made one at a time, and, for requests sent in parallel, one
    more connection per worker thread, sharing its token. (The SDK can't
    wait on several requests of one connection safely: a network error is
    raised from whichever request is waited on first, and the request that
    failed then waits for ever.)"""

    def __init__(self, settings):
        self.settings = settings
        self.main = None
        self._local = threading.local()
        self._workers = []
        self._workers_lock = threading.Lock()
        self._pool = None
        # what this engine refused of its progress feed, found out once
        self.events_from = True       # GET /events?from=ID
        self.job_search = True        # GET /jobs?search=correlation_id=X

    def _connection(self, token=None):
        settings = self.settings
        return sdk.Connection(
            url=settings.server,
            username=settings.user_name,
            password=settings.password,
            token=token,
            ca_file=settings.ca_file,
            insecure=settings.insecure,
            timeout=settings.timeout,
            log=log if log.isEnabledFor(logging.DEBUG) else None,
            debug=False,
        )

    def connect(self):
        """Log in and check the API answers; raise sdk.Error with the reason.
        The SDK's login has no timeout of its own: it gets the request
        timeout here."""
        if self.settings.insecure:
            log.warning("insecure = yes: the engine's TLS certificate is NOT "
                        'verified')
        self.main = self._connection()
        try:
            with_deadline(lambda: self.main.test(raise_exception=True),
                          self.settings.timeout, 'logging in')
        except Timeout:
            # the login thread still holds the connection's lock: closing it
            # would wait for ever; the process ends soon, and the socket with it
            self.main = None
            raise
        except BaseException:
            self.close(logout=False)
            raise
        log.info('connected to the engine at %s as %s', self.settings.server,
                 self.settings.user_name)

    @property
    def system(self):
        return self.main.system_service()

    def _worker_system(self):
        connection = getattr(self._local, 'connection', None)
        if connection is None:
            connection = self._connection(token=self.main.authenticate())
            self._local.connection = connection
            with self._workers_lock:
                self._workers.append(connection)
        return connection.system_service()

    def map(self, calls):
        """Given (key, function) pairs, call function(system_service) for
        each, up to [connection] connections at a time; return {key: its
        result, or the sdk.Error it raised}."""
        if not calls:
            return {}
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.settings.connections,
                thread_name_prefix='engine')

        def call(function):
            try:
                return function(self._worker_system())
            except sdk.Error as error:
                return error
            except pycurl.error as error:
                return sdk.Error(one_line(error))

        futures = [(key, self._pool.submit(call, function))
                   for key, function in calls]
        return {key: future.result() for key, future in futures}

    def close(self, logout=True):
        """Log out (step 10) and release the connections; a failure is only
        a warning."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for connection in self._workers:
            with contextlib.suppress(sdk.Error, pycurl.error):
                connection.close(logout=False)
        if self.main is None:
            return
        try:
            with_deadline(lambda: self.main.close(logout=logout),
                          self.settings.timeout, 'logging out')
        except (sdk.Error, pycurl.error) as error:
            log.warning('could not log out of the engine: %s', one_line(error))
            # after a Timeout the logout still holds the connection: closing
            # it would wait for ever; the exit releases it
            if not isinstance(error, Timeout):
                with contextlib.suppress(sdk.Error, pycurl.error):
                    self.main.close(logout=False)
        self.main = None


class Timeout(sdk.Error if sdk else Exception):
    """A call to the engine that did not return in time."""


def with_deadline(function, seconds, what):
    """Call function in a thread and return its result; raise Timeout when
    it has not returned after `seconds` (the thread is left behind)."""
    try:
        return in_thread(function, seconds, what, lambda: Timeout(
            'no answer after %d seconds while %s' % (seconds, what)))
    except pycurl.error as error:
        raise sdk.Error(one_line(error)) from error


def one_line(error):
    """Given an exception, return its message on one line."""
    text = ' '.join(str(error).split())
    return text or type(error).__name__


def describe_engine_error(error, settings):
    """Given an sdk.Error from the first contact, return an actionable line."""
    text = one_line(error)
    lowered = text.lower()
    if isinstance(error, sdk.AuthError) or 'authenticat' in lowered:
        return ('the engine at %s refused the login of %s: %s'
                % (settings.server, settings.user_name, text))
    if 'subject name' in lowered or 'target host' in lowered:
        # curl: "no alternative certificate subject name matches target host
        # name", "certificate subject name ... does not match target host"
        return ('cannot verify the TLS certificate of the engine at %s: %s; '
                'the certificate is not issued to that host name: write '
                '[connection] server with a name the certificate holds (the '
                "engine's FQDN)" % (settings.server, text))
    if 'certificate' in lowered or 'self signed' in lowered \
            or 'self-signed' in lowered or 'issuer' in lowered:
        return ('cannot verify the TLS certificate of the engine at %s: %s; '
                'set [connection] ca_file to the engine CA (https://ENGINE/'
                'ovirt-engine/services/pki-resource?resource=ca-certificate&'
                'format=X509-PEM-CA)' % (settings.server, text))
    return 'cannot reach the engine at %s: %s' % (settings.server, text)


def is_not_found(error):
    return isinstance(error, sdk.NotFoundError) or getattr(error, 'code', None) == 404


def is_conflict(error):
    return getattr(error, 'code', None) == 409


# ==== Layer: the engine client: VM look-ups ==================================

def list_vms(system, search, follow, positions=None):
    """Given a search, return every VM it finds, page after page (the engine
    answers at most PAGE_SIZE at a time), with `follow` inlined; fill
    positions, when given, with {vm id: its place in the answer, from 0}."""
    found = {}
    page = 1
    while True:
        answer = list_page(system, search, page, follow)
        new = [vm for vm in answer if vm.id not in found]
        for vm in new:
            found[vm.id] = vm
            if positions is not None:
                positions[vm.id] = len(positions)
        if len(answer) < PAGE_SIZE or not new:
            return list(found.values())
        page += 1


def list_page(system, search, page, follow, size=PAGE_SIZE):
    """Given a search and a page number (of `size` VMs), return that page of
    VMs, with `follow` inlined."""
    query = '%s page %d' % (search, page)
    answer = following(lambda **follows: system.vms_service().list(
        search=query, max=size, **follows), follow)
    return [fill_in(system, vm, follow) for vm in answer]


def get_vm(system, vm_id, follow):
    """Given a VM id, return the VM with `follow` inlined."""
    service = system.vms_service().vm_service(vm_id)
    return fill_in(system, following(service.get, follow), follow)


def following(call, follow):
    """Return call(follow=follow); an engine that does not know `follow`
    (or this use of it) answers 400, and then call() without it."""
    try:
        return call(follow=follow)
    except sdk.Error as error:
        if getattr(error, 'code', None) != 400:
            raise
        log.debug('the engine refused follow=%s: %s', follow, one_line(error))
        return call()


def fill_in(system, vm, follow):
    """Given a VM asked for with `follow`, fetch what the engine did not
    inline (an engine older than 4.2, or a proxy that drops the parameter,
    answers with links only): a VM always has its "Active VM" snapshot, so
    an empty snapshot list was not inlined; neither was a disk without an
    image id. Return the VM."""
    wanted = set(follow.split(','))
    service = system.vms_service().vm_service(vm.id)
    if 'snapshots' in wanted and not vm.snapshots:
        log.debug('VM %s: snapshots not inlined; asking for them', vm.name)
        vm.snapshots = service.snapshots_service().list()
    if 'disk_attachments.disk' in wanted:
        if not vm.disk_attachments:
            vm.disk_attachments = following(
                service.disk_attachments_service().list, 'disk')
        for attachment in vm.disk_attachments:
            disk = attachment.disk
            if (disk is not None and disk.id and disk.image_id is None
                    and disk.storage_type in (None, types.DiskStorageType.IMAGE)):
                log.debug('VM %s: disk %s not inlined; asking for it',
                          vm.name, disk.id)
                attachment.disk = system.disks_service().disk_service(
                    disk.id).get()
    return vm


# ==== Layer: child processes and mounts ======================================

def terminate_child(process, signum=signal.SIGTERM):
    """Given a Popen started in its own session, send its whole group
    signum (SIGTERM)."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def stop_child(process, label, wait=None):
    """Given a Popen started in its own session, end its group: SIGTERM,
    then SIGKILL after KILL_AFTER seconds, each wait bounded (wait(seconds):
    how to wait, raising subprocess.TimeoutExpired; default process.wait).
    Return the signal that ended it ('SIGTERM' or 'SIGKILL'), None when it
    had ended already, or 'alive' when not even SIGKILL ended it in time (a
    process stuck in the kernel, on a hung mount: it is left, and said
    so)."""
    if process.poll() is not None:
        return None
    for signum in (signal.SIGTERM, signal.SIGKILL):
        terminate_child(process, signum)
        try:
            (wait or process.wait)(timeout=KILL_AFTER)
            return signal.Signals(signum).name
        except subprocess.TimeoutExpired:
            if signum == signal.SIGTERM:
                log.warning('%s (pid %d) did not end %d seconds after SIGTERM: '
                            'sending SIGKILL', label, process.pid, KILL_AFTER)
    log.error('%s (pid %d) did not end even %d seconds after SIGKILL (stuck '
              'in the kernel?); left running', label, process.pid, KILL_AFTER)
    return 'alive'


def wait_for_child(process, deadline, stop):
    """Given a Popen, a deadline (time.monotonic(), or None: none) and the
    Stop, wait until the process ends, the deadline passes or a stop is
    requested, looking every CHILD_POLL seconds; return True when the
    deadline passed with it still running."""
    while not stop.requested:
        wait = CHILD_POLL
        if deadline is not None:
            wait = min(wait, deadline - time.monotonic())
            if wait <= 0:
                return process.poll() is None
        try:
            process.wait(timeout=wait)
            return False
        except subprocess.TimeoutExpired:
            continue
    return False


def describe_status(status):
    """Given a child's exit status, say it in words."""
    if status < 0:
        try:
            return 'was killed by %s' % signal.Signals(-status).name
        except ValueError:
            return 'was killed by signal %d' % -status
    return 'exited with status %d' % status


def run_captured(command, timeout, stop):
    """Run a command in its own session, stopped (SIGTERM to its group, then
    SIGKILL) after timeout seconds or by a stop request; return (exit
    status, None when it took too long, or the OSError that prevented it;
    stdout; stderr)."""
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True, close_fds=True)
    except OSError as error:
        return error, '', ''
    stop.child = process
    status, streams = None, [b'', b'']

    def collect(timeout):
        # a grandchild may hold the pipes: bounded all the same
        streams[:] = process.communicate(timeout=timeout)
    try:
        collect(timeout)
        status = process.returncode
    except subprocess.TimeoutExpired:
        stop_child(process, command[0], collect)
    finally:
        stop.child = None
    output, errors = streams
    return (status, output.decode('utf-8', 'replace'),
            errors.decode('utf-8', 'replace'))


def run_child(command, timeout, stop):
    """Run a short-lived command (see run_captured); return (exit status, or
    None when it was stopped for taking too long, or the OSError that
    prevented it; its output and errors, as one text)."""
    status, output, errors = run_captured(command, timeout, stop)
    return status, '\n'.join(part.strip() for part in (output, errors)
                             if part.strip())


# the scheduler colours its output even when it is no terminal's
ANSI_ESCAPE = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def log_output(stream, label, on_line=None):
    """Log each line of a child's output as it comes, until it closes,
    without terminal colour codes; call on_line(text) after each."""
    with stream:
        for raw in stream:
            line = ANSI_ESCAPE.sub('', raw.decode('utf-8', 'replace')).rstrip()
            if line:
                log.info('%s: %s', label, line)
            if on_line is not None:
                on_line(line)


def is_mount_point(directory):
    """Tell whether directory is a mount point, by the kernel's mount table
    (os.path.ismount misses a bind mount within one file system)."""
    target = os.path.realpath(directory)
    if os.path.ismount(target):
        return True
    try:
        with open('/proc/self/mountinfo', encoding='utf-8') as table:
            for line in table:
                if unescape_mount_path(line.split()[4]) == target:
                    return True
    except OSError:
        pass
    return False


def unescape_mount_path(field):
    """Given a mount point as /proc/self/mountinfo writes it, return it."""
    return re.sub(r'\\([0-7]{3})', lambda match: chr(int(match.group(1), 8)),
                  field)


def wait_for_mount(directory, seconds=5):
    deadline = time.monotonic() + seconds
    while True:
        if is_mount_point(directory):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def unmount_and_remove(directory, run, label='the slave volume'):
    """Unmount the directory if mounted (lazily when it stays busy), then
    remove it; never remove anything inside it."""
    if is_mount_point(directory):
        for attempt, command in enumerate((['umount', directory],
                                           ['umount', directory],
                                           ['umount', '-l', directory])):
            try:
                result = subprocess.run(command, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT,
                                        timeout=UMOUNT_TIMEOUT)
                message = result.stdout.decode('utf-8', 'replace').strip()
            except (OSError, subprocess.TimeoutExpired) as error:
                message = one_line(error)
            if not is_mount_point(directory):
                break
            log.warning('could not unmount %s: %s', directory,
                        message or 'still mounted')
            time.sleep(1 + attempt)
        if is_mount_point(directory):
            run.fail('%s is still mounted at %s: unmount it by hand '
                     '(umount %s)', label, directory, directory)
            return
        log.info('unmounted %s', directory)
    try:
        os.rmdir(directory)
    except OSError as error:
        log.warning('could not remove %s: %s', directory, error.strerror)


def slave_host(slave):
    return slave.rsplit('@', 1)[-1]


# The slave's client id. geo-replication makes the slave read-only to
# ordinary clients, and gluster's read-only xlator lets every internal
# (negative) client id through (read-only-common.c
# is_readonly_or_worm_enabled). Not -1 (GF_CLIENT_PID_GSYNCD, what gsyncd
# uses): the shard xlator hands gsyncd's calls through unsharded (shard.c:
# lookup, stat, unlink, rename), so on a sharded slave a -1 mount sees only
# the first shard of each file (measured on 10.3: a 20 MiB file read as its
# first 4 MiB) and its unlink leaves the other shards behind. -4 is
# GF_CLIENT_PID_NO_ROOT_SQUASH (libglusterfs common-utils.h; the id of
# `glusterfs --no-root-squash`, fuse-bridge.c): a whole-file client that
# the read-only xlator lets write.
SLAVE_CLIENT_PID = '--client-pid=-4'


def mount_command(args, settings, directory):
    return [settings.glusterfs, '--volfile-server', slave_host(args.slave),
            '--volfile-id', args.slavevol, SLAVE_CLIENT_PID,
            '-l', settings.mount_log, directory]


def master_mount_command(args, settings, directory):
    return [settings.glusterfs, '--volfile-server', settings.master_server,
            '--volfile-id', args.mastervol, '--read-only',
            '-l', settings.mount_log, directory]


@contextlib.contextmanager
def volume_mounted(run, command, where, volume):
    """Given the run and a glusterfs command line whose last word is the
    mount point (replaced by a fresh temporary directory), mount for the
    block; yield the directory, or None after run.fail when it could not be
    mounted. Unmount and remove the directory on every way out."""
    settings = run.settings
    directory = tempfile.mkdtemp(prefix='vmbackup-%s-' % volume)
    try:
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(settings.mount_log), exist_ok=True)
        command = command[:-1] + [directory]
        log.info('mounting %s: %s', where,
                 ' '.join(shlex.quote(part) for part in command))
        mounted = False
        status, output = run_child(command, settings.mount_timeout, run.stop)
        for line in output.splitlines():
            log.info('glusterfs: %s', line)
        if isinstance(status, OSError):
            run.fail('cannot run %s: %s', settings.glusterfs,
                     status.strerror or status)
        elif status is None:
            run.fail('cannot mount %s: glusterfs did not finish within %d '
                     'seconds ([gluster] mount_timeout)', where,
                     settings.mount_timeout)
        elif status != 0:
            run.fail('cannot mount %s: glusterfs %s (see %s)',
                     where, describe_status(status), settings.mount_log)
        else:
            mounted = wait_for_mount(directory)
            if not mounted:
                run.fail('cannot mount %s: glusterfs succeeded but %s is not a '
                         'mount point (see %s)', where, directory,
                         settings.mount_log)
        yield directory if mounted else None
    finally:
        unmount_and_remove(directory, run, where.rsplit(' ', 1)[0])


@contextlib.contextmanager
def slave_mounted(run, read_only=False):
    """Given the run, mount the slave volume in a fresh temporary directory
    for the block (read_only: with --read-only, for --verify; else with
    SLAVE_CLIENT_PID, which the slave's features.read-only lets write);
    yield its path, or None after run.fail. Unmount and remove the
    directory on every way out."""
    args = run.args
    command = mount_command(args, run.settings, 'DIR')
    if read_only:
        command[command.index(SLAVE_CLIENT_PID)] = '--read-only'
    with volume_mounted(run, command, 'the slave volume %s:%s' % (
            slave_host(args.slave), args.slavevol),
            args.slavevol) as directory:
        yield directory


@contextlib.contextmanager
def master_mounted(run):
    """Mount the master volume read-only ([gluster] master_server) in a
    fresh temporary directory for the block, to read the OVF store the
    engine writes and to confirm the copy: yield its path (None when no VM
    is backed up: nothing to confirm). Raise Failed, before any snapshot,
    when it can't be mounted; unmount and remove the directory on every
    way out."""
    if run.plan is None or not run.plan.backups:
        yield None
        return
    args, settings = run.args, run.settings
    with volume_mounted(run, master_mount_command(args, settings, 'DIR'),
                        'the master volume %s:%s' % (settings.master_server,
                                                     args.mastervol),
                        args.mastervol) as directory:
        if directory is None:
            raise Failed()
        yield directory


# ==== Layer: volume files: vdsm's .meta, paths, the OVF store ================
#
# Facts from the real systems (their sources are the reference; no code of
# theirs is here): vdsm's .meta is sorted KEY=value lines ending EOF
# (lib/vdsm/storage/volumemetadata.py, constants.py); vdsm finds an image's
# leaf by VOLTYPE and walks PUUID links to the blank UUID (image.py
# Image.getChain, ImageIsNotLegalChain when no leaf). The engine's OVF store
# is a raw volume holding a tar of info.json, <vm id>.ovf and metadata.json;
# its .meta DESCRIPTION is JSON {"Updated", "Last Updated", "Size", "Storage
# Domains", "Disk Description": "OVF_STORE"}, set to Updated false before the
# tar is written and to Updated true with the new Last Updated and Size after
# it (ovirt-engine ProcessOvfUpdateForStorageDomainCommand,
# OvfInfoFileConstants); an import reads Size bytes of the updated store with
# the latest Last Updated (StorageHandlingCommandBase.getLatestOVFDisk).

BLANK_UUID = '00000000-0000-0000-0000-000000000000'
OVF_STORE_ALIAS = 'OVF_STORE'
OVF_STORE_DISKTYPE = 'OVFS'
META_READ_LIMIT = 65536              # a .meta is 512 bytes at most for vdsm
QEMU_IMG_TIMEOUT = 600               # seconds, one qemu-img info or check
QEMU_FORMATS = {'COW': 'qcow2', 'RAW': 'raw'}
JAVA_DATE = '%a %b %d %H:%M:%S %Y'   # Date.toString() without its zone


class MetaError(ValueError):
    """A .meta file that is not in vdsm's format."""


class OvfStore(Record):
    """One OVF_STORE volume of a domain as the engine wrote it before the
    snapshots: its .meta and its tar, read from the master."""
    DEFAULTS = {'sd_id': None, 'disk_id': None, 'volume_id': None,
                'meta': None, 'data': None, 'last_updated': None}
    HIDDEN = ('meta', 'data')


def parse_meta(data, name):
    """Given a .meta file's bytes, return {KEY: value} up to its EOF line;
    raise MetaError when it is not vdsm's format."""
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError:
        raise MetaError('%s is not text' % name) from None
    values = {}
    for line in text.split('\n'):
        if line.startswith('EOF'):
            return values
        if '=' in line:
            key, value = line.split('=', 1)
            values[key.strip()] = value.strip()
    raise MetaError('%s has no EOF line (truncated?)' % name)


def open_beneath(root, path, flags):
    """Given a mount point and a path below it, open the path (os.open
    flags) one component at a time with O_NOFOLLOW: a symlink anywhere on
    the way, directory or file, is refused (OSError ELOOP or ENOTDIR), so
    that what is read or written is the file at that very path of the
    volume. Without root, the file itself only is opened with O_NOFOLLOW.
    Return the descriptor."""
    nofollow = getattr(os, 'O_NOFOLLOW', 0)
    if root is None:
        return os.open(path, flags | nofollow)
    relative = os.path.relpath(path, root)
    parts = relative.split(os.sep)
    if relative.startswith(os.pardir) or not parts[-1]:
        raise OSError(errno.EINVAL, 'not below %s' % root, path)
    directory = os.open(root, os.O_RDONLY | getattr(os, 'O_DIRECTORY', 0))
    done = []
    try:
        for part in parts[:-1]:
            done.append(part)
            inner = os.open(part, os.O_RDONLY | nofollow | getattr(os, 'O_DIRECTORY', 0),
                            dir_fd=directory)
            os.close(directory)
            directory = inner
        done.append(parts[-1])
        return os.open(parts[-1], flags | nofollow, dir_fd=directory)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(error.errno, 'a symbolic link (not followed) or not a '
                          'directory', os.path.join(*done)) from None
        raise
    finally:
        os.close(directory)


def read_meta(path, root=None):
    """Given a .meta file's path (below root: see open_beneath), return (its
    bytes, {KEY: value}); raise OSError or MetaError, also for a file
    longer than META_READ_LIMIT (not vdsm's, and not read whole)."""
    with os.fdopen(open_beneath(root, path, os.O_RDONLY), 'rb') as stream:
        data = stream.read(META_READ_LIMIT + 1)
    if len(data) > META_READ_LIMIT:
        raise MetaError('%s is longer than %d bytes: not a vdsm .meta'
                        % (os.path.basename(path), META_READ_LIMIT))
    return data, parse_meta(data, os.path.basename(path))


def write_in_place(path, data, root=None):
    """Replace a file's content with data in place (same inode: a file
    replaced by rename would lose its gfid, and geo-replication maps slave
    files to master files by gfid): write, truncate, fsync. Below root, no
    symlink is followed (open_beneath)."""
    with os.fdopen(open_beneath(root, path, os.O_RDWR), 'r+b') as stream:
        stream.write(data)
        stream.truncate()
        stream.flush()
        os.fsync(stream.fileno())


def meta_with_key(data, key, value, name):
    """Given a .meta file's bytes, return them with its one KEY line (the
    one line before EOF whose key, as vdsm strips it, is KEY) set to
    KEY=value, every other byte unchanged; raise MetaError unless the
    result parses, says KEY=value and says everything else as before."""
    before = parse_meta(data, name)
    lines = data.split(b'\n')
    matches = []
    for index, line in enumerate(lines):
        if line.startswith(b'EOF'):
            break
        if b'=' in line and line.split(b'=', 1)[0].strip() == key.encode():
            matches.append(index)
    if len(matches) != 1:
        raise MetaError('%s has %d %s lines' % (name, len(matches), key))
    lines[matches[0]] = key.encode() + b'=' + value.encode()
    changed = b'\n'.join(lines)
    after = parse_meta(changed, name)
    expected = dict(before)
    expected[key] = value
    if after != expected:
        raise MetaError('%s would not say %s=%s after the edit' % (name, key, value))
    return changed


def rewrite_meta(path, read, changed, root=None):
    """Write changed into the .meta at path in place, if it still holds
    the bytes read (nobody rewrote it since); raise OSError or MetaError."""
    again, _ = read_meta(path, root)
    if again != read:
        raise MetaError('%s changed since it was read' % os.path.basename(path))
    if changed != read:
        write_in_place(path, changed, root)


def set_meta_key(path, key, value, root=None):
    """Given a .meta file, set KEY=value on its one KEY line in place, every
    other byte unchanged; return True when it changed. Raise OSError or
    MetaError."""
    data, _ = read_meta(path, root)
    changed = meta_with_key(data, key, value, os.path.basename(path))
    rewrite_meta(path, data, changed, root)
    return changed != data


def ovf_description(values):
    """Given a parsed .meta, return its DESCRIPTION as a dict when the
    volume is an OVF store's, else None."""
    try:
        description = json.loads(values.get('DESCRIPTION') or '')
    except ValueError:
        description = None
    if not isinstance(description, dict):
        return None
    if (values.get('DISKTYPE') != OVF_STORE_DISKTYPE
            and description.get('Disk Description') != OVF_STORE_ALIAS):
        return None
    return description


def java_date(text):
    """Given a Last Updated (Java's Date.toString()), return a datetime, or
    None. Its zone is the engine's, the same for every store: left out."""
    words = (text or '').split()
    if len(words) != 6:
        return None
    try:
        return datetime.datetime.strptime(' '.join(words[:4] + words[5:]),
                                          JAVA_DATE)
    except ValueError:
        return None


def volume_path(root, sd_id, disk_id, volume_id):
    """The exact path of a volume; every id must be a UUID."""
    for value in (sd_id, disk_id, volume_id):
        if not UUID.match(value or ''):
            raise MetaError('%r is not a UUID' % (value,))
    return os.path.join(root, sd_id, 'images', disk_id, volume_id)


# the engine side of the OVF store

def ovf_store_volumes(engine, sd_id):
    """Given a storage domain id, return [(disk id, volume id)] of its
    OVF_STORE disks (GET /storagedomains/{id}/disks); raise sdk.Error."""
    disks = (engine.system.storage_domains_service().storage_domain_service(sd_id)
             .disks_service().list())
    found = []
    for disk in disks:
        if (disk.content_type == types.DiskContentType.OVF_STORE
                or disk.alias == OVF_STORE_ALIAS):
            if UUID.match(disk.id or '') and UUID.match(disk.image_id or ''):
                found.append((disk.id, disk.image_id))
    return found


def read_ovf_store(root, sd_id, disk_id, volume_id):
    """Given a mount and an OVF store volume, return an OvfStore with its
    .meta and its tar (Size bytes), or None when it was never written;
    raise OSError or MetaError."""
    path = volume_path(root, sd_id, disk_id, volume_id)
    for _ in range(3):
        meta, values = read_meta(path + '.meta')
        description = ovf_description(values)
        if description is None:
            raise MetaError('%s.meta is not an OVF store\'s' % volume_id)
        if not description.get('Updated') or 'Size' not in description:
            return None
        size = description['Size']        # the engine writes a number
        if isinstance(size, str) and re.match(r'^[0-9]{1,20}$', size):
            size = int(size)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise MetaError('OVF store %s: its .meta gives Size %s, not a '
                            'number of bytes' % (volume_id, json.dumps(size)))
        with open(path, 'rb') as stream:
            held = os.fstat(stream.fileno()).st_size
            if size > held:       # read no more than the volume holds
                raise MetaError('OVF store %s holds %d bytes, its .meta says '
                                '%d' % (volume_id, held, size))
            data = stream.read(size)
        if len(data) != size:
            raise MetaError('OVF store %s holds %d bytes, its .meta says %d'
                            % (volume_id, len(data), size))
        # the tar's info.json carries the Last Updated of the same write:
        # a tar that is not the one the .meta describes is one caught half
        # written, or stale in a client's cache (gluster's quick-read keeps
        # small files a second: seen on 10.3 through a second mount)
        written = ovf_info(data).get('Last Updated')
        if written != description.get('Last Updated'):
            raise MetaError('OVF store %s holds the tar of %s, its .meta says %s'
                            % (volume_id, written, description.get('Last Updated')))
        again, _ = read_meta(path + '.meta')
        if again == meta:        # not rewritten while we read it
            return OvfStore(sd_id=sd_id, disk_id=disk_id, volume_id=volume_id,
                            meta=meta, data=data,
                            last_updated=description.get('Last Updated'))
    raise MetaError('OVF store %s kept changing while it was read' % volume_id)


def ovf_info(data):
    """Given an OVF store's tar, return its info.json; raise MetaError."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode='r:') as tar:
            member = tar.getmember('info.json')
            info = json.loads(tar.extractfile(member).read().decode('utf-8'))
    except (tarfile.TarError, KeyError, EOFError, ValueError, UnicodeDecodeError) as error:
        raise MetaError('the OVF store has no readable info.json: %s'
                        % one_line(error)) from None
    if not isinstance(info, dict):
        raise MetaError('the OVF store\'s info.json is not an object')
    return info


# ==== Step 4: choose the VMs =================================================

def check_session(run):
    """Given the run, check with gluster's CLI that the geo-replication
    session MASTERVOL -> SLAVE::SLAVEVOL exists; raise Failed naming what is
    missing and the likely fix."""
    args, settings = run.args, run.settings
    session = '%s::%s' % (args.slave, args.slavevol)
    command = [settings.gluster, '--mode=script', 'volume', 'geo-replication',
               args.mastervol, session, 'status', '--xml']
    # stderr apart: gluster may warn there, and its XML is stdout alone
    status, output, errors = run_captured(command, GLUSTER_CLI_TIMEOUT,
                                          run.stop)
    for line in errors.splitlines():
        if line.strip():
            log.info('gluster: %s', line.strip())
    problem = session_problem(status, output, errors)
    if problem is None:
        log.info('geo-replication session %s -> %s exists', args.mastervol,
                 session)
        return
    if problem == 'missing':
        run.fail('there is no geo-replication session %s -> %s: check '
                 'MASTERVOL, SLAVE and SLAVEVOL against "gluster volume '
                 'geo-replication status"; nothing was changed',
                 args.mastervol, session)
    elif isinstance(status, OSError):
        run.fail('cannot run %s ([gluster] gluster): %s; nothing was changed',
                 settings.gluster, status.strerror or status)
    else:
        run.fail('cannot check the geo-replication session %s -> %s: %s; '
                 'nothing was changed', args.mastervol, session, problem)
    raise Failed()


def session_problem(status, output, errors=''):
    """Given the exit status, stdout and stderr of `gluster volume
    geo-replication M S::V status --xml`, return None when the session
    exists, 'missing' when gluster says there is none, or what went wrong,
    in words. The XML is read from stdout alone.

    GlusterFS 10.3, measured: exit 0 with cliOutput/opRet 0 and a session
    element when it exists; exit 2, "geo-replication command failed" and no
    XML when it does not; exit 1 "Connection failed" when glusterd is down."""
    if isinstance(status, OSError):
        return one_line(status)
    if status is None:
        return 'gluster did not answer within %d seconds' % GLUSTER_CLI_TIMEOUT
    if status == 0:
        start = output.find('<cliOutput')
        try:
            root = ElementTree.fromstring(output[start:]) if start >= 0 else None
        except ElementTree.ParseError:
            root = None
        if root is None:
            return 'gluster answered without its XML'
        if root.findtext('opRet', '').strip() != '0':
            return (root.findtext('opErrstr') or '').strip() or 'gluster failed'
        if root.find('geoRep/volume/sessions/session') is None:
            return 'missing'
        return None
    said = '\n'.join(part.strip() for part in (output, errors) if part.strip())
    if status == 2 and 'geo-replication command failed' in said:
        return 'missing'
    first = said.splitlines()[0] if said else ''
    return 'gluster %s%s' % (describe_status(status),
                             (': ' + first) if first else '')


def find_storage_domains(run, engine):
    """Given the run, return {sd_id: name} of the storage domain the master
    volume backs: the one named in the config, or the GlusterFS domain whose
    path names the volume; {} with --all-vms. Raise Failed when there is
    none, or several."""
    if run.args.all_vms:
        log.warning('--all-vms: every running VM is snapshotted, with all '
                    'its disks, wherever they are')
        return {}
    settings, mastervol = run.settings, run.mastervol
    domains = engine.system.storage_domains_service().list()
    if settings.storage_domain:
        named = [sd for sd in domains if sd.name == settings.storage_domain]
        if not named:
            run.fail('storage domain %r ([gluster] storage_domain) does not '
                     'exist in the engine; nothing was changed',
                     settings.storage_domain)
            raise Failed()
        return {sd.id: sd.name for sd in named}
    matches = [sd for sd in domains if backs_volume(sd, mastervol)]
    if len(matches) > 1:
        run.fail('several GlusterFS storage domains use a volume named %s (%s); '
                 'name the right one in [gluster] storage_domain', mastervol,
                 ', '.join(sorted(sd.name for sd in matches)))
        raise Failed()
    if not matches:
        run.fail('no GlusterFS storage domain of the engine uses volume %s: '
                 'check MASTERVOL, or name the domain in [gluster] '
                 'storage_domain (--all-vms snapshots every running VM '
                 'instead); nothing was changed', mastervol)
        raise Failed()
    log.info('volume %s backs storage domain %s (%s)', mastervol,
             matches[0].name, matches[0].id)
    return {matches[0].id: matches[0].name}


def backs_volume(domain, mastervol):
    """Given a storage domain, tell whether it is GlusterFS on mastervol; its
    path is /VOL, VOL or HOST:/VOL."""
    storage = domain.storage
    if storage is None or storage.type != types.StorageType.GLUSTERFS:
        return False
    path = (storage.path or '').rsplit(':', 1)[-1].strip('/')
    return path == mastervol


def check_and_choose(run, engine):
    """Step 4: given the run, check that the geo-replication session and the
    storage domain exist, then choose the VMs; return the Plan. Raise Failed
    (nothing changed) when a check fails or a name matches no VM, and
    LockHeld when a run on another node may own a snapshot of ours."""
    args = run.args
    check_session(run)
    try:
        domains = find_storage_domains(run, engine)
    except sdk.Error as error:
        run.fail('could not list the storage domains: %s', one_line(error))
        raise Failed() from None
    try:
        vm_positions = {}
        vms = list_vms(engine.system, 'status=up', FOLLOW, vm_positions)
    except sdk.Error as error:
        run.fail('could not list the running VMs: %s', one_line(error))
        raise Failed() from None
    log.debug('%d VMs are up', len(vms))
    backups, problems = select_backups(vms, domains, set(args.vm),
                                       set(args.exclude), run.mastervol)
    unknown = [name for name in sorted(set(args.vm) | set(args.exclude))
               if name not in {vm.name for vm in vms}
               and not vm_exists(engine, name)]
    for name in unknown:
        problems.append('no VM is named %s (--%s)' % (
            name, 'vm' if name in args.vm else 'exclude'))
    for name in sorted(set(args.vm) - {vm.name for vm in vms} - set(unknown)):
        problems.append('VM %s named with --vm is not running' % name)
    for problem in problems:
        run.fail('%s', problem)
    if problems:
        log.error('nothing was changed')
        raise Failed()
    log.info('%d of %d running VMs chosen: %s', len(backups), len(vms),
             ', '.join(backup.name for backup in backups) or 'none')
    if not backups:
        log.warning('no running VM has a disk to snapshot on %s: the volume '
                    'is replicated with no snapshot, as it is', 'storage '
                    'domain ' + ', '.join(domains.values()) if domains
                    else 'any storage domain')
    plan = Plan(storage_domains=domains, backups=backups, up_vm_count=len(vms),
                vm_positions=vm_positions,
                snapshot_description=snapshot_description(run.mastervol))
    check_stale_snapshots(run, plan, vms)
    return plan


def vm_exists(engine, name):
    """Given a VM name, tell whether the engine has a VM of that name (in
    any state)."""
    return any(vm.name == name for vm in engine.system.vms_service().list(
        search='name=%s' % name, max=PAGE_SIZE))


def select_backups(vms, domains, wanted, excluded, mastervol):
    """Given the running VMs (disks and snapshots inlined), the storage
    domains ({} for all), the --vm and --exclude names and the master
    volume, return (a VmBackup per VM to snapshot, sorted by name, with the
    snapshots of an earlier run of this volume's backup, or of the 2016
    tool's, as stale; the problems, one line each, of VMs named with --vm
    that can't be backed up). Another volume's backup snapshots are not
    stale: its run may be live."""
    backups = []
    problems = []
    for vm in sorted(vms, key=lambda vm: vm.name or ''):
        if wanted and vm.name not in wanted:
            continue
        if vm.name in excluded:
            log.info('VM %s left out (--exclude)', vm.name)
            continue
        if vm.name == HOSTED_ENGINE_NAME:
            if vm.name in wanted:
                problems.append('VM %s is the hosted engine and is never '
                                'snapshotted' % vm.name)
            else:
                log.debug('VM %s skipped: the hosted engine', vm.name)
            continue
        disks = disks_to_back_up(vm, domains)
        if not disks:
            message = 'VM %s has no disk that can be snapshotted on %s' % (
                vm.name, 'storage domain ' + ', '.join(domains.values())
                if domains else 'any storage domain')
            if vm.name in wanted:
                problems.append(message)
            else:
                log.debug('%s', message)
            continue
        stale = [snapshot for snapshot in (vm.snapshots or [])
                 if backup_snapshot_volume(snapshot.description)
                 in ('', mastervol)
                 and snapshot.snapshot_type != types.SnapshotType.ACTIVE]
        backups.append(VmBackup(vm_id=vm.id, name=vm.name, disks=disks,
                                stale_snapshot_ids=[s.id for s in stale]))
    return backups, problems


def snapshot_description(mastervol):
    """Given the master volume, return the description of its backup
    snapshots: 'GLUSTER-Geo-rep-snapshot MASTERVOL'."""
    return '%s %s' % (SNAPSHOT_DESCRIPTION, mastervol)


def backup_snapshot_volume(description):
    """Given a snapshot's description, return the master volume whose backup
    snapshot it is, '' for the 2016 tool's (it names no volume), or None
    when it is no backup snapshot (a user's)."""
    if description == SNAPSHOT_DESCRIPTION:
        return ''
    prefix = SNAPSHOT_DESCRIPTION + ' '
    if description and description.startswith(prefix) \
            and VOLUME_NAME.match(description[len(prefix):]):
        return description[len(prefix):]
    return None


def check_stale_snapshots(run, plan, vms):
    """Given the Plan, allow the removal of the snapshots with our
    description found on its VMs only when no live run may own them: when
    the lock is cluster-wide (ours), or the snapshot names this volume and
    is older than the longest a run can take. The 2016 description names no
    volume: a run of any volume may own it, so only the cluster-wide lock
    allows its removal. Raise LockHeld otherwise (nothing done)."""
    if run.settings.lock_is_shared or run.args.dry_run:
        return
    snapshots = {snapshot.id: snapshot for vm in vms
                 for snapshot in vm.snapshots or []}
    longest = longest_run_seconds(run.args, run.settings)
    for backup in plan.backups:
        for snapshot_id in backup.stale_snapshot_ids:
            snapshot = snapshots.get(snapshot_id)
            description = getattr(snapshot, 'description', None)
            if description == SNAPSHOT_DESCRIPTION:
                raise LockHeld(
                    'VM %s has a snapshot %r (the description of vmbackup '
                    'before 2.2, which names no volume): a run of any volume '
                    'on another node may own it, and the lock in %s does not '
                    'reach other nodes; nothing done (mount gluster\'s shared '
                    'storage for a cluster-wide lock, or remove the snapshot '
                    'when no run is live)' % (backup.name, description,
                                              run.settings.lock_dir))
            age = snapshot_age(getattr(snapshot, 'date', None), time.time())
            if age is None or age < longest:
                raise LockHeld(
                    'VM %s has a snapshot %r %s: a run on another node may '
                    'own it, and the lock in %s does not reach other nodes; '
                    'nothing done (mount gluster\'s shared storage for a '
                    'cluster-wide lock, or remove the snapshot when no run is '
                    'live)' % (backup.name, description,
                               'of unknown age' if age is None else
                               'taken %s ago' % human_duration(age),
                               run.settings.lock_dir))
            log.warning('VM %s: snapshot %s is %s old, older than a run can '
                        'take: left by an earlier run', backup.name,
                        snapshot_id, human_duration(age))


def snapshot_age(date, now):
    """Given a snapshot's date (datetime, or None) and the epoch time now,
    return its age in seconds, or None when unknown."""
    if date is None:
        return None
    try:
        return now - date.timestamp()
    except (AttributeError, OverflowError, ValueError):
        return None


def longest_run_seconds(args, settings):
    """Given the command line and settings, return the longest a run can
    take from its snapshots to their removal (inf when the scheduler may
    wait for ever: -t 0)."""
    if args.timeout <= 0:
        return float('inf')
    return (2 * settings.wait_timeout * 60 + args.timeout * 60
            + settings.scheduler_grace + 2 * settings.mount_timeout
            + 2 * UMOUNT_TIMEOUT * 3)


def disks_to_back_up(vm, domains):
    """Given a VM with its disk attachments inlined and the chosen storage
    domains ({} for all), return a DiskRecord per disk to snapshot."""
    records = []
    for attachment in vm.disk_attachments or []:
        disk = attachment.disk
        if disk is None or disk.id is None:
            continue
        if disk.storage_type not in (None, types.DiskStorageType.IMAGE):
            log.debug('VM %s: disk %s is not an image disk; left out',
                      vm.name, disk.name or disk.id)
            continue
        sd_ids = [sd.id for sd in disk.storage_domains or []]
        in_domain = [sd_id for sd_id in sd_ids if not domains or sd_id in domains]
        if not in_domain:
            continue
        if disk.shareable:
            log.warning('VM %s: disk %s is shareable and cannot be '
                        'snapshotted; it is copied as it is', vm.name,
                        disk.name or disk.id)
            continue
        records.append(DiskRecord(disk_id=disk.id, sd_id=in_domain[0],
                                  base_id=disk.image_id))
    return records


def print_plan(run):
    """--dry-run: print what steps 5 to 9 would do."""
    args, settings, plan = run.args, run.settings, run.plan
    out = sys.stdout
    domains = (', '.join('%s (%s)' % (name, sd_id) for sd_id, name
                         in plan.storage_domains.items())
               or '--all-vms: every running VM, all disks')
    print('Dry run: nothing is changed.', file=out)
    print('Storage domain on volume %s: %s' % (args.mastervol, domains), file=out)
    if plan.backups:
        print('Would mount %s:%s read-only with: %s' % (
            settings.master_server, args.mastervol, ' '.join(
                shlex.quote(part)
                for part in master_mount_command(args, settings, 'DIR'))),
              file=out)
        if settings.presync:
            print('Would first run, as the pre-sync (a failure only a '
                  'warning): %s' % ' '.join(shlex.quote(part) for part in
                                            scheduler_command(args, settings,
                                                              presync_minutes(
                                                                  args, settings))),
                  file=out)
        print('and have the engine bring the OVF store of %s up to date '
              'first, and keep it.' % (', '.join(plan.storage_domains.values())
                                      or 'no domain'), file=out)
    print('VMs to snapshot (%d of %d running):' % (len(plan.backups),
                                                  plan.up_vm_count), file=out)
    for backup in plan.backups:
        for snapshot_id in backup.stale_snapshot_ids:
            print('  %s: would first remove snapshot %s left by an earlier run'
                  % (backup.name, snapshot_id), file=out)
        print('  %s: snapshot %r without memory, disks:' % (
            backup.name, plan.snapshot_description), file=out)
        for disk in backup.disks:
            print('    %s on %s, base image %s' % (disk.disk_id, disk.sd_id,
                                                   disk.base_id), file=out)
    print('Would run: %s' % ' '.join(
        shlex.quote(part) for part in scheduler_command(args, settings)),
          file=out)
    print('Would mount %s:%s with: %s' % (
        slave_host(args.slave), args.slavevol, ' '.join(
            shlex.quote(part) for part in mount_command(args, settings, 'DIR'))),
          file=out)
    print('and, for each disk above whose base there is confirmed to be the '
          "master's, delete only its new overlay and set VOLTYPE=LEAF in its "
          "base's .meta:", file=out)
    for backup in plan.backups:
        for disk in backup.disks:
            print('  DIR/%s/images/%s/<overlay id>{,.meta,.lease}, %s.meta'
                  % (disk.sd_id, disk.disk_id, disk.base_id), file=out)
    print("then put back the OVF store kept, where the engine rewrote it, and "
          'verify the copy.', file=out)
    if settings.restore_keep:
        host = restore_point_host(args, settings)
        command = remote_gluster_command(settings, host, [
            'snapshot', 'create', 'NAME', args.slavevol, 'no-timestamp',
            'description', 'EVENT TEXT'])
        print('When every disk is verified, would take the restore point %s '
              'with: %s' % (restore_point_name(args.slavevol, time.time()),
                            ' '.join(shlex.quote(part) for part in command)),
              file=out)
        print('and delete the restore points of ours beyond keep = %d, oldest '
              'first (gluster snapshot info volume %s on %s).'
              % (settings.restore_keep, args.slavevol, host), file=out)
    print('Would then remove the %d snapshots (live merge) and post an event '
          'from %s.' % (len(plan.backups), EVENT_ORIGIN), file=out)


# ==== Step 5: the OVF store, kept before the snapshots =======================

def write_ovf_stores(run, engine, master_root):
    """Step 5, before the snapshots: have the engine bring the OVF store of
    each chosen domain up to date (update_ovf_store) and keep it, read
    through the master's read-only mount once the engine says it wrote it
    (event 199) or that there was nothing to update (1052: the store there
    is current, as on a quiet night). "Last Updated" is never waited on: it
    does not change when nothing is written, and it counts whole seconds.
    Return the OvfStores kept: the store that describes the VMs without
    this run's snapshots, and without the VMs that carry another volume's
    backup snapshot (left out of the backup: leave_out_vms). A domain
    whose store was not kept is run.fail'd, and each disk there is marked
    so that nothing of it is changed at the remote site."""
    kept = []
    domains = run.plan.storage_domains if run.plan else {}
    if not domains or master_root is None:    # no VM to back up, or --all-vms
        return kept
    for sd_id, name in sorted(domains.items()):
        stores = keep_ovf_store(run, engine, master_root, sd_id, name)
        if stores is None:
            leave_out_domain(run.plan, sd_id, name)
            continue
        kept += stores
    return leave_out_vms(run, kept)


def leave_out_vms(run, stores):
    """Given the OvfStores just written, before this run's snapshots: a VM
    with disks on two volumes may carry the live backup snapshot of the
    other volume's run, and the store names it; a DR engine importing this
    domain would register that snapshot's volumes, which the other run
    deletes at its remote site. Such a VM is left out: not snapshotted by
    this run (dropped from the Plan, one warning each) and its OVF dropped
    from the stores kept (the other volume's store, written before its own
    snapshot, describes it). Return the stores to keep."""
    foreign = {}        # vm id -> (name, [(volume, snapshot id)])
    for store in stores:
        try:
            vms = read_ovf_tar(store.data)
        except MetaError:
            continue            # verify says so
        for vm in vms.values():
            theirs = [(backup_snapshot_volume(description), sid)
                      for sid, _, description in vm.snapshots
                      if backup_snapshot_volume(description)
                      not in (None, '', run.mastervol)]
            if theirs:
                foreign[vm.vm_id] = (vm.name, theirs)
    if not foreign:
        return stores
    plan = run.plan
    for vm_id, (name, theirs) in sorted(foreign.items(),
                                        key=lambda item: item[1][0]):
        chosen = any(backup.vm_id == vm_id for backup in plan.backups)
        log.warning('VM %s left out of this backup of volume %s: it carries '
                    'the backup snapshot %s of volume %s, which the OVF store '
                    'kept for this volume would name; %s, and left out of '
                    "this volume's OVF store (volume %s's describes it): back "
                    'up the volumes one after the other to back it up with '
                    'both', name, run.mastervol,
                    ', '.join(sid for _, sid in theirs),
                    ', '.join(sorted({volume for volume, _ in theirs})),
                    'not snapshotted, its disks here copied as they are '
                    '(not crash-consistent)' if chosen else 'not chosen',
                    theirs[0][0])
    plan.backups = [backup for backup in plan.backups
                    if backup.vm_id not in foreign]
    run.notes.append('left out (another volume\'s backup snapshot on them): '
                     + ', '.join(sorted(name for name, _ in foreign.values())))
    return [ovf_store_without(store, set(foreign)) for store in stores]


def ovf_store_without(store, vm_ids):
    """Given an OvfStore and VM ids, return a copy of it without their
    OVFs: its tar written again without their <vm id>.ovf members (every
    other member as it was), its .meta with the DESCRIPTION's Size of the
    new tar. The engine takes each .ovf member of the tar as one VM to
    register and ignores the VM Status (metadata.json) of a VM it has no
    OVF for (ovirt-engine OvfUtils.getOvfEntities, setVmsStatus). Raise
    nothing: a store that can't be read is returned as it is."""
    names = {'%s.ovf' % vm_id for vm_id in vm_ids}
    output = io.BytesIO()
    try:
        with tarfile.open(fileobj=io.BytesIO(store.data), mode='r:') as source, \
                tarfile.open(fileobj=output, mode='w',
                             format=tarfile.USTAR_FORMAT) as tar:
            for member in source.getmembers():
                if member.name in names:
                    continue
                tar.addfile(member, source.extractfile(member)
                            if member.isfile() else None)
        lines = store.meta.split(b'\n')
        index = [number for number, line in enumerate(lines)
                 if line.startswith(b'DESCRIPTION=')][0]
        description = json.loads(lines[index][len(b'DESCRIPTION='):].decode(
            'utf-8'), object_pairs_hook=collections.OrderedDict)
    except (tarfile.TarError, EOFError, IndexError, ValueError):
        return store
    data = output.getvalue()
    description['Size'] = len(data)
    lines[index] = b'DESCRIPTION=' + json.dumps(
        description, separators=(',', ':')).encode('utf-8')
    return OvfStore(sd_id=store.sd_id, disk_id=store.disk_id,
                    volume_id=store.volume_id, meta=b'\n'.join(lines),
                    data=data, last_updated=store.last_updated)


def keep_ovf_store(run, engine, master_root, sd_id, name):
    """Given a storage domain, ask the engine to update its OVF store, wait
    for its word on it ([snapshot] wait_timeout), and return its OvfStores
    as read then at the master; or None (run.fail names the domain)."""
    deadline = time.monotonic() + run.settings.wait_timeout * 60
    try:
        volumes = ovf_store_volumes(engine, sd_id)
        if not volumes:
            run.fail('storage domain %s has no OVF_STORE disk: a DR engine '
                     'could not register its VMs', name)
            return None
        feed = Feed(engine, 'OVF store update', OVF_STORE_ENDS)
        feed.start_on_domains()
        log.info('storage domain %s: asking the engine to update its OVF '
                 'store (%d volumes)', name, len(volumes))
        (engine.system.storage_domains_service().storage_domain_service(sd_id)
         .update_ovf_store(query=feed.query()))
        outcome = wait_for_ovf_update(run, feed, sd_id, deadline)
        if outcome is None:
            run.fail('storage domain %s: the engine did not say within %s '
                     'minutes ([snapshot] wait_timeout) that its OVF store is '
                     'written or current (event %d or %d)', name,
                     format_minutes(run.settings.wait_timeout),
                     USER_UPDATE_OVF_STORE, OVF_STORES_UPDATE_IGNORED)
            return None
        done, said = outcome
        if not done:
            run.fail('storage domain %s: the engine could not write its OVF '
                     'store (%s)', name, said)
            return None
        stores = wait_for_ovf_stores(run, master_root, sd_id, volumes, deadline)
    except sdk.Error as error:
        run.fail('storage domain %s: the OVF store could not be written: %s',
                 name, one_line(error))
        return None
    except (OSError, MetaError) as error:
        run.fail('storage domain %s: cannot read its OVF store at the master: '
                 '%s', name, describe_os_error(error))
        return None
    if stores is None:
        run.fail('storage domain %s: the engine says its OVF store is %s, but '
                 'at the master it was not all updated within %s minutes '
                 '([snapshot] wait_timeout)', name, said,
                 format_minutes(run.settings.wait_timeout))
        return None
    log.info('storage domain %s: OVF store %s (Last Updated %s), %d bytes '
             'kept', name, said, stores[0].last_updated, len(stores[0].data))
    return stores


def wait_for_ovf_update(run, feed, sd_id, deadline):
    """Given the Feed of the OVF store update just asked for on a storage
    domain, wait until the engine's events about that domain end it, or,
    where they cannot tell (or missed it), its job; return (whether it
    ended well, what the engine said), or None at the deadline."""
    net_every = min(NET_FIRST, max(0.0, deadline - time.monotonic()) / 4)
    net_due = time.monotonic() + net_every
    for _ in Polls(run.settings, run.stop.sleep):
        run.check_stop()
        found = feed.domain_events()
        codes = (found or {}).get(sd_id, set())
        good = sorted(codes & set(OVF_STORE_KEPT))
        if good:
            return True, OVF_STORE_KEPT[good[0]]
        if codes:
            return False, 'event %d' % min(codes)
        now = time.monotonic()
        if found is None or now >= net_due:
            # the events cannot tell, or one was lost: the job's end says
            # the update is over (written or not needed) as well
            net_every = min(net_every * 2, NET_LAST)
            net_due = now + net_every
            statuses = feed.job_statuses() or []
            if {types.JobStatus.FAILED, types.JobStatus.ABORTED} & set(statuses):
                return False, 'its job failed'
            if statuses and types.JobStatus.STARTED not in statuses:
                return True, 'up to date (its job finished)'
        if now > deadline:
            return None


def wait_for_ovf_stores(run, master_root, sd_id, volumes, deadline):
    """Wait until every OVF store volume reads as updated at the master (a
    store the engine is still writing, or one caught in a cache, reads as
    not updated or not readable: look again); return their OvfStores, or
    None at the deadline."""
    for _ in Polls(run.settings, run.stop.sleep):
        run.check_stop()
        try:
            stores = [read_ovf_store(master_root, sd_id, disk_id, volume_id)
                      for disk_id, volume_id in volumes]
        except (OSError, MetaError) as error:
            if time.monotonic() > deadline:
                raise
            log.debug('OVF store not readable yet: %s', describe_os_error(error))
            continue
        if all(store is not None for store in stores):
            return stores
        if time.monotonic() > deadline:
            return None


def leave_out_domain(plan, sd_id, name):
    """Given the Plan and a storage domain whose OVF store was not kept,
    mark each of its disks: nothing of it is changed at the remote site
    (the slave's store could not describe it without this run's snapshot)."""
    for backup in plan.backups:
        for disk in backup.disks:
            if disk.sd_id == sd_id and not disk.problem:
                disk.problem = ('the OVF store of storage domain %s was not '
                                'kept before the snapshots' % name)


# ==== Step 5: stale snapshots, bases, the snapshots and their wait ===========

def remove_stale_snapshots(run, engine):
    """Step 5 first: given the run with its Plan, remove the snapshots with
    our description that an earlier run left behind, before taking new
    ones. A VM whose stale snapshot can't be removed is dropped from the
    plan (run.fail)."""
    plan = run.plan
    stale = [(backup, snapshot_id) for backup in plan.backups
             for snapshot_id in backup.stale_snapshot_ids]
    if not stale:
        return
    for backup, snapshot_id in stale:
        log.warning('VM %s: removing snapshot %s left by an earlier run of '
                    'the backup', backup.name, snapshot_id)
    left = Removal(engine, stale, run.settings, plan).wait()
    failed = {backup.vm_id for backup, _ in left}
    for backup in plan.backups:
        if backup.vm_id in failed:
            run.fail('VM %s not backed up: the snapshot left by an earlier '
                     'run could not be removed', backup.name)
    plan.backups = [b for b in plan.backups if b.vm_id not in failed]


def record_bases(run, engine):
    """Step 5, after the stale snapshots' removal: given the run, read again
    the disks of each VM that had one, and record as each disk's base its
    image id now. The removal was a live merge: the disk's image id is the
    base's again and the overlay read at step 4 is deleted at the master, so
    the new snapshot's overlay sits on this one (its PUUID). A VM that can't
    be read is dropped from the plan (run.fail). Return the VmBackups read."""
    plan = run.plan
    backups = [backup for backup in plan.backups if backup.stale_snapshot_ids]
    if not backups:
        return []
    states = fetch_vms(engine, [backup.vm_id for backup in backups], plan,
                       FOLLOW)
    read = []
    for backup in backups:
        state = states.get(backup.vm_id)
        if isinstance(state, sdk.Error):
            run.fail('VM %s not backed up: its disks could not be read after '
                     'the removal of the snapshot left by an earlier run: %s',
                     backup.name, one_line(state))
            plan.backups = [b for b in plan.backups if b is not backup]
            continue
        current = {attachment.disk.id: attachment.disk.image_id
                   for attachment in state.disk_attachments or []
                   if attachment.disk is not None}
        for disk in backup.disks:
            base_id = current.get(disk.disk_id)
            if base_id != disk.base_id:
                log.info('VM %s disk %s: the base is %s, no longer %s (merged '
                         'away with the stale snapshot)', backup.name,
                         disk.disk_id, base_id, disk.base_id)
            disk.base_id = base_id
        read.append(backup)
    return read


def snapshot_vms(run, engine):
    """Step 5: given the run with its Plan, create one snapshot per VM, all
    at once, and wait for them together; return the VmBackups whose
    snapshot was created (ready or not: all of them must be removed
    later)."""
    plan = run.plan
    feed = Feed(engine, 'snapshot creation', CREATION_ENDS)

    def create(backup):
        snapshot = types.Snapshot(
            description=plan.snapshot_description,
            persist_memorystate=False,
            disk_attachments=[types.DiskAttachment(disk=types.Disk(id=disk.disk_id))
                              for disk in backup.disks],
        )
        return lambda system: (system.vms_service().vm_service(backup.vm_id)
                               .snapshots_service().add(snapshot,
                                                        query=feed.query()))

    log.info('creating snapshots of %d VMs', len(plan.backups))
    feed.start()
    results = engine.map([(backup.vm_id, create(backup))
                          for backup in plan.backups])
    created = []
    unanswered = []
    for backup in plan.backups:
        result = results[backup.vm_id]
        if isinstance(result, sdk.Error):
            backup.request_error = one_line(result)
            log.warning('VM %s: the snapshot request failed: %s', backup.name,
                        backup.request_error)
            unanswered.append(backup)
            continue
        backup.snapshot_id = result.id
        created.append(backup)
        log.debug('VM %s: snapshot %s created (%s)', backup.name, result.id,
                  result.snapshot_status)
    created += adopt_lost_snapshots(run, engine, unanswered)
    wait_for_snapshots(run, engine, created, feed)
    report_consistency(run, created)
    return created


def adopt_lost_snapshots(run, engine, backups):
    """Given the VmBackups whose snapshot request failed, look again: a
    request whose answer was lost may have created the snapshot all the
    same, and it must not be left behind. Return the VmBackups that have
    one (the stale ones were removed before, so it is this run's)."""
    adopted, states = look_for_snapshots(
        engine, backups, run.plan, 'the answer to the snapshot request was lost, '
        'but the snapshot %s was created; going on with it')
    for backup in backups:
        if backup in adopted:
            continue
        state = states.get(backup.vm_id)
        if isinstance(state, sdk.Error) or state is None:
            run.fail('VM %s: the snapshot request failed (%s) and the VM '
                     'could not be checked: %s', backup.name,
                     backup.request_error,
                     one_line(state) if state is not None else 'not found')
        else:
            run.fail('VM %s: no snapshot: the snapshot request failed: %s',
                     backup.name, backup.request_error)
    return adopted


def find_late_snapshots(engine, plan):
    """Given the Plan, look again at the VMs whose snapshot request failed
    with no snapshot found then: an engine that took the request past our
    timeout may have made it since. Return their VmBackups that have one
    now, to be removed with the others (their overlays are not known, so
    nothing of them is deleted at the remote site)."""
    unanswered = [backup for backup in plan.backups
                  if backup.request_error and not backup.snapshot_id]
    found, states = look_for_snapshots(
        engine, unanswered, plan,
        'the engine made snapshot %s after its request had failed; removing it')
    for backup in unanswered:
        if isinstance(states.get(backup.vm_id), sdk.Error):
            log.warning('VM %s: could not look again for a snapshot %r: %s',
                        backup.name, plan.snapshot_description,
                        one_line(states[backup.vm_id]))
    return found


def look_for_snapshots(engine, backups, plan, found_message):
    """Given VmBackups whose snapshot request failed, fetch their VMs; set
    the snapshot id of each that has a snapshot with this run's description
    (the Plan's: it names the volume, so another volume's live run's is
    never taken) that is not a stale one (this run's), saying found_message
    (% its id). Return those VmBackups and {vm_id: the VM or the sdk.Error
    of its look-up}."""
    if not backups:
        return [], {}
    states = fetch_vms(engine, [backup.vm_id for backup in backups], plan,
                       'snapshots')
    found = []
    for backup in backups:
        vm = states.get(backup.vm_id)
        if vm is None or isinstance(vm, sdk.Error):
            continue
        mine = [snapshot for snapshot in vm.snapshots or []
                if snapshot.description == plan.snapshot_description
                and snapshot.id not in backup.stale_snapshot_ids]
        if mine:
            log.warning('VM %s: ' + found_message, backup.name, mine[0].id)
            backup.snapshot_id = mine[0].id
            found.append(backup)
    return found, states


def fetch_vms(engine, vm_ids, plan, follow):
    """Given VM ids, return {vm_id: types.Vm with `follow` inlined, or the
    sdk.Error of its look-up}, with as few requests as it takes: the pages
    (of LOOK_PAGE_SIZE) of the list of running VMs that held them at step 4,
    fetched together, when they are fewer than the VMs, then one GET per VM
    not found there."""
    states = {}
    pages = sorted({page for page in (look_page(plan, vm_id) for vm_id in vm_ids)
                    if page is not None})
    if pages and len(pages) < len(vm_ids):
        answers = engine.map([
            (page, lambda system, page=page: list_page(
                system, 'status=up', page, follow, LOOK_PAGE_SIZE))
            for page in pages])
        wanted = set(vm_ids)
        for page, answer in answers.items():
            if isinstance(answer, sdk.Error):
                log.debug('page %d of the VM list failed: %s', page,
                          one_line(answer))
                continue
            states.update((vm.id, vm) for vm in answer if vm.id in wanted)
    missing = [vm_id for vm_id in vm_ids if vm_id not in states]
    states.update(engine.map([
        (vm_id, lambda system, vm_id=vm_id: get_vm(system, vm_id, follow))
        for vm_id in missing]))
    return states


def look_page(plan, vm_id):
    """Given the Plan and a VM id, return the page (of LOOK_PAGE_SIZE) of the
    list of running VMs that held it at step 4, or None."""
    position = plan.vm_positions.get(vm_id) if plan is not None else None
    return None if position is None else position // LOOK_PAGE_SIZE + 1


class Polls:
    """The checks of the engine, timed start to start: the first after
    FIRST_POLL seconds, each next wait BACKOFF times longer, up to
    poll_interval; after hurry(), FIRST_POLL again (the engine is finishing
    what the run waits for). Given `since` (a time.monotonic()), the first
    check is due FIRST_POLL seconds after it, at once if that has passed."""

    def __init__(self, settings, sleep=time.sleep, since=None,
                 clock=time.monotonic):
        self.since = since
        self.clock = clock
        self.first = min(FIRST_POLL, settings.poll_interval)
        self.interval = settings.poll_interval
        self.sleep = sleep
        self.delay = self.first
        self.hurried = False

    def hurry(self):
        self.hurried = True

    def __iter__(self):
        last = self.clock() if self.since is None else self.since
        while True:
            self.sleep(max(0.0, last + self.delay - self.clock()))
            last = self.clock()
            yield
            self.delay = (self.first if self.hurried
                          else min(self.delay * BACKOFF, self.interval))
            self.hurried = False


class Feed:
    """What the engine says changed during one wait on this run's actions,
    all tagged with one correlation id: its events since the wait began
    (GET /events?from=ID: only newer ones) and its jobs (GET
    /jobs?search=correlation_id=X). The feed only tells which VMs to look at
    now; what the run acts on is read from the VMs. An engine that refuses
    `from` or the job search (or ignores `from`) is asked the old way: every
    pending VM at every check."""

    def __init__(self, engine, what, ends):
        self.engine = engine
        self.what = what
        self.ends = ends            # the event codes that end an action
        self.correlation_id = str(uuid.uuid4())
        self.last_event = None      # the newest event id seen; None: no feed
        self.not_frozen = {}        # vm id -> why its guest was not frozen

    def query(self):
        """The query parameters that tag an action as this wait's."""
        return {'correlation_id': self.correlation_id}

    def _refused(self, what, error):
        """Given the feed an engine refused and its error, say so once."""
        if getattr(self.engine, what):
            setattr(self.engine, what, False)
            log.debug('the engine refused %s (%s): waiting on the VMs themselves',
                      'events?from=' if what == 'events_from' else
                      'jobs?search=correlation_id=', one_line(error))

    def start(self):
        """Before the actions are sent: note the newest event."""
        if self.engine.events_from:
            self.start_on_domains()

    def changes(self):
        """Return {vm_id: event codes} of the events since the last call, or
        None when the feed cannot tell (the caller then looks at every VM)."""
        if self.last_event is None or not self.engine.events_from:
            return None
        try:
            events = self.engine.system.events_service().list(
                from_=self.last_event, max=FEED_MAX)
        except sdk.Error as error:
            if getattr(error, 'code', None) in (400, 404):
                self._refused('events_from', error)
                self.last_event = None
            else:
                log.debug('could not read the events: %s', one_line(error))
            return None
        numbers = [event_number(event) for event in events]
        if any(number is None or number <= self.last_event for number in numbers):
            self._refused('events_from', 'it answered with older events')
            self.last_event = None
            return None
        changed = {}
        for event in events:
            vm_id = event.vm.id if event.vm is not None else None
            if vm_id is None:
                continue
            if event.code in self.ends:
                changed.setdefault(vm_id, set()).add(event.code)
            if (event.code in NOT_FROZEN and event.correlation_id
                    in (None, self.correlation_id)):
                self.not_frozen.setdefault(vm_id, NOT_FROZEN[event.code])
        log.debug('%s: %d events since %s, %d VMs done', self.what, len(events),
                  self.last_event, len(changed))
        if numbers:
            self.last_event = max(numbers)
        if len(events) >= FEED_MAX:
            return None     # older ones may be missing
        return changed

    def running_jobs(self):
        """Return how many of this wait's jobs the engine still runs, or
        None when it cannot tell."""
        statuses = self.job_statuses()
        if statuses is None:
            return None
        return statuses.count(types.JobStatus.STARTED)

    def job_statuses(self):
        """Return the statuses of this wait's jobs, or None when the engine
        cannot tell."""
        if not self.engine.job_search:
            return None
        try:
            jobs = self.engine.system.jobs_service().list(
                search='correlation_id=%s' % self.correlation_id)
        except sdk.Error as error:
            if getattr(error, 'code', None) in (400, 404):
                self._refused('job_search', error)
            else:
                log.debug('could not read the jobs: %s', one_line(error))
            return None
        return [job.status for job in jobs]

    def start_on_domains(self):
        """Before an action on storage domains is sent: note the newest
        event, whether or not the engine takes `from` (those events carry
        no VM: the feed's only word on the action)."""
        try:
            latest = self.engine.system.events_service().list(max=1)
        except sdk.Error as error:
            log.debug('could not read the latest event: %s', one_line(error))
            return
        self.last_event = event_number(latest[0]) if latest else 0

    def domain_events(self):
        """Return {storage domain id: the codes of self.ends} of the events
        since start_on_domains() or the last call, or None when the feed
        cannot tell. An engine that refuses or ignores `from` is asked for
        its newest FEED_MAX events: only the newer ones count either way."""
        if self.last_event is None:
            return None
        service = self.engine.system.events_service()
        try:
            events = None
            if self.engine.events_from:
                try:
                    events = service.list(from_=self.last_event, max=FEED_MAX)
                except sdk.Error as error:
                    if getattr(error, 'code', None) not in (400, 404):
                        raise
                    self._refused('events_from', error)
            if events is None:
                events = service.list(max=FEED_MAX)
        except sdk.Error as error:
            log.debug('could not read the events: %s', one_line(error))
            return None
        newer = [event for event in events
                 if (event_number(event) or 0) > self.last_event]
        found = {}
        for event in newer:
            domain = event.storage_domain
            if event.code in self.ends and domain is not None and domain.id:
                found.setdefault(domain.id, set()).add(event.code)
        if newer:
            self.last_event = max(event_number(event) for event in newer)
        return found


def event_number(event):
    """Given an event, return its id as a number (None if it is none)."""
    try:
        return int(event.id)
    except (TypeError, ValueError):
        return None


class Watch:
    """Which of the VMs a wait is on to look at, check by check: those the
    feed names, a page of the VM list at a time (a page once all its VMs
    awaited are named, or once the first named has waited `hold` seconds:
    one look at a page serves all its VMs), those whose last look failed,
    and all of them when the feed can't tell, at the safety net's looks
    (NET_FIRST seconds, then twice as long each time, up to NET_LAST, and
    at most a quarter of the wait; a job count that matches skips it), and
    at the deadline."""

    def __init__(self, feed, deadline, plan, hold):
        self.feed = feed
        self.deadline = deadline
        self.plan = plan
        self.hold = hold
        self.retry = set()          # VMs whose last look failed
        self.named = {}             # vm id -> when the feed named it, not looked at
        self.net_every = min(NET_FIRST, max(0.0, deadline - time.monotonic()) / 4)
        self.net_due = time.monotonic() + self.net_every
        self.busy = False           # the feed named some of them this time

    def to_look_at(self, awaited):
        """Given {vm id: actions awaited on it}, return the ids to look at."""
        changes = self.feed.changes() if self.feed is not None else None
        now = time.monotonic()
        self.busy = False
        if changes is None or now > self.deadline:
            self.named.clear()
            return set(awaited)
        self.note_named(changes, awaited, now)
        wanted = (self.retry & set(awaited)) | self.pages_due(awaited, now)
        if now >= self.net_due and self.net_finds_work(awaited, wanted, now):
            wanted = set(awaited)
        for vm_id in wanted:
            self.named.pop(vm_id, None)
        if wanted:
            log.debug('%s: looking at %d of the %d VMs awaited', self.feed.what,
                      len(wanted), len(awaited))
        return wanted

    def note_named(self, changes, awaited, now):
        """Given the VMs the feed named, note when each awaited one was first
        named (busy: some were), and forget those no longer awaited."""
        for vm_id in changes:
            if vm_id in awaited:
                self.busy = True
                self.named.setdefault(vm_id, now)
        self.named = {vm_id: when for vm_id, when in self.named.items()
                      if vm_id in awaited}

    def pages_due(self, awaited, now):
        """Return the named VMs of each page due a look: all its VMs awaited
        are named, or the first named has waited `hold` seconds."""
        members = collections.defaultdict(list)
        for vm_id in awaited:
            members[look_page(self.plan, vm_id) or vm_id].append(vm_id)
        due = set()
        for page_members in members.values():
            named = [vm_id for vm_id in page_members if vm_id in self.named]
            if named and (len(named) == len(page_members) or
                          now - min(self.named[vm_id] for vm_id in named) >= self.hold):
                due.update(named)
        return due

    def net_finds_work(self, awaited, wanted, now):
        """The safety net's look, due now: schedule the next one, and tell
        whether the engine runs fewer jobs (or an unknown number) than the
        actions awaited on the VMs not looked at anyway."""
        self.net_every = min(self.net_every * 2, NET_LAST)
        self.net_due = now + self.net_every
        running = self.feed.running_jobs()
        expected = sum(count for vm_id, count in awaited.items()
                       if vm_id not in self.named and vm_id not in wanted)
        if running is None or running < expected:
            log.debug('%s: %s jobs running for %d actions awaited; looking '
                      'at every VM', self.feed.what,
                      'unknown' if running is None else running, expected)
            return True
        return False


def wait_for_snapshots(run, engine, created, feed=None):
    """Given the run and the VmBackups with a new snapshot (and the Feed of
    their creation), wait until each is ok or wait_timeout has passed,
    recording each disk's overlay id and the guest's consistency from the
    answer that shows its snapshot ok; run.fail for each that is not."""
    plan, settings, stop = run.plan, run.settings, run.stop
    pending = {backup.vm_id: backup for backup in created}
    deadline = time.monotonic() + settings.wait_timeout * 60
    watch = Watch(feed, deadline, plan, settings.poll_interval)
    pace = Polls(settings, stop.sleep)
    for _ in pace:
        if not pending or stop.requested:
            break
        final = time.monotonic() > deadline
        look = watch.to_look_at({vm_id: 1 for vm_id in pending})
        if watch.busy:
            pace.hurry()
        # the disks come along: the answer that shows a snapshot ok also
        # gives its overlays, with no look-up of their own
        states = fetch_vms(engine, sorted(look), plan, FOLLOW) if look else {}
        watch.retry.clear()
        for vm_id, state in states.items():
            backup = pending[vm_id]
            if isinstance(state, sdk.Error):
                if is_not_found(state):
                    run.fail('VM %s disappeared while its snapshot was being '
                             'created', backup.name)
                    del pending[vm_id]
                else:
                    log.warning('VM %s: could not check its snapshot: %s',
                                backup.name, one_line(state))
                    watch.retry.add(vm_id)
                continue
            snapshot = find_snapshot(state, backup.snapshot_id)
            if snapshot is None:
                run.fail('VM %s: the snapshot failed (the engine dropped it)',
                         backup.name)
                backup.snapshot_id = None
                del pending[vm_id]
            elif snapshot.snapshot_status == types.SnapshotStatus.OK:
                backup.snapshot_ready = True
                backup.snapshot_ready_at = time.time()
                record_overlays(backup, state)
                record_consistency(backup, state, feed)
                del pending[vm_id]
        if pending and final:
            for backup in pending.values():
                run.fail('VM %s: the snapshot was not ready after %s minutes '
                         '([snapshot] wait_timeout)', backup.name,
                         format_minutes(settings.wait_timeout))
            break
    ready = [backup for backup in created if backup.snapshot_ready]
    log.info('%d of %d snapshots ready', len(ready), len(created))


def record_consistency(backup, vm, feed):
    """Given a VmBackup whose snapshot is ready and its VM as fetched then,
    set what its copy is: crash-consistent only when the engine said the
    guest was not frozen, or when no guest agent reports from the VM (the
    engine of 4.4 and later leaves the freeze to vdsm, which goes on without
    it and logs no event)."""
    reason = feed.not_frozen.get(backup.vm_id) if feed is not None else None
    if reason is None and vm.guest_operating_system is None:
        reason = NO_GUEST_AGENT
    backup.consistency = CRASH_CONSISTENT if reason else QUIESCED
    backup.consistency_reason = reason


def report_consistency(run, created):
    """Given the VmBackups of step 5, say which copies are crash-consistent
    only: a warning, or with require_quiesce a failure of that VM (its
    snapshot is still removed; nothing of it is changed at the slave)."""
    required = run.settings.require_quiesce or getattr(
        run.args, 'require_quiesce', False)
    crash = [backup for backup in created
             if backup.snapshot_ready and backup.consistency == CRASH_CONSISTENT]
    for backup in crash:
        if required:
            run.fail('VM %s not backed up: its snapshot is %s: %s; '
                     '--require-quiesce / [snapshot] require_quiesce asks for '
                     'a quiesced one', backup.name, CRASH_CONSISTENT,
                     backup.consistency_reason)
            for disk in backup.disks:
                disk.problem = 'its snapshot is %s' % CRASH_CONSISTENT
        else:
            log.warning('VM %s: its snapshot is %s: %s', backup.name,
                        CRASH_CONSISTENT, backup.consistency_reason)
    if crash and not required:
        run.notes.append('%s: %s' % (CRASH_CONSISTENT, ', '.join(
            backup.name for backup in crash)))
    ready = [backup for backup in created if backup.snapshot_ready]
    if ready:
        log.info('%d of %d snapshots quiesced%s', len(ready) - len(crash),
                 len(ready), '; %s: %s' % (CRASH_CONSISTENT, ', '.join(
                     backup.name for backup in crash)) if crash else '')


def find_snapshot(vm, snapshot_id):
    for snapshot in vm.snapshots or []:
        if snapshot.id == snapshot_id:
            return snapshot
    return None


def record_overlays(backup, vm):
    """Given a VmBackup whose snapshot is ready and its VM fetched in the same
    answer with its disks inlined, set each disk's overlay id: the image id
    it has now. A disk whose id did not change (or can't be read) keeps
    none: nothing of it is deleted at the remote site."""
    current = {attachment.disk.id: attachment.disk.image_id
               for attachment in vm.disk_attachments or []
               if attachment.disk is not None}
    for disk in backup.disks:
        image_id = current.get(disk.disk_id)
        # no base id known: no proof the id changed, nothing is deleted
        if image_id and disk.base_id and image_id != disk.base_id:
            disk.overlay_id = image_id
            log.debug('VM %s: disk %s base %s overlay %s', backup.name,
                      disk.disk_id, disk.base_id, image_id)
        else:
            log.warning('VM %s: the image of disk %s did not change with '
                        'the snapshot; nothing of it will be deleted at '
                        'the remote site', backup.name, disk.disk_id)


def format_minutes(minutes):
    return ('%g' % minutes)


# ==== Step 6: replicate (and step 5's pre-sync) ==============================

def scheduler_command(args, settings, timeout=None):
    """Given the command line, settings and the minutes the scheduler may
    wait (default -t), return its command line."""
    return settings.schedule_georep + [
        args.mastervol, args.slave, args.slavevol,
        '--interval', str(args.interval),
        # the scheduler takes whole minutes
        '--timeout', str(int(math.ceil(args.timeout if timeout is None
                                       else timeout)))]


def presync_minutes(args, settings):
    """Given the command line and settings, return the minutes the pre-sync
    may wait: [gluster] presync_timeout, else -t (0: for ever)."""
    if settings.presync_timeout is None:
        return args.timeout
    return settings.presync_timeout


SCHEDULER_EXITS = {
    1: 'the checkpoint was not reached within --timeout %(timeout)s minutes',
    255: 'a gluster command failed (see its output above)',
}


def replicate(run, timeout=None, report=None, on_line=None):
    """Step 6: given the run, run gluster's scheduler, logging its output as
    it comes (on_line(text) after each line); return True when it reported
    the checkpoint complete. timeout: the minutes it may wait (default -t);
    report(message, *args): how a failure is told (default run.fail; the
    pre-sync's is a warning)."""
    args, settings, stop = run.args, run.settings, run.stop
    timeout = args.timeout if timeout is None else timeout
    report = report or run.fail
    command = scheduler_command(args, settings, timeout)
    log.info('replicating: %s', ' '.join(shlex.quote(part) for part in command))
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    except OSError as error:
        report('cannot run the scheduler %s: %s', command[0],
               error.strerror or error)
        return False
    stop.child = process
    reader = threading.Thread(target=log_output, name='scheduler-output',
                              args=(process.stdout, 'schedule_georep',
                                    on_line),
                              daemon=True)
    reader.start()
    deadline = None
    if timeout > 0:
        deadline = time.monotonic() + timeout * 60 + settings.scheduler_grace
    expired = False
    try:
        expired = wait_for_child(process, deadline, stop)
        if expired:
            log.error('the scheduler is still running %d seconds after its '
                      '--timeout; stopping it', settings.scheduler_grace)
    finally:
        ended_by = stop_child(process, 'the scheduler')
        stop.child = None
        # a grandchild that kept the pipe open must not hold the run
        reader.join(timeout=5)
    status = process.returncode
    if expired:
        report('geo-replication failed: the scheduler did not end within '
               '--timeout %s minutes and %d seconds of grace; it was stopped '
               '(%s)', format_minutes(timeout), settings.scheduler_grace,
               {'SIGTERM': 'by SIGTERM', 'SIGKILL': 'by SIGKILL, it ignored '
                'SIGTERM', 'alive': 'SIGTERM and SIGKILL sent, but it is '
                'still running: see ps -g %d' % process.pid}.get(
                    ended_by, 'it ended as it was stopped'))
    elif status == 0:
        log.info('geo-replication reached its checkpoint')
        return True
    elif status in SCHEDULER_EXITS and not stop.requested:
        report('geo-replication failed: ' + SCHEDULER_EXITS[status]
               % {'timeout': timeout})
        return False
    elif stop.requested:
        report('geo-replication: the scheduler was stopped by %s',
               stop.signal_name)
    else:
        report('geo-replication failed: the scheduler %s',
               describe_status(status))
    log.warning('the geo-replication session %s -> %s::%s may be left running; '
                'check with: gluster volume geo-replication %s %s::%s status',
                args.mastervol, args.slave, args.slavevol, args.mastervol,
                slave_host(args.slave), args.slavevol)
    return False


# Step 6: geo-replication's own word, read while the scheduler runs.
#
# The checkpoint's completion per master brick (`status detail --xml`, one
# <pair> per brick: cli/src/cli-xml-output.c cli_xml_output_vol_gsync_status)
# is there only while the session runs: the scheduler stops it at its end,
# and a stopped session reads N/A in every checkpoint field (measured on
# 10.3, gluster-notes.md). A brick's checkpoint is "Yes" once its worker's
# last synced time reached the checkpoint (gsyncdstatus.py
# GeorepStatus.get_status): every change before it, each shard of a sharded
# file included (shards are files of their own to gsyncd), was synced from
# that brick. Only the Active worker of a replica set syncs, so each replica
# set needs an Active one with "Yes". Asked WITHOUT a master volume the
# status takes no volume lock (cli-cmd-parser.c cli_cmd_gsync_set_parse sets
# "volname" only with a primary; glusterd-syncop.c gd_sync_task_begin: no
# volname, no lock), so these polls can never make the scheduler's own
# stop/config/start fail with "Another transaction is in progress".

GEOREP_TIME = '%Y-%m-%d %H:%M:%S'    # gsyncdstatus.py human_time_utc (UTC)
# The scheduler stops the session as soon as its own poll reads the
# checkpoint complete, so a poll of ours can miss the seconds between the
# completion and the stop. A replica set whose Active worker carried this
# run's checkpoint in a poll of ours begun at most this many seconds before
# the scheduler said "All Checkpoints COMPLETE" counts too: a worker that
# dies shows Faulty for about 10 s before it is Initializing... again
# (measured, tests/gluster/NOTES.md), and the scheduler's own read comes
# some 2 s before its line; a Faulty worker makes it say NOT COMPLETE.
ACTIVE_WINDOW = 12


def xml_root(output):
    """The cliOutput element of a gluster --xml answer, or None."""
    start = output.find('<cliOutput')
    if start < 0:
        return None
    try:
        return ElementTree.fromstring(output[start:])
    except ElementTree.ParseError:
        return None


def replica_sets(output, mastervol):
    """Given `gluster volume info MASTERVOL --xml`, return its bricks
    ("host:path") grouped by replica (or disperse) set, or None when the
    answer is not that. The sets are consecutive bricks of replicaCount
    (disperseCount) each; distCount is not used: it means bricks per set in
    10.3 and sets in later releases (glusterd-handler.c
    glusterd_add_volume_detail_to_dict)."""
    root = xml_root(output)
    volume = None if root is None else root.find('volInfo/volumes/volume')
    if (volume is None or root.findtext('opRet', '').strip() != '0'
            or (volume.findtext('name') or '').strip() != mastervol):
        return None
    bricks = [(brick.findtext('name') or '').strip()
              for brick in volume.findall('bricks/brick')]
    try:
        size = (int(volume.findtext('disperseCount') or 0)
                or int(volume.findtext('replicaCount') or 1) or 1)
    except ValueError:
        return None
    if not bricks or '' in bricks or len(bricks) % size:
        return None
    return [bricks[at:at + size] for at in range(0, len(bricks), size)]


def session_pairs(output, mastervol, slave, slavevol):
    """Given `gluster volume geo-replication status detail --xml` (every
    session), return the <pair>s of MASTERVOL -> SLAVE::SLAVEVOL as dicts of
    their fields, or None when the answer is not a status (opRet -1: a
    transaction of another command, glusterd down, ...)."""
    root = xml_root(output)
    if root is None or root.findtext('opRet', '').strip() != '0':
        return None
    wanted = '%s::%s' % (slave_host(slave), slavevol)
    pairs = []
    for volume in root.iter('volume'):
        if (volume.findtext('name') or '').strip() != mastervol:
            continue
        for pair in volume.iter('pair'):
            fields = {child.tag: (child.text or '').strip() for child in pair}
            secondary = fields.get('secondary', fields.get('slave', ''))
            secondary = secondary.split('://', 1)[-1].rsplit('@', 1)[-1]
            if secondary == wanted:
                pairs.append(fields)
    return pairs


def georep_time(text):
    """Epoch seconds of a status time (UTC), or None for N/A."""
    try:
        return calendar.timegm(time.strptime(text, GEOREP_TIME))
    except (TypeError, ValueError):
        return None


def active_sets(sets, pairs, since):
    """The indexes of the replica sets with an Active worker carrying this
    run's checkpoint (complete or not) in one poll's pairs."""
    found = set()
    for index, bricks in enumerate(sets):
        for pair in pairs:
            brick = '%s:%s' % (pair.get('primary_node', pair.get('master_node', '')),
                               pair.get('primary_brick', pair.get('master_brick', '')))
            checkpoint = georep_time(pair.get('checkpoint_time'))
            if (brick in bricks and pair.get('status') == 'Active'
                    and checkpoint is not None and checkpoint >= since):
                found.add(index)
    return found


def completed_sets(sets, pairs, since):
    """Given the replica sets, one poll's pairs and the epoch second before
    which a checkpoint is not this run's, return {set index: (brick,
    checkpoint time, completion time)} of the sets whose Active worker had
    completed this run's checkpoint."""
    done = {}
    for index, bricks in enumerate(sets):
        for pair in pairs:
            brick = '%s:%s' % (pair.get('primary_node', pair.get('master_node', '')),
                               pair.get('primary_brick', pair.get('master_brick', '')))
            checkpoint = georep_time(pair.get('checkpoint_time'))
            if (brick in bricks and pair.get('status') == 'Active'
                    and pair.get('checkpoint_completed') == 'Yes'
                    and checkpoint is not None and checkpoint >= since):
                done[index] = (brick, pair.get('checkpoint_time'),
                               pair.get('checkpoint_completion_time'))
    return done


def describe_pairs(bricks, pairs):
    """How the workers of one replica set looked at the last poll."""
    seen = ['%s:%s %s, checkpoint %s' % (
        pair.get('primary_node', ''), pair.get('primary_brick', ''),
        pair.get('status') or '?', pair.get('checkpoint_completed') or '?')
        for pair in pairs
        if '%s:%s' % (pair.get('primary_node', ''),
                      pair.get('primary_brick', '')) in bricks]
    return '; '.join(seen) or 'no worker'


class CheckpointWatch:
    """Polls geo-replication's status (every session, no lock) from the
    start of the scheduler to its end: at once, then every --interval
    seconds, and at once after each line of the scheduler's (the real one
    prints a line after each of its own polls, just before it stops the
    session). evidence() then says whether this run's checkpoint was seen
    complete on an Active worker of every replica set of MASTERVOL."""

    def __init__(self, args, settings):
        self.args = args
        self.settings = settings
        self.since = int(time.time()) - 1   # the scheduler sets it later
        self.sets = None
        self.done = {}
        self.last = None         # the pairs of the last readable poll
        self.active = {}         # set index: when a poll began that saw it Active
        self.complete_said = None    # when the scheduler said COMPLETE
        self.polls = 0
        self.wake = threading.Event()
        self.ended = threading.Event()
        self.child = None
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name='checkpoint-watch')

    def _gluster(self, *words):
        command = [self.settings.gluster, '--mode=script'] + list(words)
        try:
            self.child = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, start_new_session=True,
                close_fds=True)
        except OSError as error:
            log.debug('checkpoint watch: cannot run %s: %s', command[0], error)
            return ''
        try:
            output, _ = self.child.communicate(timeout=GLUSTER_CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            terminate_child(self.child)
            output, _ = self.child.communicate()
        return output.decode('utf-8', 'replace')

    def _loop(self):
        interval = max(1, self.args.interval)
        while True:
            # one more poll once the scheduler ended: the real one stopped
            # the session (N/A, nothing gained), a stand-in may not have
            last = self.ended.is_set()
            self._poll(last)
            if last:
                return
            self.wake.wait(interval)
            self.wake.clear()

    def _poll(self, final=False):
        began = time.monotonic()
        if self.sets is None:
            self.sets = replica_sets(self._gluster(
                'volume', 'info', self.args.mastervol, '--xml'),
                self.args.mastervol)
        pairs = session_pairs(self._gluster(
            'volume', 'geo-replication', 'status', 'detail', '--xml'),
            self.args.mastervol, self.args.slave, self.args.slavevol)
        if pairs is None:
            return
        self.polls += 1
        if not final or self.last is None:     # how it was while it ran
            self.last = pairs
        if self.sets:
            for index, seen in completed_sets(self.sets, pairs,
                                              self.since).items():
                self.done.setdefault(index, seen)
            if not final:
                for index in active_sets(self.sets, pairs, self.since):
                    self.active[index] = began

    def nudge(self, line=''):
        if 'All Checkpoints COMPLETE' in line and self.complete_said is None:
            self.complete_said = time.monotonic()
        self.wake.set()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.ended.set()
        self.wake.set()
        self.thread.join(GLUSTER_CLI_TIMEOUT)
        child = self.child
        if self.thread.is_alive() and child is not None and child.poll() is None:
            terminate_child(child)
            self.thread.join(10)
        return False

    def evidence(self):
        """None when every replica set was seen complete (logged), else the
        problem in words."""
        where = '%s -> %s::%s' % (self.args.mastervol,
                                  slave_host(self.args.slave),
                                  self.args.slavevol)
        if not self.sets:
            return ('gluster did not list the bricks of volume %s (volume info '
                    '--xml)' % self.args.mastervol)
        if not self.polls:
            return ('geo-replication status detail of %s could not be read '
                    'while the scheduler ran' % where)
        missing = [index for index in range(len(self.sets))
                   if index not in self.done]
        for index in list(missing):
            seen = self.active.get(index)
            if (seen is not None and self.complete_said is not None
                    and 0 <= self.complete_said - seen <= ACTIVE_WINDOW):
                missing.remove(index)
                log.info('geo-replication %s: replica set %d of %d (%s) had an '
                         "Active worker on this run's checkpoint %.0f s before "
                         'the scheduler read it complete and stopped the '
                         'session', where, index + 1, len(self.sets),
                         ' '.join(self.sets[index]), self.complete_said - seen)
        if missing:
            return ("geo-replication's checkpoint was not seen complete on an "
                    'Active worker of %s while the session ran (%d polls; '
                    'last seen: %s)' % (
                        ', '.join('replica set %d (%s)' % (
                            index + 1, ' '.join(self.sets[index]))
                            for index in missing), self.polls,
                        ' | '.join(describe_pairs(self.sets[index], self.last or [])
                                   for index in missing)))
        for index, (brick, checkpoint, completed) in sorted(self.done.items()):
            log.info('geo-replication %s: checkpoint of %s UTC completed at %s '
                     'UTC on %s (replica set %d of %d)', where, checkpoint,
                     completed, brick, index + 1, len(self.sets))
        return None


def presync(run):
    """Step 5 first, with [gluster] presync: run the scheduler once before
    the OVF store and the snapshots, bounded by presync_timeout, so that the
    day's changes are carried while the VMs run on their bases, and the
    sync of step 6 carries only what the guests wrote meanwhile. Return True
    when it reached its checkpoint; a failure is a warning, and the run
    goes on as without it."""
    minutes = presync_minutes(run.args, run.settings)

    def warn(message, *values):
        log.warning('pre-sync: %s; going on without it (step 6 carries the '
                    'rest)', message % values if values else message)

    log.info('pre-sync: replicating before the snapshots, for up to %s',
             'ever (-t 0)' if minutes <= 0 else '%d minutes' % minutes)
    done = replicate(run, timeout=minutes, report=warn)
    if done:
        log.info('pre-sync done: the snapshots are next')
    return done


# ==== Step 6: confirm the copy, while the bases are still frozen =============

def describe_os_error(error):
    if isinstance(error, OSError):
        return '%s: %s' % (error.filename or '', error.strerror or error) \
            if error.filename else (error.strerror or one_line(error))
    return one_line(error)


def confirm_copies(run, engine, created, master_root, slave_root,
                   checkpoint=None):
    """Step 6, after the scheduler's exit 0 and before any snapshot removal
    is sent: for each disk of this run's snapshots (created: the VmBackups
    of step 5), confirm that the base
    volume and its .meta at the slave are the master's (size and mtime to
    the nanosecond, which geo-replication keeps mount to mount, and content:
    see copy_problem), that geo-replication's checkpoint was seen complete
    on every replica set (checkpoint: the CheckpointWatch's problem, or
    None; on a sharded volume size and mtime show only the first shard) and
    that this run's snapshot is still there with the disk on its overlay. Return
    the (VmBackup, DiskRecord) pairs confirmed; run.fail names each other
    disk (nothing of it will be changed at the slave)."""
    ready = [backup for backup in created if backup.snapshot_ready]
    for backup in run.plan.backups if run.plan else []:
        if backup not in ready:
            for disk in backup.disks:
                disk.confirmed = False
                disk.problem = disk.problem or 'no snapshot of this run'
    if not ready:
        return []
    if checkpoint is not None:
        run.fail('the copy at the remote site is not confirmed: %s', checkpoint)
    states = fetch_confirming(run, engine, [backup.vm_id for backup in ready])
    confirmed = []
    for backup in ready:
        for disk in backup.disks:
            if not disk_to_confirm(backup, disk, master_root, run.mastervol):
                disk.confirmed = False
                continue
            problem = (copy_problem(disk, master_root, slave_root)
                       or (checkpoint and "geo-replication's checkpoint was "
                           'not seen complete (see above)')
                       or snapshot_problem(states.get(backup.vm_id), backup, disk))
            disk.confirmed = problem is None
            if problem is None:
                confirmed.append((backup, disk))
                log.info('VM %s disk %s: base %s confirmed at the remote site',
                         backup.name, disk.disk_id, disk.base_id)
                continue
            disk.problem = 'not confirmed at the remote site: ' + problem
            run.fail('VM %s disk %s: the copy at the remote site is not '
                     'confirmed: %s; nothing of that disk is changed there',
                     backup.name, disk.disk_id, problem)
    return confirmed


def disk_to_confirm(backup, disk, master_root, mastervol):
    """Given a disk of a VM with this run's snapshot, tell whether its copy
    is to be confirmed; when not, say why (a problem of its own already,
    e.g. not quiesced as asked, or a storage domain not on the master
    volume: --all-vms) and set its problem."""
    if disk.problem:
        log.info('VM %s disk %s: %s; nothing of it is changed at the '
                 'remote site', backup.name, disk.disk_id, disk.problem)
        return False
    if (master_root is not None and UUID.match(disk.sd_id or '')
            and not os.path.isdir(os.path.join(master_root, disk.sd_id))):
        disk.problem = 'its storage domain is not on volume %s' % mastervol
        log.warning('VM %s disk %s: %s; it is not part of this copy',
                    backup.name, disk.disk_id, disk.problem)
        return False
    return True


def fetch_confirming(run, engine, vm_ids):
    """Given VM ids, return {vm id: the VM with its disks and snapshots, or
    the sdk.Error of its look-up}; a look-up that failed but with a 404 is
    asked again until [snapshot] wait_timeout (an engine restarting)."""
    states = {}
    pending = list(vm_ids)
    deadline = time.monotonic() + run.settings.wait_timeout * 60
    for _ in Polls(run.settings, run.stop.sleep):
        states.update(fetch_vms(engine, pending, run.plan, FOLLOW))
        pending = [vm_id for vm_id in pending
                   if isinstance(states[vm_id], sdk.Error)
                   and not is_not_found(states[vm_id])]
        if not pending or time.monotonic() > deadline or run.stop.requested:
            return states
        log.warning('could not check %d snapshots on the engine (%s); trying '
                    'again', len(pending), one_line(states[pending[0]]))
    return states


def copy_problem(disk, master_root, slave_root):
    """Given a disk, return why its base at the slave is not the master's,
    or None (and then set its size: the base's bytes)."""
    if disk.overlay_id is None:
        return 'its image did not change with the snapshot'
    if master_root is None or slave_root is None:
        return 'the %s volume is not mounted' % (
            'master' if master_root is None else 'slave')
    try:
        relative = os.path.relpath(volume_path('/', disk.sd_id, disk.disk_id,
                                               disk.base_id), '/')
    except MetaError as error:
        return 'the engine gave an id that is not a UUID: %s' % error
    for suffix in ('', '.meta'):
        name = 'base volume %s%s' % (disk.base_id, suffix)
        try:
            master = os.stat(os.path.join(master_root, relative + suffix))
        except OSError as error:
            return 'cannot read %s at the master: %s' % (name, error.strerror)
        try:
            slave = os.stat(os.path.join(slave_root, relative + suffix))
        except FileNotFoundError:
            return '%s is not at the slave' % name
        except OSError as error:
            return 'cannot read %s at the slave: %s' % (name, error.strerror)
        if slave.st_size != master.st_size:
            return '%s is %d bytes at the slave, %d at the master' % (
                name, slave.st_size, master.st_size)
        if slave.st_mtime_ns != master.st_mtime_ns:
            return ('%s at the slave is not the master\'s (modified %s, at the '
                    'master %s)' % (name, format_ns(slave.st_mtime_ns),
                                    format_ns(master.st_mtime_ns)))
        problem = content_problem(os.path.join(master_root, relative + suffix),
                                  os.path.join(slave_root, relative + suffix),
                                  master.st_size)
        if problem:
            return '%s %s' % (name, problem)
        if not suffix:
            disk.size = slave.st_size
    return None


# Bases up to this size are compared byte for byte, master to slave; larger
# ones by their first and last CONTENT_BLOCK (the checkpoint covers the rest:
# reading a whole disk at the slave, over the WAN, every night is what
# geo-replication is there to spare).
CONTENT_FULL_LIMIT = 256 * 1024 * 1024
CONTENT_BLOCK = 1024 * 1024


def content_problem(master_path, slave_path, size):
    """Given the paths of a file at the master and the slave mounts and its
    size, return where their content differs, or None. Compared in full up
    to CONTENT_FULL_LIMIT, else the first and the last CONTENT_BLOCK."""
    if size <= CONTENT_FULL_LIMIT:
        spans = [(0, size)]
    else:
        spans = [(0, CONTENT_BLOCK), (size - CONTENT_BLOCK, size)]
    try:
        with open(master_path, 'rb') as master, open(slave_path, 'rb') as slave:
            for start, end in spans:
                master.seek(start)
                slave.seek(start)
                offset = start
                while offset < end:
                    want = min(CONTENT_BLOCK, end - offset)
                    ours, theirs = master.read(want), slave.read(want)
                    if ours != theirs:
                        at = next((n for n, (a, b) in enumerate(zip(ours, theirs))
                                   if a != b), min(len(ours), len(theirs)))
                        return ('differs from the master at the slave from byte '
                                '%d (the %d-byte block at %d compared)'
                                % (offset + at, want, offset))
                    offset += want
    except OSError as error:
        return 'cannot be read to compare: %s' % describe_os_error(error)
    return None


def format_ns(nanoseconds):
    seconds, rest = divmod(nanoseconds, 10**9)
    return '%s.%09dZ' % (time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds)),
                         rest)


def snapshot_problem(vm, backup, disk):
    """Given the VM as fetched now, return why this run's snapshot of the
    disk is not as it was made, or None."""
    if vm is None:
        return "its VM was not found on the engine"
    if isinstance(vm, sdk.Error):
        return 'its snapshot could not be checked on the engine: %s' % one_line(vm)
    if find_snapshot(vm, backup.snapshot_id) is None:
        return "this run's snapshot %s is gone" % backup.snapshot_id
    for attachment in vm.disk_attachments or []:
        if attachment.disk is not None and attachment.disk.id == disk.disk_id:
            if attachment.disk.image_id != disk.overlay_id:
                return ('the disk is on volume %s, not on the overlay %s of this '
                        "run's snapshot" % (attachment.disk.image_id,
                                            disk.overlay_id))
            return None
    return 'the disk is no longer attached to its VM'


# step 7: repair the chains at the slave, keep the OVF store true

# ==== Step 7: repair the chains, put back the OVF store ======================

def repair_chains(run, slave_root, confirmed):
    """Step 7: for each confirmed (VmBackup, DiskRecord), check the
    overlay's .meta says what the engine said, delete its three files, and
    set VOLTYPE=LEAF in the base's .meta in place. run.fail names a disk
    that could not be repaired."""
    dropped = 0
    files = {'looked up': 0, 'deleted': 0}
    for backup, disk in confirmed:
        problem = repair_chain(slave_root, disk, files)
        if problem is None:
            dropped += 1
            log.info('VM %s disk %s: overlay %s dropped, base %s is the leaf '
                     'again at the remote site', backup.name, disk.disk_id,
                     disk.overlay_id, disk.base_id)
        else:
            disk.problem = problem
            run.fail('VM %s disk %s: %s', backup.name, disk.disk_id, problem)
    log.info('deleted %d overlay files at the remote site (%d paths looked '
             'up)', files['deleted'], files['looked up'])
    log.info('repaired %d of %d chains at the remote site', dropped,
             len(confirmed))


def repair_chain(slave_root, disk, files):
    """Given a confirmed disk, drop its overlay at the slave and make its
    base the leaf, counting in files the paths looked up and deleted;
    return None, or what went wrong."""
    overlay = volume_path(slave_root, disk.sd_id, disk.disk_id, disk.overlay_id)
    base = volume_path(slave_root, disk.sd_id, disk.disk_id, disk.base_id)
    try:
        base_data, base_meta = read_meta(base + '.meta', slave_root)
    except (OSError, MetaError) as error:
        return 'cannot read the base .meta at the slave: %s' % describe_os_error(error)
    wrong = meta_mismatch(base_meta, IMAGE=disk.disk_id, DOMAIN=disk.sd_id)
    if wrong or base_meta.get('VOLTYPE') not in ('INTERNAL', 'LEAF'):
        return ('the base .meta at the slave says %s; left alone'
                % (wrong or 'VOLTYPE=%s' % base_meta.get('VOLTYPE')))
    # the base's edit is made (and checked) before anything is deleted: an
    # overlay gone with its base still INTERNAL leaves an image with no leaf
    try:
        base_edited = meta_with_key(base_data, 'VOLTYPE', 'LEAF',
                                    disk.base_id + '.meta')
    except MetaError as error:
        return 'cannot set VOLTYPE=LEAF in the base .meta at the slave: %s; left alone' % (
            error)
    try:
        _, overlay_meta = read_meta(overlay + '.meta')
    except FileNotFoundError:
        overlay_meta = None
        if os.path.lexists(overlay):
            return ('overlay %s is at the slave without its .meta; left alone'
                    % disk.overlay_id)
        log.warning('overlay %s of disk %s is not at the remote site',
                    disk.overlay_id, disk.disk_id)
    except (OSError, MetaError) as error:
        return ('cannot read the overlay .meta at the slave: %s'
                % describe_os_error(error))
    if overlay_meta is not None:
        wrong = meta_mismatch(overlay_meta, PUUID=disk.base_id,
                              IMAGE=disk.disk_id, VOLTYPE='LEAF')
        if wrong:
            return ('the overlay .meta at the slave says %s, not what the engine '
                    'said; left alone' % wrong)
        for suffix in OVERLAY_SUFFIXES:
            path = overlay + suffix
            files['looked up'] += 1
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    return '%s at the slave is not a regular file; left alone' % (
                        disk.overlay_id + suffix)
                os.unlink(path)
                files['deleted'] += 1
            except FileNotFoundError:
                continue
            except OSError as error:
                disk.overlay_dropped = False
                return 'cannot delete %s at the slave: %s' % (
                    disk.overlay_id + suffix, error.strerror)
    disk.overlay_dropped = True
    try:
        rewrite_meta(base + '.meta', base_data, base_edited, slave_root)
    except (OSError, MetaError) as error:
        disk.chain_repaired = False
        return 'cannot set VOLTYPE=LEAF in the base .meta at the slave: %s' % (
            describe_os_error(error))
    disk.chain_repaired = True
    return None


def meta_mismatch(values, **expected):
    """Given a parsed .meta, return 'KEY=value' of the first key that is
    not as expected, or None."""
    for key, value in sorted(expected.items()):
        if values.get(key) != value:
            return '%s=%s' % (key, values.get(key, '(none)'))
    return None


def restore_ovf_stores(run, slave_root, kept, confirmed):
    """Step 7: make each OVF store volume at the slave the one the engine
    wrote before the snapshots (kept), tar and .meta, in place, where the
    engine rewrote it during the run (it then lists this run's snapshot with
    the overlay as active volume). Done only when some disk was confirmed:
    a copy not confirmed is not touched at all."""
    if not kept or not confirmed:
        return
    restored = 0
    for store in kept:
        path = volume_path(slave_root, store.sd_id, store.disk_id, store.volume_id)
        try:
            with os.fdopen(open_beneath(slave_root, path, os.O_RDONLY), 'rb') as stream:
                head = stream.read(len(store.data))
            meta, _ = read_meta(path + '.meta', slave_root)
            if head == store.data and meta == store.meta:
                continue
            with os.fdopen(open_beneath(slave_root, path, os.O_RDWR), 'r+b') as stream:
                stream.write(store.data)
                stream.flush()
                os.fsync(stream.fileno())
            write_in_place(path + '.meta', store.meta, slave_root)
        except (OSError, MetaError) as error:
            run.fail('cannot restore OVF store %s at the remote site: %s',
                     store.volume_id, describe_os_error(error))
            continue
        restored += 1
        log.warning('OVF store %s at the remote site was rewritten during the '
                    'run (the engine\'s periodic write): put back the one '
                    'written before the snapshots (%s)', store.volume_id,
                    store.last_updated)
    log.info('OVF store at the remote site: %d of %d volumes put back',
             restored, len(kept))


# ==== Steps 6 and 7: the remote copy, confirmed then mended ==================

@contextlib.contextmanager
def confirmed_copy(run, engine, created, master_root, checkpoint=None):
    """Step 6 after the scheduler's exit 0, with the master mounted
    read-only: mount the slave for the block and confirm every disk of the
    VmBackups created in step 5 while
    the bases are still frozen (checkpoint: what the CheckpointWatch found
    wrong, or None); yield (the slave's mount or None after run.fail, the
    (VmBackup, DiskRecord) pairs confirmed). Once in the block, the bases
    may change (the merges may start). Unmount on every way out."""
    with slave_mounted(run) as slave_root:
        confirmed = []
        if slave_root is not None:
            confirmed = confirm_copies(run, engine, created, master_root,
                                       slave_root, checkpoint)
        yield slave_root, confirmed


def mend_copy(run, created, slave_root, kept, confirmed):
    """Step 7: given the VmBackups created in step 5, the slave's mount
    (or None: nothing done), the OvfStores kept before the snapshots and the pairs confirmed, repair
    the chains, put back the OVF store, verify; return the verify's
    summary, or None when nothing was verified."""
    if slave_root is None:
        return None
    run.check_stop()
    repair_chains(run, slave_root, confirmed)
    restore_ovf_stores(run, slave_root, kept, confirmed)
    if not confirmed:
        return None
    return verify_copy(run, created, slave_root, kept, confirmed)


# ==== Step 7: verify what a DR engine would import ===========================


class OvfVm(Record):
    """A VM (or a template) as the OVF store describes it."""
    DEFAULTS = {'vm_id': None, 'name': None,
                'volumes': {},          # disk id -> [volume ids], as listed
                'active': {},           # disk id -> the active volume id
                'snapshots': [],        # (id, type, description)
                'template': False,      # a template's OVF (OvfTemplateWriter)
                'template_id': None}    # its TemplateId


def local_name(tag):
    return tag.rsplit('}', 1)[-1]


def ovf_attribute(element, name):
    for key, value in element.attrib.items():
        if local_name(key) == name:
            return value
    return None


def parse_ovf(vm_id, text):
    """Given a VM's OVF (OvfVmWriter's XML), return an OvfVm; raise
    MetaError."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise MetaError('the OVF of VM %s is not XML: %s' % (vm_id, error)) from None
    vm = OvfVm(vm_id=vm_id, name=vm_id, volumes={}, active={}, snapshots=[])
    for element in root.iter():
        read_ovf_element(vm, element)
    active = [sid for sid, kind, _ in vm.snapshots if (kind or '').upper() == 'ACTIVE']
    if active:
        for element in root.iter():
            disk_id, _, volume_id = (ovf_attribute(element, 'fileRef') or '').partition('/')
            if local_name(element.tag) == 'Disk' and \
                    ovf_attribute(element, 'vm_snapshot_id') == active[0]:
                vm.active[disk_id] = volume_id
    return vm


def read_ovf_element(vm, element):
    """Given the OvfVm being read and an element of its OVF, set in it what
    the element says: its name, that it is a template and of which, a
    volume of a disk, a snapshot."""
    tag = local_name(element.tag)
    if tag == 'Name' and vm.name == vm.vm_id and element.text:
        vm.name = element.text.strip()
    elif tag == 'TemplateType':
        # what the engine's import reads to register it as a template
        # (ovirt-engine OvfUtils.getVmEntityType: "<TemplateType>")
        vm.template = True
    elif tag == 'TemplateId' and element.text:
        vm.template_id = element.text.strip()
    elif tag == 'File':
        disk_id, _, volume_id = (ovf_attribute(element, 'href') or '').partition('/')
        if UUID.match(disk_id) and UUID.match(volume_id):
            vm.volumes.setdefault(disk_id, []).append(volume_id)
    elif tag == 'Snapshot':
        fields = {local_name(child.tag): (child.text or '').strip()
                  for child in element}
        vm.snapshots.append((ovf_attribute(element, 'id'),
                             fields.get('Type'), fields.get('Description')))


def read_ovf_tar(data):
    """Given an OVF store's tar, return {vm id: OvfVm}; raise MetaError."""
    vms = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode='r:') as tar:
            for member in tar.getmembers():
                stem, dot, extension = member.name.rpartition('.')
                if extension != 'ovf' or not dot or not member.isfile():
                    continue
                text = tar.extractfile(member).read()
                vms[stem] = parse_ovf(stem, text)
    except (tarfile.TarError, EOFError) as error:
        raise MetaError('the OVF store is not a tar: %s' % error) from None
    return vms


def newest_ovf_store(root, sd_id, volumes):
    """Given the domain's OVF store volumes [(disk id, volume id)], return
    the OvfStore a DR engine would import (an updated one first, then the
    latest Last Updated), or None when none was ever written."""
    best = None
    for disk_id, volume_id in volumes:
        try:
            store = read_ovf_store(root, sd_id, disk_id, volume_id)
        except (OSError, MetaError) as error:
            log.warning('OVF store %s is not readable: %s', volume_id,
                        describe_os_error(error))
            continue
        if store is None:
            continue
        date = java_date(store.last_updated)
        if best is None or (date is not None and (best[0] is None or date > best[0])):
            best = (date, store)
    return best[1] if best else None


def find_ovf_store_volumes(root, sd_id):
    """Without the engine: list <sd>/images/ (one directory), and in each
    image directory the .meta of a lone volume; return [(disk id, volume
    id)] of the OVF stores."""
    images = os.path.join(root, sd_id, 'images')
    found = []
    for disk_id in sorted(os.listdir(images)):
        if not UUID.match(disk_id):
            continue
        try:
            metas = [name for name in os.listdir(os.path.join(images, disk_id))
                     if name.endswith('.meta')]
            if len(metas) != 1 or not UUID.match(metas[0][:-5]):
                continue
            _, values = read_meta(os.path.join(images, disk_id, metas[0]))
        except (OSError, MetaError):
            continue
        if ovf_description(values) is not None:
            found.append((disk_id, metas[0][:-5]))
    return found


class Verifier:
    """Checks a copy as a DR engine would import it, changing nothing;
    collects the failures ((what, check, detail)) and the disks and VMs
    verified."""

    def __init__(self, root, qemu_img, stop):
        self.root = root
        self.qemu_img = qemu_img
        self.stop = stop
        self.failures = []
        self.disks_ok = 0
        self.disks_failed = 0
        self.vms = set()
        self.templates = set()
        self.template_disks = 0

    def summary(self):
        text = '%s of %s' % (count_phrase(self.disks_ok - self.template_disks, 'disk'),
                             count_phrase(len(self.vms), 'VM'))
        if self.templates:
            text += ' and %s of %s' % (count_phrase(self.template_disks, 'disk'),
                                       count_phrase(len(self.templates), 'template'))
        text += ' verified restorable'
        if self.disks_failed:
            text += ', %s failed verification' % count_phrase(self.disks_failed, 'disk')
        return text

    def fail(self, what, check, detail):
        self.failures.append((what, check, detail))
        log.error('verify: %s: %s: %s', what, check, detail)

    def domain(self, sd_id, volumes=None, backups=(), skip=()):
        """Verify the domain: every VM of its newest OVF store with disks
        here and the disks of `backups` (VmBackups of this run); `skip`:
        disk ids not to verify (not confirmed). `volumes`: the OVF store
        volumes, else found by listing. Return {disk id: True/False}."""
        results = {}
        vms = self.newest_vms(sd_id, volumes)
        if vms is None:
            return results
        # templates' images: a thin VM's image bottoms at one of their volumes
        template_images = {disk_id for vm in vms.values() if vm.template
                           for disk_id in vm.volumes}
        images = self.images_to_check(sd_id, vms, backups, skip)
        found = self.check_images(sd_id, images, template_images)
        for (what, vm, disk_id, named, template), problems in zip(images, found):
            results[disk_id] = self.disk(what, disk_id, named, problems, template)
            (self.templates if template else self.vms).add(vm.vm_id)
        for backup in backups:
            for disk in backup.disks:
                if disk.disk_id not in skip and disk.sd_id == sd_id \
                        and not self.backed_up_disk(sd_id, vms.get(backup.vm_id),
                                                    backup, disk):
                    results[disk.disk_id] = False
        self.other_images(sd_id, set(results) | set(skip))
        return results

    def newest_vms(self, sd_id, volumes):
        """Given a domain and its OVF store volumes (None: found by listing),
        return {vm id: OvfVm} of its newest OVF store, or None (failed)."""
        what = 'storage domain %s' % sd_id
        try:
            if volumes is None:
                volumes = find_ovf_store_volumes(self.root, sd_id)
            store = newest_ovf_store(self.root, sd_id, volumes)
            if store is None:
                self.fail(what, 'OVF store', 'no written OVF store found (%d '
                          'OVF_STORE volumes): a DR engine could not register '
                          'its VMs' % len(volumes))
                return None
            vms = read_ovf_tar(store.data)
        except (OSError, MetaError) as error:
            self.fail(what, 'OVF store', describe_os_error(error))
            return None
        log.info('verify: storage domain %s: OVF store %s (%s) describes %d '
                 'VMs', sd_id, store.volume_id, store.last_updated, len(vms))
        return vms

    def images_to_check(self, sd_id, vms, backups, skip):
        """Given the OVF store's VMs, this run's VmBackups and the disk ids
        not to verify, return [(what, OvfVm, disk id, volumes named,
        template)] of the images here, templates first; fail each VM whose
        OVF lists a backup snapshot."""
        ours = {backup.vm_id: backup for backup in backups}
        images = []
        for vm in sorted(vms.values(), key=lambda vm: (not vm.template, vm.name)):
            if not vm.template:
                self.backup_snapshots_listed(vm, ours.get(vm.vm_id))
            what = '%s %s' % ('template' if vm.template else 'VM', vm.name)
            for disk_id, named in sorted(vm.volumes.items()):
                if disk_id in skip:
                    continue
                if not os.path.isdir(os.path.join(self.root, sd_id, 'images', disk_id)):
                    if not vm.template:
                        log.debug('verify: VM %s disk %s is not on domain %s',
                                  vm.name, disk_id, sd_id)
                    continue
                images.append((what, vm, disk_id, named, vm.template))
        return images

    def backup_snapshots_listed(self, vm, backup):
        """Given a VM of the OVF store and its VmBackup of this run (or
        None), fail it for each backup snapshot its OVF lists."""
        for sid, _, description in vm.snapshots:
            if backup_snapshot_volume(description) is not None or (
                    backup is not None and sid == backup.snapshot_id):
                self.fail('VM %s' % vm.name, 'OVF store', 'it lists the '
                          'backup snapshot %s: a DR engine would register '
                          'volumes that are not there' % sid)

    def check_images(self, sd_id, images, template_images):
        """Given images_to_check's images, return what image_problems finds
        of each, in order. The images are checked side by side (qemu-img is
        a process per volume)."""
        def check(image):
            if self.stop.requested:
                return [('qemu-img', 'not checked: stopped by %s'
                         % self.stop.signal_name)]
            return self.image_problems(sd_id, image[2], image[3], image[4],
                                       template_images)

        with concurrent.futures.ThreadPoolExecutor(
                max_workers=verify_workers()) as pool:
            return list(pool.map(check, images))

    def backed_up_disk(self, sd_id, vm, backup, disk):
        """Given a disk this run backed up and its VM in the OVF store (or
        None), fail it unless the OVF store names it on its base and its
        overlay is gone; return True when it holds."""
        what = 'VM %s disk %s' % (backup.name, disk.disk_id)
        if vm is None or disk.disk_id not in vm.volumes:
            self.fail(what, 'OVF store', 'not in the newest OVF store')
            return False
        held = True
        if vm.active.get(disk.disk_id) not in (None, disk.base_id):
            self.fail(what, 'OVF store', 'its active volume is %s, not '
                      'the base %s' % (vm.active.get(disk.disk_id), disk.base_id))
            held = False
        if disk.overlay_id and os.path.lexists(
                volume_path(self.root, sd_id, disk.disk_id, disk.overlay_id)):
            self.fail(what, 'overlay', "this run's overlay %s is still "
                      'there' % disk.overlay_id)
            held = False
        return held

    def other_images(self, sd_id, checked):
        """Every image of <sd>/images/ (one directory listed) not checked
        above, as a DR engine's attach reads it: GetUnregisteredDisksQuery
        takes every image vdsm lists (getImagesList), skips one of more than
        one volume ("snapshot-..."), and for one of one volume asks vdsm's
        getVolumeInfo and, for COW, qemu-img info; any of them failing fails
        the whole query, and StorageHandlingCommandBase then registers
        nothing of the domain ("Failed to retrieve unregistered disks"); a
        .meta vdsm cannot parse leaves getVolumeInfo without the keys that
        GetVolumeInfoVDSCommand.buildImageEntity needs, which then fails.
        So only the images of one volume are read: its .meta, and qemu-img
        info when it is COW."""
        images = os.path.join(self.root, sd_id, 'images')
        try:
            names = sorted(os.listdir(images))
        except OSError as error:
            self.fail('storage domain %s' % sd_id, 'images', 'cannot list %s/images: %s'
                      % (sd_id, error.strerror))
            return
        for disk_id in names:
            if disk_id in checked or not UUID.match(disk_id):
                continue
            problem = self.unregistered_image_problem(os.path.join(images, disk_id))
            if problem:
                self.fail('image %s' % disk_id, 'DR import', '%s: the engine\'s '
                          'GetUnregisteredDisksQuery fails on it, and attaching the '
                          'domain at the DR site registers nothing' % problem)

    def unregistered_image_problem(self, image_dir):
        """Given an image directory not named by the OVF store, return why
        vdsm or qemu-img would fail on it for the engine, or None."""
        try:
            if not os.path.isdir(image_dir):
                return None        # vdsm's getAllImages lists directories only
            # vdsm counts an image's volumes by its .meta files (fileSD.py
            # getAllVolumes), a template's volume shared there included
            volumes = [name[:-len('.meta')] for name in os.listdir(image_dir)
                       if name.endswith('.meta')]
        except OSError as error:
            return 'cannot list it: %s' % error.strerror
        if len(volumes) != 1:
            return None
        volume_id = volumes[0]
        if not UUID.match(volume_id):
            return 'its volume %r is not named by a UUID' % volume_id
        path = os.path.join(image_dir, volume_id)
        try:
            _, values = read_meta(path + '.meta')
        except (OSError, MetaError) as error:
            return 'volume %s: %s' % (volume_id, describe_os_error(error))
        problem = vdsm_meta_problem(values)
        if problem:
            return 'volume %s: %s' % (volume_id, problem)
        if not os.path.isfile(path):
            return 'volume %s has a .meta but no data file' % volume_id
        if values.get('FORMAT') != 'COW':
            return None
        status, output, errors = run_captured(
            [self.qemu_img, 'info', '--output=json', '-U', '-f', 'qcow2', path],
            QEMU_IMG_TIMEOUT, self.stop)
        if status != 0:
            return 'volume %s: %s' % (volume_id, describe_qemu(status, errors or output))
        return None

    def disk(self, what, disk_id, named, problems, template=False):
        """Given one image (`what`: 'VM NAME' or 'template NAME') and what
        image_problems found wrong with it (its .meta chain, its volumes
        against the OVF store's, qemu-img's view of them), tell it; return
        True when all hold."""
        what = '%s disk %s' % (what, disk_id)
        for check, detail in problems:
            self.fail(what, check, detail)
        if problems:
            self.disks_failed += 1
            return False
        self.disks_ok += 1
        if template:
            self.template_disks += 1
        log.info('verify: %s: restorable (%d volumes)', what, len(named))
        return True

    def image_problems(self, sd_id, disk_id, named, template=False, template_images=()):
        """Return [(check, detail)] of what is wrong with the image: a VM's
        (a chain from one LEAF down to the blank UUID, or to a template's
        SHARED volume shared there) or a template's (one SHARED volume)."""
        image_dir = os.path.join(self.root, sd_id, 'images', disk_id)
        try:
            names = os.listdir(image_dir)       # one directory, as vdsm does
        except OSError as error:
            return [('volumes', 'cannot list the image directory: %s'
                     % error.strerror)]
        metas, problems = read_image_metas(image_dir, names)
        # a template's volume shared into a VM's image keeps its own IMAGE
        # (vdsm fileVolume.py getImageVolumes leaves it out of the image's
        # own volumes; image.py getChain ends the chain at it)
        shared = {volume_id: values for volume_id, values in metas.items()
                  if not template and values.get('VOLTYPE') == 'SHARED'
                  and values.get('IMAGE') != disk_id}
        problems += volume_meta_problems(image_dir, sd_id, disk_id, metas, shared)
        problems += shared_volume_problems(self.root, sd_id, shared, template_images)
        problems += named_volume_problems(named, metas, shared)
        own = {v: values for v, values in metas.items() if v not in shared}
        chain, chain_problem = image_chain(own, shared, template)
        if chain_problem:
            problems.append(('chain', chain_problem))
        if problems:
            return problems
        under = own[chain[0]].get('PUUID')
        return self.qemu_problems(image_dir, chain, metas,
                                  under if under in shared else None)

    def qemu_problems(self, image_dir, own_chain, metas, under=None):
        """Given a legal chain (base first) and the template's volume under
        it (or None), return what qemu-img finds wrong: its view of the
        whole backing chain against the .meta, and qemu-img check of each
        qcow2 volume of the chain (a template's volume is checked with its
        template)."""
        chain = ([under] if under else []) + own_chain
        leaf = os.path.join(image_dir, chain[-1])
        status, output, errors = run_captured(
            [self.qemu_img, 'info', '--backing-chain', '--output=json', '-U', leaf],
            QEMU_IMG_TIMEOUT, self.stop)
        if status != 0:
            return [('qemu-img info', describe_qemu(status, errors or output))]
        try:
            infos = json.loads(output)
        except ValueError:
            return [('qemu-img info', 'its output is not JSON')]
        if len(infos) != len(chain):
            return [('qemu-img info', 'it sees %d volumes, the .meta chain %d'
                     % (len(infos), len(chain)))]
        problems = []
        for volume_id, info in zip(reversed(chain), infos):
            values = metas[volume_id]
            expected_format = QEMU_FORMATS[values['FORMAT']]
            if info.get('format') != expected_format:
                problems.append(('qemu-img info', 'volume %s is %s, its .meta says '
                                 '%s' % (volume_id, info.get('format'),
                                         values['FORMAT'])))
            parent = values.get('PUUID')
            expected_backing = None if parent == BLANK_UUID else parent
            if info.get('backing-filename') != expected_backing:
                problems.append(('qemu-img info', 'volume %s has backing file %s, '
                                 'its .meta says PUUID=%s' % (
                                     volume_id, info.get('backing-filename'), parent)))
            capacity = meta_capacity(values)
            if capacity is not None and info.get('virtual-size') != capacity:
                problems.append(('qemu-img info', 'volume %s has virtual size %s, '
                                 'its .meta says %d' % (
                                     volume_id, info.get('virtual-size'), capacity)))
        if problems:
            return problems
        for volume_id in own_chain:
            if metas[volume_id]['FORMAT'] != 'COW':
                continue
            status, output, errors = run_captured(
                [self.qemu_img, 'check', '-U', '-f', 'qcow2',
                 os.path.join(image_dir, volume_id)], QEMU_IMG_TIMEOUT, self.stop)
            if status == 3:
                log.warning('verify: volume %s has leaked clusters (harmless: '
                            'space only)', volume_id)
            elif status != 0:
                problems.append(('qemu-img check', 'volume %s: %s' % (
                    volume_id, describe_qemu(status, output + errors))))
        return problems



def read_image_metas(image_dir, names):
    """Given an image directory and the names in it, return ({volume id:
    parsed .meta}, [(check, detail)] of the .meta files that can't be read)."""
    metas = {}
    problems = []
    for name in sorted(names):
        volume_id = name[:-len('.meta')]
        if not name.endswith('.meta') or not UUID.match(volume_id):
            continue
        try:
            _, metas[volume_id] = read_meta(os.path.join(image_dir, name))
        except (OSError, MetaError) as error:
            problems.append(('chain', 'volume %s: %s' % (
                volume_id, describe_os_error(error))))
    return metas, problems


def volume_meta_problems(image_dir, sd_id, disk_id, metas, shared):
    """Given an image's parsed .meta files and those of them shared there by
    a template, return [(check, detail)] of each volume vdsm would not take
    as it is (its keys, its format, its data file)."""
    problems = []
    for volume_id, values in sorted(metas.items()):
        expected = dict(DOMAIN=sd_id, LEGALITY='LEGAL')
        if volume_id not in shared:
            expected['IMAGE'] = disk_id
        wrong = meta_mismatch(values, **expected) or vdsm_meta_problem(values)
        if wrong:
            problems.append(('chain', 'volume %s says %s' % (volume_id, wrong)))
        if values.get('FORMAT') not in QEMU_FORMATS:
            problems.append(('chain', 'volume %s says FORMAT=%s' % (
                volume_id, values.get('FORMAT'))))
        if not os.path.isfile(os.path.join(image_dir, volume_id)):
            problems.append(('volumes', 'volume %s has a .meta but no data '
                             'file' % volume_id))
    return problems


def shared_volume_problems(root, sd_id, shared, template_images):
    """Given the template volumes shared into an image and the images of the
    templates of the OVF store, return [(check, detail)] of each shared
    volume that is no template's there."""
    problems = []
    for volume_id, values in sorted(shared.items()):
        image = values.get('IMAGE') or ''
        if image not in template_images:
            problems.append(('template', 'volume %s is the SHARED volume of image '
                             '%s, which is no template\'s in the OVF store: a DR '
                             'engine registers templates first and refuses this '
                             'VM (TEMPLATE_DOES_NOT_EXIST)' % (volume_id, image)))
        elif not (UUID.match(image) and os.path.isfile(os.path.join(
                root, sd_id, 'images', image, volume_id))):
            problems.append(('template', 'volume %s is not in its template\'s image '
                             '%s' % (volume_id, image)))
    return problems


def named_volume_problems(named, metas, shared):
    """Given the volumes the OVF store names for an image and the image's
    .meta files, return [(check, detail)] of those missing and those left
    over."""
    problems = []
    for volume_id in named:
        if volume_id not in metas or volume_id in shared:
            problems.append(('volumes', 'volume %s named by the OVF store is '
                             'missing' % volume_id))
    for volume_id in sorted(set(metas) - set(named) - set(shared)):
        problems.append(('overlay', 'volume %s is not in the OVF store (an '
                         'overlay left by a backup?)' % volume_id))
    return problems


def image_chain(own, shared, template):
    """Given an image's own volumes' .meta, the template volumes shared
    there and whether it is a template's image, return (its chain, None) or
    (None, why it is not a legal one of its kind): see leaf_chain."""
    chain, problem = leaf_chain(own, shared)
    if problem is None and template != (own.get(chain[-1], {}).get('VOLTYPE')
                                        == 'SHARED'):
        problem = ('one SHARED volume: a template\'s image, not a VM\'s disk'
                   if not template else 'a template\'s image holds one SHARED '
                   'volume, this one %s' % ', '.join(sorted(own)))
    return (None if problem else chain), problem

def verify_workers():
    """How many images verify checks at once: one per CPU (each check is
    qemu-img processes, CPU-bound on a local or cached volume)."""
    return max(1, os.cpu_count() or 1)


def leaf_chain(metas, shared=()):
    """Given {volume id: parsed .meta} of an image's own volumes and the
    ids of the template volumes shared there, return (the chain from its
    base to its one LEAF, None) or (None, what is not legal). As vdsm's
    Image.getChain: a lone SHARED volume is a template's image, the chain
    is that volume; a chain ends at the blank UUID or at a SHARED parent
    (the template's volume, not part of the chain). A shared volume that
    is no parent of the chain is off it."""
    if len(metas) == 1 and not shared:
        (volume_id, values), = metas.items()
        if values.get('VOLTYPE') == 'SHARED':
            if values.get('PUUID') != BLANK_UUID:
                return None, 'the SHARED volume %s has parent %s' % (
                    volume_id, values.get('PUUID'))
            return [volume_id], None
    leaves = sorted(v for v, values in metas.items() if values.get('VOLTYPE') == 'LEAF')
    if not leaves:
        return None, 'no LEAF volume (vdsm: ImageIsNotLegalChain)'
    if len(leaves) > 1:
        return None, '%d LEAF volumes (%s)' % (len(leaves), ', '.join(leaves))
    chain = []
    volume_id = leaves[0]
    while volume_id != BLANK_UUID and volume_id not in shared:
        if volume_id in chain:
            return None, 'the PUUID links loop at volume %s' % volume_id
        if volume_id not in metas:
            return None, 'volume %s names parent %s, which is not there' % (
                chain[0], volume_id)
        chain.insert(0, volume_id)
        volume_id = metas[volume_id].get('PUUID')
    off_chain = sorted((set(metas) | set(shared)) - set(chain) - {volume_id})
    if off_chain:
        return None, 'volumes not on the chain of leaf %s: %s' % (
            leaves[0], ', '.join(off_chain))
    for volume_id in chain[:-1]:
        if metas[volume_id].get('VOLTYPE') != 'INTERNAL':
            return None, 'volume %s under the leaf says VOLTYPE=%s' % (
                volume_id, metas[volume_id].get('VOLTYPE'))
    return chain, None


# what vdsm requires of a .meta to read the volume at all (volumemetadata.py
# ATTRIBUTES and parse: each key present, CAP (or the older SIZE, sectors),
# CTIME, GEN and SEQ integers, GEN and SEQ defaulted when absent; a "NONE"
# key is a cleared .meta); any missing makes VolumeMetadata.from_lines raise
# InvalidMetadata, and getVolumeInfo fails
VDSM_META_KEYS = ('CTIME', 'DESCRIPTION', 'DISKTYPE', 'DOMAIN', 'FORMAT', 'IMAGE',
                  'LEGALITY', 'PUUID', 'TYPE', 'VOLTYPE')
VDSM_META_NUMBERS = ('CAP', 'SIZE', 'CTIME', 'GEN', 'SEQ')


def vdsm_meta_problem(values):
    """Given a parsed .meta, return why vdsm could not read it, or None."""
    if 'NONE' in values:
        return 'a cleared .meta (NONE=...)'
    missing = [key for key in VDSM_META_KEYS if key not in values]
    if 'CAP' not in values and 'SIZE' not in values:
        missing.insert(0, 'CAP')
    if missing:
        return 'no %s (vdsm requires it)' % ', '.join(missing)
    for key in VDSM_META_NUMBERS:
        if key in values and not (key == 'SIZE' and 'CAP' in values):
            try:
                int(values[key])
            except ValueError:
                return '%s=%s, not a number' % (key, values[key])
    return None


def meta_capacity(values):
    """The virtual size a .meta gives: CAP (bytes), or SIZE (sectors) on
    older domains; None when it gives neither."""
    try:
        if 'CAP' in values:
            return int(values['CAP'])
        if 'SIZE' in values:
            return int(values['SIZE']) * 512
    except ValueError:
        pass
    return None


def describe_qemu(status, text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if 'ERROR' in line or 'rror' in line]
    detail = (errors or lines or [''])[0]
    if isinstance(status, OSError):
        return 'cannot run qemu-img: %s' % (status.strerror or status)
    if status is None:
        return 'qemu-img did not finish within %d seconds' % QEMU_IMG_TIMEOUT
    return 'qemu-img %s: %s' % (describe_status(status), detail)


def find_qemu_img(settings):
    """Return the path of [verify] qemu_img; raise UsageError when it is
    missing."""
    program = settings.qemu_img or DEFAULT_QEMU_IMG
    found = program if os.sep in program else shutil.which(program)
    if not found or not is_executable(found):
        raise UsageError('qemu-img (%s) is not there: install qemu-img (EL) or '
                         'qemu-utils (Debian), or name it in [verify] qemu_img'
                         % program)
    return found


def verify_copy(run, created, slave_root, kept, confirmed):
    """End of step 7: given the VmBackups created in step 5, verify the
    copy at the slave as a DR engine would import it; set each backed-up disk's verified, and run.fail for each
    failure. Return the summary ("N disks of M VMs verified restorable")."""
    backups = [backup for backup in created if backup.snapshot_ready]
    chosen = {disk.disk_id for _, disk in confirmed}
    skip = {disk.disk_id for backup in backups for disk in backup.disks
            if disk.disk_id not in chosen}
    stores = {}
    for store in kept:
        stores.setdefault(store.sd_id, []).append((store.disk_id, store.volume_id))
    domains = sorted(set(run.plan.storage_domains if run.plan else ())
                     | {disk.sd_id for _, disk in confirmed})
    verifier = Verifier(slave_root, find_qemu_img(run.settings), run.stop)
    for sd_id in domains:
        results = verifier.domain(sd_id, stores.get(sd_id), backups, skip)
        for _, disk in confirmed:
            if disk.sd_id == sd_id:
                disk.verified = results.get(disk.disk_id, False)
                if not disk.verified:
                    disk.problem = disk.problem or 'failed verification at the remote site'
    for failure in verifier.failures:      # the Verifier logged each
        run.fail('verify: %s: %s: %s', *failure, told=True)
    summary = verifier.summary()
    log.info('verify: %s', summary)
    return summary


def verify_only(run):
    """--verify: given the run, mount the slave volume read-only and verify
    every storage domain on it; change nothing, need no engine; run.fail
    for each failure. Return the verifier's summary, or None when nothing
    was mounted."""
    args, settings = run.args, run.settings
    qemu_img = find_qemu_img(settings)
    if not is_executable(settings.glusterfs):
        raise UsageError('[gluster] glusterfs %s is not an executable file '
                         '(install glusterfs-fuse / glusterfs-client, or name '
                         'it)' % settings.glusterfs)
    with verify_mounted(run) as root:
        if root is None:
            return None
        verifier = Verifier(root, qemu_img, run.stop)
        try:
            domains = [name for name in sorted(os.listdir(root))
                       if UUID.match(name)
                       and os.path.isdir(os.path.join(root, name, 'images'))]
        except OSError as error:
            run.fail('cannot list the slave volume: %s', error.strerror)
            domains = []
        if not domains and not run.failures:
            run.fail('no storage domain on %s::%s', slave_host(args.slave),
                     args.slavevol)
        for sd_id in domains:
            verifier.domain(sd_id)
    for failure in verifier.failures:
        run.fail('verify: %s: %s: %s', *failure, told=True)
    what = '%s::%s' % (slave_host(args.slave), args.slavevol)
    if args.restore_point:
        what = 'restore point %s of %s' % (args.restore_point, what)
    summary = verifier.summary()
    if run.failures:
        log.error('verify of %s failed: %s', what, summary)
    else:
        log.info('verify of %s: %s', what, summary)
    return summary


# ==== Step 7: restore points, gluster snapshots of the slave volume ==========

class GlusterSnapshot(Record):
    """One gluster snapshot, as `gluster snapshot info --xml` tells it."""
    DEFAULTS = {'name': None, 'uuid': None, 'description': '',
                'created_at': None,     # Unix time, gluster's createTime
                'status': None,         # of its volume: Started, Stopped
                'origin': None}         # the volume it is a snapshot of


class RestorePoints(Record):
    """The restore points of the slave volume after this run's step."""
    DEFAULTS = {
        'host': None,              # the slave node gluster was asked on
        'volume': None,            # SLAVEVOL
        'taken': None,             # the name of this run's, if it took one
        'kept': [],                # GlusterSnapshots of ours, newest first
        'deleted': [],             # names of ours this run deleted
        'listed_at': None,         # Unix time of the listing
    }


def restore_point_host(args, settings):
    """Given the command line and the settings, return where gluster's CLI
    is run over ssh: [restore_points] host, else SLAVE with its user."""
    return settings.restore_host or args.slave


def restore_point_name(slavevol, now):
    """Given the slave volume and the Unix time, return the name of the
    restore point taken then: vmbackup-SLAVEVOL-20261206T013002Z."""
    return 'vmbackup-%s-%s' % (slavevol, time.strftime('%Y%m%dT%H%M%SZ',
                                                       time.gmtime(now)))


def is_our_restore_point(name, slavevol):
    """Tell whether a snapshot's name is one restore_point_name gives for
    this slave volume (and not, say, vmbackup-SLAVEVOL-before-upgrade, or
    a name of the volume SLAVEVOL-old)."""
    return re.match(r'vmbackup-%s-\d{8}T\d{6}Z\Z' % re.escape(slavevol),
                    name) is not None


def restore_point_refused(backups, failures, partial):
    """Given the run's VmBackups, its failures so far and whether --vm or
    --exclude narrowed it, return why it may take no restore point, or None
    when every disk's copy was verified in full."""
    if failures:
        return 'the run failed'
    if partial:
        return ('--vm or --exclude left VMs out: their copies at the slave '
                'are as geo-replication left them')
    disks = [disk for backup in backups for disk in backup.disks]
    if not disks:
        return 'no disk was backed up'
    if not all(backup.snapshot_ready for backup in backups):
        return 'a VM was not snapshotted'
    unverified = [disk for disk in disks if disk_outcome(disk) != 'verified']
    if unverified:
        return '%d of %d disks were not verified' % (len(unverified), len(disks))
    return None


def restore_points_beyond(snapshots, slavevol, keep):
    """Given the GlusterSnapshots of the slave volume, the volume and keep,
    return (ours to keep, newest first; ours beyond keep, oldest first),
    newest by gluster's creation time (then by name). A snapshot whose name
    is not ours, or of another volume, is in neither: never deleted."""
    ours = sorted((snapshot for snapshot in snapshots
                   if is_our_restore_point(snapshot.name, slavevol)
                   and snapshot.origin == slavevol),
                  key=lambda snapshot: (snapshot.created_at, snapshot.name),
                  reverse=True)
    return ours[:keep], list(reversed(ours[keep:]))


def remote_gluster_command(settings, host, words):
    """Given the settings, the slave node and gluster's words, return the
    argv that runs `GLUSTER --mode=script WORDS` there over ssh. ssh joins
    its arguments into one line for the remote shell: the remote command is
    one argument, each word quoted for a POSIX shell (a description has
    spaces, an event's text may hold quotes)."""
    remote = settings.restore_gluster + ['--mode=script'] + list(words)
    return settings.restore_ssh + [host, ' '.join(shlex.quote(word)
                                                  for word in remote)]


def remote_gluster(settings, host, words, stop):
    """Run gluster WORDS on host over ssh, for at most
    RESTORE_POINT_TIMEOUT seconds; return (None, its stdout) when it
    exited 0, else (what failed in one line with gluster's or ssh's own
    words, its stdout)."""
    command = remote_gluster_command(settings, host, words)
    what = 'gluster snapshot %s on %s' % (words[1], host)
    log.debug('running %s', ' '.join(shlex.quote(part) for part in command))
    status, output, errors = run_captured(command, RESTORE_POINT_TIMEOUT, stop)
    xml = output.lstrip().startswith('<')
    said = ' '.join((errors + ('' if xml else '\n' + output)).split())
    if isinstance(status, OSError):
        return ('cannot run %s ([restore_points] ssh): %s' % (
            settings.restore_ssh[0], status.strerror or status)), ''
    if status is None:
        return ('%s did not answer within %d seconds' % (
            what, RESTORE_POINT_TIMEOUT)), output
    if status != 0:
        return '%s failed (ssh %s): %s' % (what, describe_status(status),
                                            said or 'no message'), output
    for line in ([] if xml else output.splitlines()) + errors.splitlines():
        if line.strip():
            log.info('gluster: %s', line.strip())
    return None, output


def remote_gluster_xml(settings, host, words, stop):
    """Run gluster WORDS --xml on host over ssh; return (its cliOutput
    element, None), or (None, what failed, with gluster's own words: with
    --xml an error is opRet -1 and opErrstr, cli/src/cli-xml-output.c,
    cli_xml_output_common)."""
    problem, output = remote_gluster(settings, host, list(words) + ['--xml'],
                                     stop)
    what = 'gluster snapshot %s on %s' % (words[1], host)
    try:
        root = ElementTree.fromstring(output)
    except ElementTree.ParseError:
        return None, problem or '%s answered no XML: %s' % (
            what, ' '.join(output.split())[:200] or 'nothing')
    if root.tag != 'cliOutput':
        return None, '%s answered <%s>, not <cliOutput>' % (what, root.tag)
    if (root.findtext('opRet') or '').strip() != '0':
        return None, '%s failed: %s' % (what, ' '.join(
            (root.findtext('opErrstr') or 'no message').split()))
    if problem:
        return None, problem
    return root, None


def gluster_time(text):
    """Given a time as glusterd writes a snapshot's (gf_time_fmt,
    gf_timefmt_FT: 2026-12-06 01:30:02, UTC unless glusterd logs in local
    time), return Unix time; raise ValueError."""
    moment = datetime.datetime.strptime(text.strip(), '%Y-%m-%d %H:%M:%S')
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def parse_snapshot_info(root):
    """Given the cliOutput element of `gluster snapshot info (NAME | volume
    VOL) --xml` (cli/src/cli-xml-output.c, cli_xml_snapshot_info: snapInfo
    with an originVolume per volume or per snapshot volume, then
    snapshots/snapshot with name, uuid, description, createTime and
    snapVolume/status), return its GlusterSnapshots; raise ValueError when
    it is not that."""
    info = root.find('snapInfo')
    if info is None:
        raise ValueError('no snapInfo in the answer')
    origin = info.findtext('originVolume/name')
    found = []
    for element in info.findall('snapshots/snapshot'):
        name = (element.findtext('name') or '').strip()
        created = element.findtext('createTime')
        if not name or created is None:
            raise ValueError('a snapshot without name or createTime')
        try:
            created_at = gluster_time(created)
        except ValueError:
            raise ValueError('snapshot %s: createTime %r is not a time'
                             % (name, created)) from None
        found.append(GlusterSnapshot(
            name=name, uuid=element.findtext('uuid'),
            description=element.findtext('description') or '',
            created_at=created_at,
            status=element.findtext('snapVolume/status'),
            origin=(element.findtext('snapVolume/originVolume/name')
                    or origin)))
    return found


def list_snapshots(settings, host, words, stop):
    """Given gluster's words for a snapshot info, return (the GlusterSnapshots,
    None) or (None, what failed)."""
    root, problem = remote_gluster_xml(settings, host, words, stop)
    if problem:
        return None, problem
    try:
        return parse_snapshot_info(root), None
    except ValueError as error:
        return None, 'gluster snapshot info on %s: %s' % (host, error)


def take_restore_point(run):
    """End of step 7, when [restore_points] keep is not 0 and every disk's
    copy was verified in full: snapshot the slave volume on a slave node
    (`gluster snapshot create` over ssh, the run's summary as its
    description), list the volume's snapshots, and delete ours beyond keep,
    oldest first. Return the RestorePoints, or None when none was due or
    the listing failed; run.fail, with gluster's own words, for each
    refusal."""
    args, settings = run.args, run.settings
    if not settings.restore_keep:
        return None
    why_not = restore_point_refused(run.plan.backups if run.plan else [],
                                    run.failures, bool(args.vm or args.exclude))
    if why_not:
        log.warning('no restore point taken: %s', why_not)
        return None
    host = restore_point_host(args, settings)
    name = restore_point_name(args.slavevol, time.time())
    notes = run.notes + ([run.verify_summary] if run.verify_summary else [])
    _, summary = event_description(run.mastervol, [], run.minutes(), notes)
    if len(summary) > RESTORE_POINT_DESCRIPTION_LIMIT:
        summary = summary[:RESTORE_POINT_DESCRIPTION_LIMIT - 3] + '...'
    problem, _ = remote_gluster(settings, host, [
        'snapshot', 'create', name, args.slavevol, 'no-timestamp',
        'description', summary], run.stop)
    if problem:
        run.fail('no restore point taken of %s: %s', args.slavevol, problem)
        return None
    log.info('restore point %s of %s taken on %s', name, args.slavevol, host)
    snapshots, problem = list_snapshots(
        settings, host, ['snapshot', 'info', 'volume', args.slavevol], run.stop)
    if problem:
        run.fail('restore point %s taken, but the restore points of %s cannot '
                 'be listed (none deleted): %s', name, args.slavevol, problem)
        return None
    listed_at = time.time()
    kept, beyond = restore_points_beyond(snapshots, args.slavevol,
                                         settings.restore_keep)
    if name not in [snapshot.name for snapshot in kept]:
        run.fail('restore point %s was taken but gluster on %s does not list '
                 'it among the newest %d of %s', name, host,
                 settings.restore_keep, args.slavevol)
    deleted = []
    for snapshot in beyond:
        problem, _ = remote_gluster(settings, host, [
            'snapshot', 'delete', snapshot.name], run.stop)
        if problem:
            run.fail('restore point %s (beyond keep = %d) not deleted: %s',
                     snapshot.name, settings.restore_keep, problem)
            kept.append(snapshot)
        else:
            log.info('restore point %s deleted (beyond keep = %d)',
                     snapshot.name, settings.restore_keep)
            deleted.append(snapshot.name)
    log.info('%s of %s kept on %s, newest %s', count_phrase(
        len(kept), 'restore point'), args.slavevol, host, kept[0].name
        if kept else 'none')
    return RestorePoints(host=host, volume=args.slavevol, taken=name,
                         kept=kept, deleted=deleted, listed_at=listed_at)


def snapshot_volfile_id(name, slavevol):
    """Given a snapshot and its volume, return the volfile id a client
    mounts it by (glusterd-handshake.c, get_snap_volname_and_volinfo:
    /snaps/<snapname>/<parent volname>)."""
    return '/snaps/%s/%s' % (name, slavevol)


@contextlib.contextmanager
def restore_point_active(run):
    """--verify --restore-point NAME: given the run, check with gluster on
    the slave node that NAME is a snapshot of SLAVEVOL, and activate it for
    the block when it is not (a snapshot is made deactivated; its volume
    must be started to be mounted), deactivating it again on every way out;
    yield True, or False after run.fail."""
    args, settings, stop = run.args, run.settings, run.stop
    host = restore_point_host(args, settings)
    name = args.restore_point
    snapshots, problem = list_snapshots(settings, host, ['snapshot', 'info', name],
                                        stop)
    found = [snapshot for snapshot in snapshots or () if snapshot.name == name]
    if problem or not found:
        run.fail('restore point %s: %s', name, problem or 'gluster on %s does '
                 'not list it' % host)
        yield False
        return
    if found[0].origin != args.slavevol:
        run.fail('restore point %s is a snapshot of volume %s, not of %s', name,
                 found[0].origin, args.slavevol)
        yield False
        return
    activated = False
    if found[0].status != 'Started':
        problem, _ = remote_gluster(settings, host, ['snapshot', 'activate', name],
                                    stop)
        if problem:
            run.fail('restore point %s cannot be activated: %s', name, problem)
            yield False
            return
        activated = True
        log.info('restore point %s activated for the verify (deactivated '
                 'after it)', name)
    try:
        yield True
    finally:
        if activated:
            problem, _ = remote_gluster(settings, host, [
                'snapshot', 'deactivate', name], stop)
            if problem:
                run.fail('restore point %s stays activated: %s; deactivate it '
                         '(gluster snapshot deactivate %s)', name, problem, name)
            else:
                log.info('restore point %s deactivated again', name)


@contextlib.contextmanager
def verify_mounted(run):
    """--verify: given the run, mount read-only for the block the slave
    volume or, with --restore-point, that snapshot of it; yield the
    directory, or None after run.fail. Unmount (and deactivate what was
    activated) on every way out."""
    args = run.args
    if args.restore_point is None:
        with slave_mounted(run, read_only=True) as root:
            yield root
        return
    with restore_point_active(run) as active:
        if not active:
            yield None
            return
        command = mount_command(args, run.settings, 'DIR')
        command[command.index(SLAVE_CLIENT_PID)] = '--read-only'
        command[command.index('--volfile-id') + 1] = snapshot_volfile_id(
            args.restore_point, args.slavevol)
        with volume_mounted(run, command, 'the restore point %s:%s' % (
                slave_host(args.slave), command[command.index('--volfile-id') + 1]),
                args.slavevol) as root:
            yield root


# ==== Step 8: remove the snapshots ===========================================

def start_removal(run, engine, created):
    """Step 8: given the run and the VmBackups whose snapshot it created,
    send their removals (live merge) now, with those of the snapshots made
    after their request failed; return the Removal to wait on, or None."""
    plan = run.plan
    late = find_late_snapshots(engine, plan) if plan else []
    targets = [(backup, backup.snapshot_id) for backup in created + late
               if backup.snapshot_id]
    if not targets:
        return None
    log.info('removing %d snapshots', len(targets))
    removal = Removal(engine, targets, run.settings, plan)
    removal.send()
    return removal


def measure_overlays(master_root, backups):
    """Given the master's mount and the VmBackups whose snapshots are about
    to be merged, set each disk's overlay_bytes: its overlay's size at the
    master now (what the guests wrote since the snapshot, which the merge
    writes again into the base); return their sum. An overlay that can't be
    read keeps None."""
    total = 0
    for backup in backups:
        for disk in backup.disks:
            if not (backup.snapshot_ready and disk.overlay_id):
                continue
            try:
                disk.overlay_bytes = os.stat(volume_path(
                    master_root, disk.sd_id, disk.disk_id,
                    disk.overlay_id)).st_size
            except (OSError, MetaError) as error:
                log.debug('VM %s: the size of overlay %s is unknown: %s',
                          backup.name, disk.overlay_id, describe_os_error(error))
                continue
            total += disk.overlay_bytes
    log.info('the overlays hold %s at the master as their merges are sent',
             format_bytes(total))
    return total


def remove_snapshots(run, engine, created, removal=None):
    """Step 8: given the run, the VmBackups whose snapshot it created, and
    the Removal already started if any, remove them all and wait until
    they are gone; run.fail for each one left, and return the (VmBackup,
    snapshot id) pairs left."""
    plan = run.plan
    removal = removal or start_removal(run, engine, created)
    if removal is None:
        return []
    left = removal.wait()
    for backup, snapshot_id in left:
        run.fail('VM %s: snapshot %s %r is still there: remove it in the '
                 'Administration Portal', backup.name, snapshot_id,
                 plan.snapshot_description if plan else SNAPSHOT_DESCRIPTION)
    if not left:
        log.info('all %d snapshots removed', len(removal.targets))
    return left


class RemovalState(enum.Enum):
    """Where the removal of one snapshot stands."""
    TO_SEND = 'to send'         # not sent yet, or refused: sent at the next check
    MERGING = 'merging'         # sent: the engine merges it away
    GIVEN_UP = 'given up'       # its merge failed REMOVE_ATTEMPTS times


class RemovalEntry:
    """One snapshot being removed: its VmBackup, state, attempts, last error."""

    def __init__(self, backup):
        self.backup = backup
        self.state = RemovalState.TO_SEND
        self.attempts = 0
        self.error = None


class Removal:
    """The removal of some snapshots, (VmBackup, snapshot id) pairs.

    A removal the engine refuses (409 while the VM is busy, e.g. its snapshot
    is still being created, or any passing error) is sent again at the next
    check; a merge that failed (the snapshot back to ok) is retried up to
    REMOVE_ATTEMPTS times. The removals carry one correlation id, and the
    checks look at the VMs the engine's feed names (see Watch). wait_timeout
    counts from the first send. A stop request does not cut it short.

    From the first send until wait() the checks also run in a thread of
    their own (the tool does file work meanwhile: repair, verify), so that
    merges that end before wait() are known then; removals are sent again
    only by wait(). Nothing else talks to the engine meanwhile."""

    def __init__(self, engine, targets, settings, plan):
        self.engine = engine
        self.targets = targets
        self.settings = settings
        self.plan = plan
        self.entries = {snapshot_id: RemovalEntry(backup)
                        for backup, snapshot_id in targets}
        self.deadline = None
        self.sent = None            # time.monotonic() of the first send
        self.sent_at = None         # and its Unix time
        self.feed = Feed(engine, 'snapshot removal', REMOVAL_ENDS)
        self.watch = None
        self.lock = threading.Lock()
        self.quit = threading.Event()
        self.checker = None         # the thread that checks until wait()

    def send(self):
        """Send the removals that are due."""
        if self.deadline is None:
            self.sent = time.monotonic()
            self.sent_at = time.time()      # for the snapshot window
            self.deadline = self.sent + self.settings.wait_timeout * 60
            self.feed.start()
            self.watch = Watch(self.feed, self.deadline, self.plan,
                               self.settings.poll_interval)
        due = [(sid, entry) for sid, entry in self.entries.items()
               if entry.state is RemovalState.TO_SEND]
        query = self.feed.query()
        results = self.engine.map([
            (sid, lambda system, sid=sid, vm_id=entry.backup.vm_id:
             system.vms_service().vm_service(vm_id).snapshots_service()
             .snapshot_service(sid).remove(query=dict(query)))
            for sid, entry in due])
        for sid, entry in due:
            result = results[sid]
            if isinstance(result, sdk.Error) and is_not_found(result):
                # gone already, or a proxy's 404: the next check tells
                log.debug('VM %s: removal of snapshot %s answered: %s',
                          entry.backup.name, sid, one_line(result))
                entry.state = RemovalState.MERGING
                entry.attempts += 1
                entry.error = one_line(result)
                self.watch.retry.add(entry.backup.vm_id)
            elif isinstance(result, sdk.Error):
                entry.error = one_line(result)
                log.debug('VM %s: removal of snapshot %s refused: %s',
                          entry.backup.name, sid, entry.error)
            else:
                entry.state = RemovalState.MERGING
                entry.attempts += 1
        if self.checker is None:
            self.checker = threading.Thread(target=self._check_meanwhile,
                                            name='removal-checks', daemon=True)
            self.checker.start()

    def _check_meanwhile(self):
        """Check, paced as wait() does, until no merge is awaited, or
        wait() takes over."""
        pace = Polls(self.settings, sleep=self.quit.wait, since=self.sent)
        try:
            for _ in pace:
                if self.quit.is_set():
                    return
                if self.check():
                    pace.hurry()
                if all(entry.state is not RemovalState.MERGING
                       for entry in self.entries.values()):
                    return
        except Exception as error:      # wait() checks again, in its thread
            log.debug('the removal checks meanwhile stopped: %s', one_line(error))

    def check(self):
        """Look at the snapshots being merged that the feed names (or all of
        them, see Watch): forget those gone, mark for sending again those
        whose merge failed. Return True when the feed named some."""
        awaited = collections.Counter(
            entry.backup.vm_id for entry in self.entries.values()
            if entry.state is RemovalState.MERGING)
        if not awaited:
            return False
        with self.lock:
            return self._check(awaited)

    def _check(self, awaited):
        look = self.watch.to_look_at(awaited)
        vms = fetch_vms(self.engine, sorted(look), self.plan,
                        'snapshots') if look else {}
        self.watch.retry.clear()
        for sid, entry in list(self.entries.items()):
            vm = vms.get(entry.backup.vm_id)
            if entry.state is not RemovalState.MERGING or vm is None:
                continue
            if isinstance(vm, sdk.Error):
                if is_not_found(vm):
                    del self.entries[sid]
                else:
                    self.watch.retry.add(entry.backup.vm_id)
                continue
            snapshot = find_snapshot(vm, sid)
            if snapshot is None:
                log.debug('VM %s: snapshot %s removed', entry.backup.name, sid)
                del self.entries[sid]
            elif snapshot.snapshot_status == types.SnapshotStatus.OK:
                if entry.attempts < REMOVE_ATTEMPTS:
                    log.warning('VM %s: the merge of snapshot %s failed; '
                                'removing it again', entry.backup.name, sid)
                    entry.state = RemovalState.TO_SEND
                else:
                    entry.error = 'its merge failed %d times' % entry.attempts
                    entry.state = RemovalState.GIVEN_UP
        return self.watch.busy

    def pending(self):
        return [entry for entry in self.entries.values()
                if entry.state is not RemovalState.GIVEN_UP]

    def wait(self):
        """Wait until every snapshot is gone, sending removals again where
        due, or until the deadline (when every VM is looked at once more);
        return the (VmBackup, snapshot id) pairs left."""
        if self.deadline is None:
            self.send()
        self.quit.set()
        if self.checker is not None:
            self.checker.join()
        # the merges went on while the slave was cleaned: the first check
        # is due FIRST_POLL after the removals were sent
        pace = Polls(self.settings, since=self.sent)
        for _ in pace:
            final = time.monotonic() > self.deadline
            if self.check():
                pace.hurry()
            if not self.pending() or final:
                break
            self.send()
        left = []
        for sid, entry in self.entries.items():
            reason = entry.error or ('not gone after %s minutes '
                                     '([snapshot] wait_timeout)' % format_minutes(
                                         self.settings.wait_timeout))
            log.error('VM %s: snapshot %s could not be removed: %s',
                      entry.backup.name, sid, reason)
            left.append((entry.backup, sid))
        return left


# ==== Step 9: the event ======================================================

def event_description(mastervol, failures, minutes, notes=()):
    """Given the volume, the run's failures, its minutes and notes (lines a
    good run adds, e.g. what was verified), return (True for an alert, the
    event's text, cut to EVENT_DESCRIPTION_LIMIT characters)."""
    if failures:
        description = '%s: %s' % (EVENT_FAILED.format(volume=mastervol),
                                  '; '.join(failures))
    else:
        description = EVENT_SUCCEEDED.format(volume=mastervol,
                                             minutes='%g' % round(minutes, 1))
    if notes:
        description += '; ' + '; '.join(notes)
    if len(description) > EVENT_DESCRIPTION_LIMIT:
        description = description[:EVENT_DESCRIPTION_LIMIT - 3] + '...'
    return bool(failures), description


def post_event(run, engine):
    """Post the run's outcome to the engine as an event; return True when
    the engine took it."""
    args, settings = run.args, run.settings
    notes = run.notes + ([run.verify_summary] if run.verify_summary else [])
    alert, description = event_description(args.mastervol, run.failures,
                                           run.minutes(), notes)
    severity = types.LogSeverity.ALERT if alert else types.LogSeverity.NORMAL
    system = engine.system
    cluster = None
    if settings.cluster:
        try:
            found = [c for c in system.clusters_service().list(
                search='name=%s' % settings.cluster) if c.name == settings.cluster]
        except sdk.Error as error:
            log.warning('could not look up cluster %s: %s; the event is '
                        'posted without it', settings.cluster, one_line(error))
            found = None
        if found:
            cluster = types.Cluster(id=found[0].id)
        elif found is not None:
            log.warning('cluster %r ([event] cluster) not found; the event is '
                        'posted without it', settings.cluster)
    chooser = random.SystemRandom()
    for attempt in range(EVENT_ATTEMPTS):
        event = types.Event(origin=EVENT_ORIGIN, severity=severity,
                            custom_id=chooser.randint(1, 2**31 - 1),
                            description=description, cluster=cluster)
        try:
            system.events_service().add(event)
        except sdk.Error as error:
            if is_conflict(error) and event_was_taken(system, event):
                # our own request, sent again by libcurl after its answer
                # was lost, was refused as a repeat: the event is there
                log.debug('event %d: the engine has it already',
                          event.custom_id)
            elif is_conflict(error) and attempt + 1 < EVENT_ATTEMPTS:
                log.debug('event refused (%s); trying another custom_id',
                          one_line(error))
                continue
            else:
                log.error('could not post the event to the engine: %s',
                          one_line(error))
                return False
        log.info('posted %s event: %s', severity.value, description)
        return True
    return False


def event_was_taken(system, event):
    """Given an event the engine refused as a repeat, return True when the
    engine holds it: among its latest events (newest first), one of ours
    with this custom_id."""
    try:
        latest = system.events_service().list(max=EVENT_LOOKBACK)
    except sdk.Error as error:
        log.debug('could not list the events: %s', one_line(error))
        return False
    return any(e.origin == event.origin and e.custom_id == event.custom_id
               for e in latest)


# ==== Step 10: the status file, metrics, ping; --status and --check ==========

def iso_utc(epoch):
    """Given Unix time or None, return it as 2026-12-03T01:30:02Z, or None."""
    if epoch is None:
        return None
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(epoch))


def local_time(epoch):
    """Given Unix time, return it in this node's time zone, for a person."""
    return time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(epoch))


def disk_outcome(disk):
    """Given a DiskRecord, return what became of its copy at the remote site:
    'verified' (confirmed, made restorable and verified), 'backed up'
    (confirmed and made restorable, verify did not run) or 'not backed up'."""
    if disk.problem or not (disk.confirmed and disk.chain_repaired) \
            or disk.overlay_dropped is False or disk.verified is False:
        return 'not backed up'
    return 'verified' if disk.verified else 'backed up'


def vm_outcome(backup):
    """Given a VmBackup, return 'backed up' (every disk of it backed up),
    'no snapshot' or 'not backed up'."""
    if not backup.snapshot_ready:
        return 'no snapshot'
    if backup.disks and all(disk_outcome(disk) != 'not backed up'
                            for disk in backup.disks):
        return 'backed up'
    return 'not backed up'


def snapshot_window(backups):
    """Given the VmBackups of a run, return its snapshot window, the time the
    VMs ran on overlays, as an OrderedDict: from the first snapshot seen ok
    to the first removal sent, in seconds, and the bytes the overlays held
    at the master when the merges were sent; None when no snapshot was
    ready or none was removed."""
    ready = [backup.snapshot_ready_at for backup in backups
             if backup.snapshot_ready_at is not None]
    sent = [backup.removal_sent_at for backup in backups
            if backup.removal_sent_at is not None]
    if not ready or not sent:
        return None
    sizes = [disk.overlay_bytes for backup in backups for disk in backup.disks
             if disk.overlay_bytes is not None]
    return collections.OrderedDict([
        ('first_snapshot_ok', iso_utc(min(ready))),
        ('first_removal_sent', iso_utc(min(sent))),
        ('seconds', round(max(0.0, min(sent) - min(ready)), 3)),
        ('overlay_bytes', sum(sizes) if sizes else None),
    ])


def status_path(settings, mastervol):
    return os.path.join(settings.status_dir, '%s.json' % mastervol)


def metrics_path(settings, mastervol):
    return os.path.join(settings.textfile_dir, 'vmbackup_%s.prom' % mastervol)


def status_document(run, previous, node):
    """Given a finished Run (ended_at and exit_status set), the previous
    status document of the volume (or None) and this node's name, return
    the new status document (README, "Monitoring"), carrying over the last
    success unless this run is one. The last success is the session's
    (MASTERVOL -> SLAVE::SLAVEVOL), and only a full run (no --vm, no
    --exclude) is one; `sessions` keeps the last run and the last success
    of each session of the volume, for --check SLAVE SLAVEVOL."""
    backups = run.plan.backups if run.plan is not None else []
    vms = []
    totals = collections.OrderedDict((key, 0) for key in (
        'vms', 'vms_backed_up', 'disks', 'disks_backed_up', 'disks_verified',
        'bytes_backed_up', 'bytes_verified', 'snapshots_left'))
    for backup in backups:
        disks = []
        for disk in backup.disks:
            outcome = disk_outcome(disk)
            totals['disks'] += 1
            if outcome != 'not backed up':
                totals['disks_backed_up'] += 1
                totals['bytes_backed_up'] += disk.size or 0
            if outcome == 'verified':
                totals['disks_verified'] += 1
                totals['bytes_verified'] += disk.size or 0
            disks.append(collections.OrderedDict([
                ('id', disk.disk_id), ('name', disk.name),
                ('storage_domain', disk.sd_id), ('base', disk.base_id),
                ('overlay', disk.overlay_id), ('size', disk.size),
                ('overlay_bytes', disk.overlay_bytes),
                ('confirmed', disk.confirmed),
                ('overlay_dropped', disk.overlay_dropped),
                ('chain_repaired', disk.chain_repaired),
                ('verified', disk.verified), ('problem', disk.problem),
                ('outcome', outcome)]))
        outcome = vm_outcome(backup)
        totals['vms'] += 1
        totals['vms_backed_up'] += outcome == 'backed up'
        totals['snapshots_left'] += bool(backup.snapshot_id
                                         and backup.snapshot_removed is False)
        vms.append(collections.OrderedDict([
            ('id', backup.vm_id), ('name', backup.name),
            ('snapshot', backup.snapshot_id),
            ('snapshot_ready', backup.snapshot_ready),
            ('consistency', backup.consistency),
            ('snapshot_removed', backup.snapshot_removed),
            ('outcome', outcome), ('disks', disks)]))
    succeeded = run.exit_status == EXIT_OK
    session = session_name(run.args.slave, run.args.slavevol)
    full = is_full_run(run.args)
    sessions = status_sessions(previous, session)
    if succeeded and full:
        last_success = collections.OrderedDict([
            ('started_at', run.started_at), ('ended_at', run.ended_at),
            ('ended', iso_utc(run.ended_at)),
            ('duration_seconds', round(run.ended_at - run.started_at, 3)),
            ('node', node)])
    else:
        last_success = sessions.get(session, {}).get('last_success')
    document = collections.OrderedDict([
        ('version', STATUS_VERSION),
        ('volume', run.mastervol),
        ('slave', run.args.slave), ('slave_volume', run.args.slavevol),
        ('node', node), ('pid', os.getpid()), ('vmbackup_version', VERSION),
        ('started_at', run.started_at), ('started', iso_utc(run.started_at)),
        ('ended_at', run.ended_at), ('ended', iso_utc(run.ended_at)),
        ('duration_seconds', round(run.ended_at - run.started_at, 3)),
        ('exit_status', run.exit_status),
        ('succeeded', succeeded),
        ('failures', list(run.failures)),
        ('steps', collections.OrderedDict(
            (name, round(seconds, 3))
            for name, seconds in run.step_seconds.items())),
        ('totals', totals),
        ('snapshot_window', snapshot_window(backups)),
        ('vms', vms),
        ('session', session),
        ('full_run', full),
        ('last_success', last_success),
        ('restore_points', restore_points_record(run, previous)),
    ])
    sessions[session] = session_entry(document)
    document['sessions'] = sessions
    return document


SESSION_RUN_KEYS = ('node', 'started_at', 'ended_at', 'duration_seconds',
                    'exit_status', 'failures', 'totals', 'full_run')


def session_entry(document):
    """Given a status document, return what `sessions` keeps of its run:
    {'last_run': its summary, 'last_success': ...}."""
    return collections.OrderedDict([
        ('last_run', collections.OrderedDict(
            (key, document.get(key)) for key in SESSION_RUN_KEYS)),
        ('last_success', document.get('last_success'))])


def document_session(document):
    """Given a status document, return the name of its run's session
    (vmbackup 2.1 wrote only slave and slave_volume), or None."""
    if isinstance(document.get('session'), str):
        return document['session']
    slave, slavevol = document.get('slave'), document.get('slave_volume')
    if isinstance(slave, str) and isinstance(slavevol, str):
        return session_name(slave, slavevol)
    return None


def status_sessions(previous, session):
    """Given the previous status document or None and this run's session,
    return {session name: session_entry} of its well-formed sessions (a 2.1
    document: its own, this run's when it names none)."""
    sessions = collections.OrderedDict()
    if not previous:
        return sessions
    known = previous.get('sessions')
    if not isinstance(known, dict):     # read_status checked the document
        sessions[document_session(previous) or session] = session_entry(previous)
        return sessions
    for name, entry in known.items():
        if isinstance(name, str) and session_view_problem(entry) is None:
            sessions[name] = entry
    return sessions


def session_view_problem(entry):
    """Given an entry of `sessions`, return None when it can be read as a
    status document, else what is wrong with it."""
    if not isinstance(entry, dict) or not isinstance(entry.get('last_run'), dict):
        return 'not an object with last_run'
    return check_document(dict(entry['last_run'], version=STATUS_VERSION,
                               last_success=entry.get('last_success')))


def session_view(document, session):
    """Given a status document of the volume and the session asked for
    (None: the volume's), return (the document to report: the volume's, or
    a view of the session's last run, None) or (None, why not)."""
    sessions = document.get('sessions')
    sessions = sessions if isinstance(sessions, dict) else {}
    if session is None:
        if len(sessions) > 1:
            return None, ('volume %s has %d geo-replication sessions (%s): '
                          'name one: --check %s SLAVE SLAVEVOL' % (
                              document.get('volume'), len(sessions),
                              ', '.join(sorted(sessions)),
                              document.get('volume')))
        return document, None
    if document_session(document) == session:
        return document, None
    entry = sessions.get(session)
    if entry is None:
        return None, ('no run of %s -> %s is recorded (known: %s)' % (
            document.get('volume'), session,
            ', '.join(sorted(sessions)) or document_session(document)))
    problem = session_view_problem(entry)
    if problem:
        return None, 'the record of session %s: %s' % (session, problem)
    view = collections.OrderedDict(entry['last_run'])
    view.update(volume=document.get('volume'), session=session, vms=[],
                steps={}, last_success=entry.get('last_success'))
    return view, None


def restore_points_record(run, previous):
    """Given a finished Run and the previous status document (or None),
    return what the status file says of the restore points: None with
    [restore_points] keep = 0; else this run's listing, or the previous
    run's carried over (this run took none and deleted none), or one that
    knows none (count None)."""
    keep = run.settings.restore_keep
    if not keep:
        return None
    found = run.restore_points
    if found is None:
        record = (previous or {}).get('restore_points')
        if isinstance(record, dict) and record.get('volume') == run.args.slavevol:
            record = collections.OrderedDict(record)
            record.update(keep=keep, taken=None, deleted=[])
            return record
        found = RestorePoints(host=restore_point_host(run.args, run.settings),
                              volume=run.args.slavevol)
    newest = found.kept[0] if found.kept else None
    return collections.OrderedDict([
        ('keep', keep), ('host', found.host), ('volume', found.volume),
        ('count', len(found.kept) if found.listed_at else None),
        ('newest', newest.name if newest else None),
        ('newest_created_at', newest.created_at if newest else None),
        ('newest_created', iso_utc(newest.created_at) if newest else None),
        ('names', [snapshot.name for snapshot in found.kept]),
        ('taken', found.taken), ('deleted', list(found.deleted)),
        ('listed_at', found.listed_at)])


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def check_document(document):
    """Given what a status file held (parsed JSON), return None when it is
    a status document this version can read, else what is wrong with it."""
    if not isinstance(document, dict):
        return 'not a JSON object'
    version = document.get('version')
    if not isinstance(version, int) or isinstance(version, bool):
        return 'no version'
    if version > STATUS_VERSION:
        return ('version %d, written by a newer vmbackup (this one reads up '
                'to %d)' % (version, STATUS_VERSION))
    return (run_fields_problem(document) or tables_problem(document)
            or last_success_problem(document.get('last_success'))
            or restore_points_problem(document.get('restore_points')))


def run_fields_problem(document):
    """Given a status document, return what is wrong with its run's times,
    exit status and failures, or None."""
    for key in ('started_at', 'ended_at'):
        if not is_time(document.get(key)):
            return '%s is not a time' % key
    if not is_number(document.get('duration_seconds')) \
            or document['duration_seconds'] < 0:
        return 'duration_seconds is not a number of seconds'
    status = document.get('exit_status')
    if not isinstance(status, int) or isinstance(status, bool):
        return 'exit_status is not a whole number'
    if not isinstance(document.get('failures'), list):
        return 'failures is not a list'
    return None


def tables_problem(document):
    """Given a status document, return what is wrong with its totals, steps
    and vms, or None."""
    totals = document.get('totals', {})
    steps = document.get('steps', {})
    vms = document.get('vms', [])
    if not isinstance(totals, dict) or not isinstance(vms, list) \
            or not isinstance(steps, dict):
        return 'totals, vms or steps of the wrong type'
    for name, table in (('totals', totals), ('steps', steps)):
        for key, value in table.items():
            if not is_number(value) or value < 0:
                return '%s.%s is %s, not a number' % (name, key,
                                                      json.dumps(value))
    for vm in vms:
        if not isinstance(vm, dict) or not isinstance(vm.get('disks', []), list) \
                or not all(isinstance(disk, dict) for disk in vm.get('disks', [])):
            return 'a VM of vms is not an object with a list of disks'
    return None


def last_success_problem(last):
    """Given a status document's last_success, return what is wrong with
    it, or None."""
    if last is not None and not (isinstance(last, dict)
                                 and is_time(last.get('ended_at'))):
        return 'last_success has no ended_at time'
    return None


def restore_points_problem(points):
    """Given a status document's restore_points, return what is wrong with
    them, or None."""
    if points is None:
        return None
    if not isinstance(points, dict):
        return 'restore_points is not an object'
    for key in ('newest_created_at', 'count'):
        if points.get(key) is not None and not is_number(points[key]):
            return 'restore_points %s is not a number' % key
    return None


def is_time(value):
    """Tell whether value is a Unix time that the clock can show."""
    return is_number(value) and 0 <= value < LATEST_TIME


def read_status(path):
    """Given a status file's path, return (its document, None), or (None,
    why it can't be used; None when there is no such file)."""
    try:
        with open(path, encoding='utf-8') as status_file:
            document = json.load(status_file)
    except FileNotFoundError:
        return None, None
    except OSError as error:
        return None, 'cannot read %s: %s' % (path, error.strerror or error)
    except ValueError as error:     # also UnicodeDecodeError
        return None, '%s is not JSON: %s' % (path, one_line(error))
    problem = check_document(document)
    if problem:
        return None, '%s is not a vmbackup status file: %s' % (path, problem)
    return document, None


def write_atomically(path, text):
    """Given a path and its new text, write a temporary file beside it, fsync
    it and rename it over path: a reader sees the old file or the new one,
    never half of one. Raise OSError."""
    directory = os.path.dirname(path) or '.'
    handle, temporary = tempfile.mkstemp(
        dir=directory, prefix='.%s.' % os.path.basename(path), suffix='.tmp')
    try:
        with os.fdopen(handle, 'w', encoding='utf-8') as output:
            output.write(text)
            output.flush()
            os.fchmod(output.fileno(), 0o644)
            os.fsync(output.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):     # the rename itself, durable
        directory_handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_handle)
        finally:
            os.close(directory_handle)


def metric_labels(labels):
    """Given (name, value) pairs, return {name="value",...} escaped."""
    return '{%s}' % ','.join(
        '%s="%s"' % (name, str(value).replace('\\', '\\\\')
                     .replace('"', '\\"').replace('\n', '\\n'))
        for name, value in labels)


# name, help, and where its value is in the status document ('KEY',
# 'TABLE.KEY': 0 when absent, '#KEY': the length of the list); all gauges:
# each describes the last run and is replaced by the next one (a counter
# would have to be kept across runs and nodes)
METRICS = (
    ('last_run_timestamp_seconds', 'When the last run of vmbackup for the '
     'volume ended, in Unix time', 'ended_at'),
    ('last_success_timestamp_seconds', 'When the last successful run ended, '
     'in Unix time; 0 when none is known', 'last_success.ended_at'),
    ('last_run_duration_seconds', 'How long the last run took', 'duration_seconds'),
    ('last_run_exit_status', 'Exit status of the last run: 0 backed up, 1 '
     'failed', 'exit_status'),
    ('last_run_failures', 'Problems the last run reported', '#failures'),
    ('last_run_vms', 'VMs the last run chose to back up', 'totals.vms'),
    ('last_run_vms_backed_up', 'VMs whose every disk the last run backed up',
     'totals.vms_backed_up'),
    ('last_run_disks', 'Disks the last run chose to back up', 'totals.disks'),
    ('last_run_disks_backed_up', 'Disks confirmed at the remote site and made '
     'restorable by the last run', 'totals.disks_backed_up'),
    ('last_run_disks_verified', 'Disks backed up and verified by the last '
     'run', 'totals.disks_verified'),
    ('last_run_backed_up_bytes', 'Size of the base volumes the last run '
     'backed up', 'totals.bytes_backed_up'),
    ('last_run_verified_bytes', 'Size of the base volumes the last run '
     'backed up and verified', 'totals.bytes_verified'),
    ('last_run_snapshots_left', 'Snapshots of the last run it could not '
     'remove', 'totals.snapshots_left'),
)


def metric_value(document, source):
    """Given a status document and where a metric's value is in it (see
    METRICS), return the value."""
    if source.startswith('#'):
        return len(document[source[1:]])
    table, dot, key = source.rpartition('.')
    if not dot:
        return document[key]
    return (document.get(table) or {}).get(key, 0)


def metrics_text(document):
    """Given a status document, return the Prometheus text exposition of its
    metrics for node_exporter's textfile collector, labelled by volume."""
    volume = (('volume', document['volume']),)
    lines = []

    def gauge(name, help_text, samples):
        lines.append('# HELP vmbackup_%s %s.' % (name, help_text))
        lines.append('# TYPE vmbackup_%s gauge' % name)
        for labels, value in samples:
            lines.append('vmbackup_%s%s %s' % (name, metric_labels(labels),
                                               repr(float(value))))

    for name, help_text, source in METRICS:
        gauge(name, help_text, [(volume, metric_value(document, source))])
    window = document.get('snapshot_window') or {}
    gauge('snapshot_window_seconds', 'How long the VMs of the last run ran '
          'on overlays: from its first snapshot ok to its first removal sent',
          [(volume, window['seconds'])] if is_number(window.get('seconds'))
          else [])
    gauge('overlay_bytes', "Bytes the last run's overlays held at the master "
          'when their merges were sent (what the guests wrote in the window)',
          [(volume, window['overlay_bytes'])]
          if is_number(window.get('overlay_bytes')) else [])
    gauge('last_run_step_duration_seconds', 'Time the last run spent in each '
          'step', [(volume + (('step', step),), seconds)
                   for step, seconds in document.get('steps', {}).items()])
    gauge('last_run_info', 'The node that made the last run, and its version '
          'of vmbackup', [(volume + (('node', document.get('node', '')),
                                     ('version', document.get(
                                         'vmbackup_version', ''))), 1)])
    points = document.get('restore_points')
    if points is not None:        # none with [restore_points] keep = 0
        gauge('restore_point_timestamp_seconds', 'When the newest restore '
              'point (gluster snapshot of the slave volume) was taken, in '
              'Unix time; 0 when none is known',
              [(volume, points.get('newest_created_at') or 0)])
        gauge('restore_points', 'Restore points of ours kept of the slave '
              'volume', [(volume, points.get('count') or 0)])
    return '\n'.join(lines) + '\n'


def count_phrase(count, singular, plural=None):
    return '%d %s' % (count, singular if count == 1 else (plural or singular + 's'))


def human_duration(seconds):
    """Given seconds, return them for a person: 42 s, 12.5 minutes, 3.2 hours,
    2.1 days."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return '%.0f s' % seconds
    if seconds < 90 * 60:
        return '%.1f minutes' % (seconds / 60)
    if seconds < 48 * 3600:
        return '%.1f hours' % (seconds / 3600)
    return '%.1f days' % (seconds / 86400)


def outcome_counts(items, outcome):
    """Given items and a function naming an item's outcome, return
    "2 backed up, 1 no snapshot" in the order first seen."""
    counts = collections.OrderedDict()
    for item in items:
        name = outcome(item)
        counts[name] = counts.get(name, 0) + 1
    return ', '.join('%d %s' % (count, name) for name, count in counts.items())


def summary_lines(document, where):
    """Given a status document and where it was written (or why not), return
    the lines of the summary logged at the end of a run."""
    totals = document['totals']
    verdict = 'succeeded' if document['succeeded'] else 'FAILED'
    lines = ['summary: backup of volume %s on %s %s in %s (exit status %d)' % (
        document['volume'], document['node'], verdict,
        human_duration(document['duration_seconds']),
        document['exit_status'])]
    vms = document['vms']
    lines.append('summary: %s: %s' % (
        count_phrase(totals['vms'], 'VM'),
        outcome_counts(vms, lambda vm: vm['outcome']) or 'none chosen'))
    disks = [disk for vm in vms for disk in vm['disks']]
    lines.append('summary: %s: %s; %s backed up' % (
        count_phrase(totals['disks'], 'disk'),
        outcome_counts(disks, lambda disk: disk['outcome']) or 'none',
        format_bytes(totals['bytes_backed_up'])))
    for vm in vms:
        if vm['outcome'] != 'backed up':
            lines.append('summary: VM %s: %s%s' % (
                vm['name'], vm['outcome'], ''.join(
                    '; disk %s: %s' % (disk['name'] or disk['id'],
                                       disk['problem'] or disk['outcome'])
                    for disk in vm['disks']
                    if disk['outcome'] == 'not backed up')))
    if totals['snapshots_left']:
        lines.append('summary: %s of this run left behind' % count_phrase(
            totals['snapshots_left'], 'snapshot'))
    window = document.get('snapshot_window')
    if window:
        lines.append('summary: snapshot window %s (first snapshot ok to first '
                     'removal sent); the overlays held %s when the merges '
                     'were sent' % (
                         human_duration(window['seconds']),
                         'unknown bytes' if window['overlay_bytes'] is None
                         else format_bytes(window['overlay_bytes'])))
    if document['steps']:
        lines.append('summary: time per step: %s' % ', '.join(
            '%s %s' % (step, human_duration(seconds))
            for step, seconds in document['steps'].items()))
    lines.append('summary: status: %s' % where)
    return lines


def format_bytes(count):
    for unit in ('bytes', 'KiB', 'MiB', 'GiB', 'TiB'):
        if count < 1024 or unit == 'TiB':
            return ('%d %s' if unit == 'bytes' else '%.1f %s') % (count, unit)
        count /= 1024.0


def ping_paragraph(document, where):
    """Given a status document and where it was written (or why not), return
    the one-paragraph summary sent with the ping."""
    totals = document['totals']
    text = ('vmbackup %s on %s: backup of volume %s to %s::%s %s in %s, exit '
            'status %d. %d of %d VMs and %d of %d disks backed up (%d '
            'verified, %s).' % (
                document['vmbackup_version'], document['node'],
                document['volume'], document['slave'],
                document['slave_volume'],
                'succeeded' if document['succeeded'] else 'failed',
                human_duration(document['duration_seconds']),
                document['exit_status'], totals['vms_backed_up'],
                totals['vms'], totals['disks_backed_up'], totals['disks'],
                totals['disks_verified'],
                format_bytes(totals['bytes_backed_up'])))
    if document['failures']:
        text += ' Failures: %s.' % '; '.join(document['failures'])
    text += ' Status: %s.' % where
    return text


def ping_target(ping_url, kind):
    """Given [status] ping_url and 'start', 'success' or 'fail', return the
    URL to POST to (Healthchecks: URL/start, URL, URL/fail)."""
    url = urllib.parse.urlsplit(ping_url)
    suffix = {'start': '/start', 'success': '', 'fail': '/fail'}[kind]
    path = url.path.rstrip('/') + suffix if suffix else url.path
    return urllib.parse.urlunsplit((url.scheme, url.netloc, path or '/',
                                    url.query, ''))


def ping_host(ping_url):
    """Given [status] ping_url, return what may be logged of it: scheme and
    host (the path may hold the check's secret UUID)."""
    url = urllib.parse.urlsplit(ping_url)
    return '%s://%s' % (url.scheme, url.hostname or '?')


def ping(settings, kind, text=''):
    """Given the settings, 'start', 'success' or 'fail' and the summary,
    POST it to [status] ping_url once, waiting at most ping_timeout; return
    True when it was taken. A failure is one warning."""
    if not settings.ping_url:
        return None
    target = ping_target(settings.ping_url, kind)
    host = ping_host(settings.ping_url)
    body = text.encode('utf-8')[:PING_BODY_LIMIT]
    request = urllib.request.Request(
        target, data=body, method='POST',
        headers={'Content-Type': 'text/plain; charset=utf-8',
                 'User-Agent': 'vmbackup/%s' % VERSION})

    def send():
        with urllib.request.urlopen(request, timeout=settings.ping_timeout) \
                as answer:
            answer.read(1024)
            return answer.status

    try:
        # the socket's timeout bounds each wait, the deadline all of them
        status = with_deadline(send, settings.ping_timeout, 'pinging')
    except (OSError, ValueError, http.client.HTTPException, Timeout) as error:
        if isinstance(error, (Timeout, socket.timeout)) or isinstance(
                getattr(error, 'reason', None), socket.timeout):
            reason = ('no answer within %g seconds ([status] ping_timeout)'
                      % settings.ping_timeout)
        else:
            reason = one_line(error).replace(target, host).replace(
                settings.ping_url, host)
        log.warning('monitoring ping (%s) to %s failed: %s', kind, host, reason)
        return False
    log.debug('monitoring ping (%s) to %s: HTTP %s', kind, host, status)
    return True


def record_run(run, node=None):
    """Given a finished Run (exit_status and ended_at set), write the status
    file, the metrics and the finishing ping, and log the summary. Their
    failures are logged (an unwritten status file as an error, so cron
    mails it), never raised: they don't change the exit status."""
    settings = run.settings
    node = node or os.uname().nodename
    path = status_path(settings, run.mastervol)
    try:
        previous, problem = bounded(lambda: read_status(path),
                                    settings.storage_timeout, path)
    except Hung as error:
        previous, problem = None, str(error)
    if problem:
        log.warning('previous status: %s; the time of the last success is '
                    'lost', problem)
    document = status_document(run, previous, node)
    where = 'written to %s' % path
    problem = write_or_remove(path, json.dumps(document, indent=1) + '\n',
                              settings.storage_timeout)
    if problem:
        where = 'NOT written: %s' % problem
        log.error('the status file of volume %s was not written: %s',
                  run.mastervol, problem)
    if settings.textfile_dir:
        target = metrics_path(settings, run.mastervol)
        problem = write_or_remove(target, metrics_text(document),
                                  settings.storage_timeout)
        if problem:
            log.error('the metrics of volume %s were not written: %s',
                      run.mastervol, problem)
    for line in summary_lines(document, where):
        log.info('%s', line)
    ping(settings, 'success' if document['succeeded'] else 'fail',
         ping_paragraph(document, where))
    return document


def write_or_remove(path, text, seconds):
    """Given a status or metrics file's path, its new text and
    [lock] storage_timeout, write it atomically; return None, or what went
    wrong after removing the old file (an unlink needs no free space), so
    that monitoring cannot go on showing a success that is over."""
    try:
        bounded(lambda: write_atomically(path, text), seconds, path)
        return None
    except (OSError, Hung) as error:
        problem = '%s: %s' % (path, error.strerror) if isinstance(
            error, OSError) and error.strerror else str(error)
    try:
        bounded(lambda: os.unlink(path), seconds, path)
    except FileNotFoundError:
        pass
    except (OSError, Hung) as error:
        return '%s; the old one is still there (%s)' % (
            problem, error.strerror if isinstance(error, OSError) else error)
    return '%s; the old one was removed' % problem


def make_status_directories(settings):
    """At the start of a run, make [status] dir and textfile_dir (0755,
    with their parents) when they are missing; a failure is an error line,
    and the run goes on (its status will say it was not written)."""
    for directory in (settings.status_dir, settings.textfile_dir):
        if directory is None:
            continue
        try:
            bounded(lambda: make_public_directory(directory),
                    settings.storage_timeout, directory)
        except (OSError, Hung) as error:
            log.error('cannot make the status directory %s: %s', directory,
                      error.strerror if isinstance(error, OSError)
                      and error.strerror else error)


def make_public_directory(path):
    """Make path and its missing parents, 0755 whatever the umask (node
    exporter and --check may run as other users); leave one that is there
    as it is."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o755, exist_ok=True)
        os.chmod(path, 0o755)


@contextlib.contextmanager
def monitored(run):
    """Given a Run past the config, with the lock held: ping the start; on
    every way out of the block, record the run (status file, metrics,
    finishing ping, summary). An exception that escapes the block ended
    the run (run.ended_by; a failure of it, unless told already), and is
    raised again."""
    make_status_directories(run.settings)
    ping(run.settings, 'start', 'vmbackup %s on %s: backup of volume %s '
         'started' % (VERSION, os.uname().nodename, run.mastervol))
    try:
        yield run
    except BaseException as error:
        run.ended_by = error
        # Failed: told already (the engine unreachable); LockHeld: a live
        # run elsewhere may own the volume, its status is not ours to write
        if not isinstance(error, (Failed, LockHeld)):
            run.failures.append('the run ended unexpectedly: %s' % (
                one_line(error) if not isinstance(error, Interrupted)
                else 'interrupted by %s' % error))
        raise
    finally:
        if run.ended_at is None:
            run.ended_at = time.time()
        if not isinstance(run.ended_by, LockHeld):
            record_run(run)


def check_state(document, problem, now, warning_hours, critical_hours):
    """Given the status document (or None and why), the time now and the
    --warning and --critical hours, return (Nagios state, the text after
    'VMBACKUP STATE - ', the performance data)."""
    if document is None:
        return CHECK_UNKNOWN, problem, ''
    last = document.get('last_success')
    for what, when, node in (
            ('the last run ended', document['ended_at'], document.get('node')),
            ('the last success ended', (last or {}).get('ended_at'),
             (last or {}).get('node'))):
        if when is not None and when > now + CLOCK_SKEW:
            # a negative age would say OK for ever: the clock of the node
            # that wrote it, or this one's, is wrong
            return CHECK_UNKNOWN, (
                '%s at %s, %s in the future: check the clocks of %s and of '
                'this node' % (what, iso_utc(when), human_duration(when - now),
                               node or 'the node that wrote it')), ''
    age = now - last['ended_at'] if last else None
    totals = document.get('totals', {})
    perfdata = ' '.join([
        'age=%s;%d;%d;0' % ('%ds' % max(0, age) if age is not None else 'U',
                            warning_hours * 3600, critical_hours * 3600),
        'duration=%.0fs;;;0' % document['duration_seconds'],
        'vms=%d;;;0' % totals.get('vms', 0),
        'disks=%d;;;0' % totals.get('disks', 0),
        'failures=%d;;;0' % len(document['failures'])])
    since = ('last success %s ago' % human_duration(age) if age is not None
             else 'no successful run known')
    ran = 'last run %s ago on %s' % (human_duration(now - document['ended_at']),
                                     document.get('node', '?'))
    if document['exit_status'] != EXIT_OK:
        failures = document['failures']
        first = failures[0] if failures else 'exit status %d' % (
            document['exit_status'])
        more = ' (and %d more)' % (len(failures) - 1) if len(failures) > 1 else ''
        return (CHECK_CRITICAL, '%s FAILED: %s%s; %s' % (ran, first, more, since),
                perfdata)
    if age is None or age > critical_hours * 3600:
        return (CHECK_CRITICAL, '%s, older than %g hours; %s' % (
            since, critical_hours, ran), perfdata)
    if age > warning_hours * 3600:
        return (CHECK_WARNING, '%s, older than %g hours; %s' % (
            since, warning_hours, ran), perfdata)
    return (CHECK_OK, '%s: %d of %d VMs, %d of %d disks backed up in %s' % (
        since, totals.get('vms_backed_up', 0), totals.get('vms', 0),
        totals.get('disks_backed_up', 0), totals.get('disks', 0),
        human_duration(document['duration_seconds'])), perfdata)


def restore_point_state(points, keep, now, warning_hours, critical_hours):
    """Given the status document's restore_points (or None), [restore_points]
    keep, the time now and the --restore-point-warning and -critical hours,
    return (Nagios state, text, performance data); None when keep is 0
    (nothing to check)."""
    if not keep:
        return None
    count = points.get('count') if points else None
    created = points.get('newest_created_at') if points else None
    age = now - created if created is not None else None
    perfdata = 'restore_point_age=%s;%d;%d;0 restore_points=%s;;;0' % (
        '%ds' % max(0, age) if age is not None else 'U',
        warning_hours * 3600, critical_hours * 3600,
        count if count is not None else 'U')
    if count is None:
        return (CHECK_CRITICAL, 'no restore point known (the last run listed '
                'none)', perfdata)
    if age is None:
        return (CHECK_CRITICAL, 'no restore point of ours on %s' % (
            points.get('volume')), perfdata)
    text = 'newest restore point %s ago (%d kept)' % (human_duration(age),
                                                      count)
    if age > critical_hours * 3600:
        return CHECK_CRITICAL, '%s, older than %g hours' % (
            text, critical_hours), perfdata
    if age > warning_hours * 3600:
        return CHECK_WARNING, '%s, older than %g hours' % (
            text, warning_hours), perfdata
    return CHECK_OK, text, perfdata


def worse_state(first, second):
    """Given two Nagios states, return the one to report: CRITICAL over
    WARNING over UNKNOWN over OK."""
    order = (CHECK_OK, CHECK_UNKNOWN, CHECK_WARNING, CHECK_CRITICAL)
    return max(first, second, key=order.index)


def restore_point_lines(points, keep, now):
    """Given the status document's restore_points (or None), [restore_points]
    keep and the time now, return the lines --status prints of them."""
    if not keep:
        return ['  restore points: none ([restore_points] keep = 0): while a '
                'sync runs, and after a run that failed, the remote copy is '
                'inconsistent, and nothing older is kept at the remote site']
    if not points or points.get('count') is None:
        return ['  restore points: none known (keep = %d); the last run '
                'listed none' % keep]
    where = '%s::%s' % (points.get('host'), points.get('volume'))
    if not points.get('newest'):
        return ['  restore points: none of ours on %s (keep = %d)' % (where, keep)]
    lines = ['  restore points: %d kept on %s (keep = %d); newest %s, taken %s, '
             '%s ago' % (points['count'], where, keep, points['newest'],
                         local_time(points['newest_created_at']),
                         human_duration(now - points['newest_created_at']))]
    if points.get('taken'):
        lines.append('    taken by the last run: %s' % points['taken'])
    if points.get('deleted'):
        lines.append('    deleted by the last run: %s'
                     % ', '.join(points['deleted']))
    return lines


def check_line(state, text, perfdata):
    """Given check_state's answer, return the plugin's one output line."""
    line = 'VMBACKUP %s - %s' % (CHECK_STATES[state],
                                 ' '.join(text.split()).replace('|', '/'))
    return line + ('|' + perfdata if perfdata else '')


def status_report(document, path, now):
    """Given a status document, its path and the time now, return the lines
    --status prints for a person."""
    totals = document.get('totals', {})
    lines = status_heading(document, now)
    for failure in document['failures']:
        lines.append('  failed: %s' % failure)
    lines.append('  VMs: %d chosen, %d backed up; disks: %d chosen, %d backed '
                 'up, %d verified, %s' % (
                     totals.get('vms', 0), totals.get('vms_backed_up', 0),
                     totals.get('disks', 0), totals.get('disks_backed_up', 0),
                     totals.get('disks_verified', 0),
                     format_bytes(totals.get('bytes_backed_up', 0))))
    for vm in document.get('vms', []):
        lines.append(vm_report(vm))
        lines.extend(disk_report(disk) for disk in vm.get('disks', []))
    if document.get('steps'):
        lines.append('  time per step: %s' % ', '.join(
            '%s %s' % (step, human_duration(seconds))
            for step, seconds in document['steps'].items()))
    lines.append('  (from %s)' % path)
    return lines


def status_heading(document, now):
    """Given a status document and the time now, return the first lines of
    --status: the verdict, when and where the run ran, the last success."""
    lines = ['Volume %s%s: the last run %s (exit status %d).' % (
        document.get('volume', '?'),
        # the session, where the volume has more than one (or one was named)
        ' -> %s' % document['session'] if document.get('session')
        and len(document.get('sessions') or ()) != 1 else '',
        'succeeded' if document['exit_status'] == EXIT_OK else 'FAILED',
        document['exit_status'])]
    lines.append('  ran on %s from %s to %s (%s), %s ago' % (
        document.get('node', '?'), local_time(document['started_at']),
        local_time(document['ended_at']),
        human_duration(document['duration_seconds']),
        human_duration(now - document['ended_at'])))
    last = document.get('last_success')
    if last:
        lines.append('  last success: %s on %s, %s ago' % (
            local_time(last['ended_at']), last.get('node', '?'),
            human_duration(now - last['ended_at'])))
    else:
        lines.append('  last success: none known')
    return lines


def vm_report(vm):
    """Given a VM of a status document, return its line of --status."""
    details = [vm.get('outcome', '?')]
    if vm.get('consistency'):
        details.append(vm['consistency'])
    if vm.get('snapshot_removed') is False:
        details.append('snapshot %s NOT removed' % vm.get('snapshot'))
    return '    VM %s: %s' % (vm.get('name'), ', '.join(details))


# what --status says of each step of a disk: (key, done, not done)
DISK_STEPS = (('confirmed', 'confirmed', 'not confirmed'),
              ('overlay_dropped', 'overlay dropped', 'overlay not dropped'),
              ('chain_repaired', 'chain repaired', 'chain not repaired'),
              ('verified', 'verified', 'verify failed'))


def disk_report(disk):
    """Given a disk of a status document, return its line of --status: its
    outcome, the steps done, then those that failed, and its problem."""
    done = [label for key, label, _ in DISK_STEPS if disk.get(key)]
    failed = [label for key, _, label in DISK_STEPS if disk.get(key) is False]
    return ('      disk %s: %s%s' % (
        disk.get('name') or disk.get('id'), disk.get('outcome', '?'),
        ' (%s)' % ', '.join(done + failed) if done or failed else '')
        + (': %s' % disk['problem'] if disk.get('problem') else ''))


def show_status(args, settings, now=None):
    """--status and --check: print the last result of MASTERVOL from its
    status file, touching nothing else; return the check's state (0 OK,
    1 WARNING, 2 CRITICAL, 3 UNKNOWN)."""
    now = time.time() if now is None else now
    path = status_path(settings, args.mastervol)
    try:
        document, problem = bounded(lambda: read_status(path),
                                    settings.storage_timeout, path)
    except Hung as error:
        document, problem = None, str(error)
    if document is None and problem is None:
        problem = ('no status file %s: no run of volume %s has finished '
                   'where [status] dir points' % (path, args.mastervol))
    elif document is not None and document.get('volume') != args.mastervol:
        document, problem = None, ('%s is the status of volume %r, not %s' % (
            path, document.get('volume'), args.mastervol))
    if document is not None:
        document, problem = session_view(document, session_name(
            args.slave, args.slavevol) if args.slave else None)
    state, text, perfdata = check_state(document, problem, now, args.warning,
                                        args.critical)
    points = document.get('restore_points') if document else None
    restore = restore_point_state(points, settings.restore_keep, now,
                                  args.restore_point_warning,
                                  args.restore_point_critical)
    if document is not None and restore is not None:
        state = worse_state(state, restore[0])
        text = '%s; %s' % (text, restore[1])
        perfdata = '%s %s' % (perfdata, restore[2])
    if args.check or document is None or state == CHECK_UNKNOWN:
        print(check_line(state, text, perfdata))
    if args.status and document is not None:
        lines = status_report(document, path, now)
        lines[-1:-1] = restore_point_lines(points, settings.restore_keep, now)
        print('\n'.join(lines))
    return state


# ==== The run: back_up, the other modes, main ================================

@contextlib.contextmanager
def engine_session(run):
    """Steps 3 and 10: given the run, connect to the engine for the block
    and log out after it. Raise Failed (exit 1, nothing changed, no event:
    the engine can't take one) when the engine can't be reached."""
    engine = Engine(run.settings)
    try:
        with run.step('connect'):
            engine.connect()
    except sdk.Error as error:
        run.fail('%s', describe_engine_error(error, run.settings))
        log.error('backup of volume %s failed: nothing was changed',
                  run.mastervol)
        raise Failed() from None
    try:
        yield engine
    finally:
        engine.close()


@contextlib.contextmanager
def reported(run, engine):
    """Step 9 on every way out of the block: an error of any kind in it
    becomes a failure of the run (one line; the traceback only at debug
    level), then the event is posted. LockHeld goes through untouched:
    another run owns the volume, nothing was done."""
    try:
        yield
    except LockHeld:
        raise
    except Failed:
        pass
    except Interrupted as stop:
        run.fail('the backup was interrupted by %s', stop)
    except sdk.Error as error:
        run.fail('the engine answered with an error: %s', one_line(error))
        log.debug('where:\n%s', traceback.format_exc())
    except OSError as error:
        run.fail('%s%s', error.strerror or one_line(error),
                 ': %s' % error.filename if error.filename else '')
        log.debug('where:\n%s', traceback.format_exc())
    except Exception as error:   # a bug: still a reported failure, no traceback
        run.fail('unexpected error: %s: %s', type(error).__name__,
                 one_line(error))
        log.debug('where:\n%s', traceback.format_exc())
    if run.stop.requested and not any('interrupted by' in failure
                                      for failure in run.failures):
        run.fail('the backup was interrupted by %s', run.stop.signal_name)
    with run.step('report', cleanup=True):
        posted = post_event(run, engine)
    if not posted and not run.failures:
        # a failure after the event: the status file and the ping tell it
        run.fail('backup of volume %s done, but the engine did not take its '
                 'event', run.mastervol)


class Snapshots:
    """This run's snapshots, as step 5 made them: removing them (step 8) may
    start early, and is finished on the way out of taken_snapshots. The
    master's mount (or None) gives the overlays' sizes when the merges are
    sent."""

    def __init__(self, run, engine, master_root=None):
        self.run = run
        self.engine = engine
        self.master_root = master_root
        self.removal = None

    def mine(self):
        """Return the VmBackups that have a snapshot of this run (created,
        ready or not, or found after a lost answer)."""
        plan = self.run.plan
        return [backup for backup in plan.backups if backup.snapshot_id]

    def start_removal(self):
        """Send the removals now (the bases need not stay still any more)."""
        if self.removal is None:
            mine = self.mine()
            if self.master_root is not None and mine:
                measure_overlays(self.master_root, mine)
            self.removal = start_removal(self.run, self.engine, mine)
            for backup in mine:
                backup.removal_sent_at = (self.removal.sent_at if self.removal
                                          else None)


@contextlib.contextmanager
def taken_snapshots(run, engine, master_root=None):
    """Step 8 on every way out of the block: given the run with its Plan
    and the master's mount (or None), yield Snapshots (the block takes
    them, step 5); then remove every snapshot of this run, whatever
    happened, and wait until they are gone."""
    snapshots = Snapshots(run, engine, master_root)
    try:
        yield snapshots
    finally:
        with run.step('remove snapshots', cleanup=True):
            mine = snapshots.mine()
            snapshots.start_removal()
            left = remove_snapshots(run, engine, mine, snapshots.removal)
        for backup in mine:
            backup.snapshot_removed = all(backup is not other
                                          for other, _ in left)


def back_up(run):
    """Given the run, with the lock held, do steps 3 to 10; return the exit
    status."""
    with engine_session(run) as engine:                           # 3, 10
        if run.args.dry_run:
            return dry_run(run, engine)
        with reported(run, engine):                               # 9
            with run.step('check'):
                run.plan = check_and_choose(run, engine)          # 4
            with master_mounted(run) as master:                   # 5-7
                if run.settings.presync and run.plan.backups:
                    with run.step('presync'):
                        presync(run)                              # 5
                with taken_snapshots(run, engine, master) as snapshots:  # 8
                    with run.step('snapshot'):                    # 5
                        remove_stale_snapshots(run, engine)
                        record_bases(run, engine)
                        # the OVF store with no snapshot of ours in it
                        kept = write_ovf_stores(run, engine, master)
                        created = snapshot_vms(run, engine)
                    with run.step('replicate'):
                        with CheckpointWatch(run.args,
                                             run.settings) as watch:
                            replicated = replicate(
                                run, on_line=watch.nudge)         # 6
                    run.check_stop()
                    if replicated:
                        with run.step('remote copy'), confirmed_copy(
                                run, engine, created, master,
                                watch.evidence()
                        ) as (slave, confirmed):                  # 6
                            snapshots.start_removal()             # 8 begins
                            run.verify_summary = mend_copy(
                                run, created, slave, kept, confirmed)  # 7
                        with run.step('restore point'):           # 7
                            run.restore_points = take_restore_point(run)
                    else:
                        log.warning('the remote site is left as it is, '
                                    'since geo-replication did not complete')
    return finish(run)


def dry_run(run, engine):
    """--dry-run: step 4, then print what the rest would do; return the
    exit status (raise Failed when a check failed)."""
    with run.step('check'):
        run.plan = check_and_choose(run, engine)
    print_plan(run)
    return run.exit_status


def finish(run):
    """Given the run after step 9, log its last line; return its exit
    status."""
    run.ended_at = time.time()
    if run.exit_status == EXIT_OK:
        log.info('backup of volume %s to %s::%s done in %.1f minutes',
                 run.mastervol, run.args.slave, run.args.slavevol,
                 run.minutes())
    else:
        log.info('backup of volume %s failed after %.1f minutes: %d '
                 'problem%s (above)', run.mastervol, run.minutes(),
                 len(run.failures), '' if len(run.failures) == 1 else 's')
    return run.exit_status


def make_streams_safe():
    """Make stdout and stderr write any text in any locale: Python 3.6 in
    the C locale writes ASCII, and a VM named café would end --status with
    a UnicodeEncodeError. What the locale cannot encode becomes a backslash
    escape."""
    for name in ('stdout', 'stderr'):
        stream = getattr(sys, name)
        # 'surrogateescape' is what Python gives the C locale's ASCII: it
        # fails on an é as 'strict' does
        if stream is None or getattr(stream, 'errors', None) not in (
                'strict', 'surrogateescape'):
            continue
        if hasattr(stream, 'reconfigure'):          # Python 3.7 and later
            stream.reconfigure(errors='backslashreplace')
            continue
        with contextlib.suppress(AttributeError, ValueError, OSError,
                                 io.UnsupportedOperation):
            stream.flush()
            setattr(sys, name, open(
                stream.fileno(), 'w', encoding=stream.encoding,
                errors='backslashreplace', closefd=False,
                buffering=1 if stream.line_buffering else -1))


def main(argv=None):
    """Run vmbackup with the given arguments; return the exit status. When
    an access to storage is still blocked (a hung mount), end the process
    here: Python's own exit would wait for the files left open there."""
    status = run_command(argv)
    if storage_left_hung():
        exit_now(status)
    return status


def exit_now(status):
    """Flush what was said, then end the process at once with status,
    leaving the threads blocked on a hung mount behind."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(status)


def run_command(argv):
    """Run vmbackup with the given arguments; return the exit status."""
    make_streams_safe()
    bootstrap_logging()
    checking = '--check' in (sys.argv[1:] if argv is None else argv)
    try:
        args = parse_command_line(argv)
        settings = read_config(args.config, needs_engine=not (
            args.verify or args.read_only), storage_limit=(
                READ_ONLY_STORAGE_TIMEOUT if args.read_only else None))
        configure_logging(settings, args)
        if not args.read_only:
            find_qemu_img(settings)
        if MISSING_SDK is not None and not (args.read_only or args.verify):
            raise UsageError(
                'the oVirt engine SDK cannot be imported (%s): install '
                'python3-ovirt-engine-sdk4 (EL) or ovirt-engine-sdk-python '
                '(pip)' % MISSING_SDK)
    except (UsageError, StorageFailed) as error:
        # StorageFailed: the machine's, not a usage error
        log.error('%s', error)
        if checking:
            # a Nagios plugin says UNKNOWN, not 2 (CRITICAL), for bad usage
            print(check_line(CHECK_UNKNOWN, str(error), ''))
            return CHECK_UNKNOWN
        return exit_status_of([], error)
    if args.read_only:                    # no engine, no lock, no SDK
        return show_status(args, settings)
    stop = Stop()
    stop.install()
    run = Run(args, settings, stop)
    try:
        if args.verify:                   # no engine, no lock: changes nothing
            verify_only(run)
        elif args.dry_run:                # no lock: it changes nothing
            back_up(run)
        else:
            with take_lock(run), monitored(run):     # status, metrics, ping
                back_up(run)
    except Exception as error:
        run.ended_by = error
        tell_ending(run.mastervol, error)
    return run.exit_status


def tell_ending(mastervol, error):
    """Given the exception that ended a run early, say why in one line
    (exit_status_of says what it means for the exit status)."""
    if isinstance(error, LockHeld):
        # the same cron line on every node: the nodes that find the volume
        # taken say so quietly (-q: no cron mail)
        log.info('%s', error)
    elif isinstance(error, StorageFailed):        # the lock: nothing done
        log.error('backup of volume %s failed: %s; nothing done',
                  mastervol, error)
    elif isinstance(error, UsageError):
        log.error('%s', error)
    elif not isinstance(error, Failed):         # Failed: told already
        log.error('backup of volume %s failed: %s', mastervol,
                  one_line(error))
        log.debug('where:\n%s', traceback.format_exc())


if __name__ == '__main__':
    sys.exit(main())
