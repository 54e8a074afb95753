"""A fake oVirt engine that speaks the real REST API v4 over HTTPS.

The real ``ovirtsdk4`` talks to it unchanged: SSO login and logout, bearer
tokens, XML bodies written and read with the SDK's own model
(``ovirtsdk4.writer.Writer`` / ``ovirtsdk4.reader.Reader``), faults as
``<fault><reason/><detail/></fault>`` with an HTTP status.

What it reproduces (see DESIGN.md, "Facts about the real systems"):

- ``/vms`` searches (``status=up``, ``name=X*``, ``page N``) capped at 100
  results unless ``max`` is given; ``follow`` of disk attachments, disks and
  snapshots; links otherwise.
- Snapshots that are ``locked`` for ``snapshot_delay`` seconds after creation,
  then ``ok`` with a new overlay volume (file, ``.meta``, ``.lease``) per disk,
  laid out as vdsm does: ``<root>/<sd_id>/images/<disk_id>/<volume_id>``;
  the disk's ``image_id`` then names the overlay.
- Volumes as vdsm writes them. A ``.meta`` is vdsm's sorted ``KEY=value``
  lines ending ``EOF`` (vdsm ``lib/vdsm/storage/volumemetadata.py``
  ``VolumeMetadata.storage_format``, keys in ``constants.py``: CAP, CTIME,
  DESCRIPTION, DISKTYPE, DOMAIN, FORMAT, GEN, IMAGE, LEGALITY, PUUID, SEQ,
  TYPE, VOLTYPE). A base is raw (``FORMAT=RAW``, its size a multiple of 512,
  ``CAP`` = its size) or qcow2 (``format='cow'``, made by the real
  ``qemu-img convert``); an overlay is made by the real ``qemu-img create -f
  qcow2 -b <base id> -F <raw|qcow2>`` in the image directory (the bare UUID
  as backing file, as vdsm does), and the snapshot turns its parent's
  ``VOLTYPE`` to ``INTERNAL`` (vdsm finds the leaf by ``VOLTYPE``:
  ``image.py`` ``Image.getChain``).
- OVF stores as the engine writes them: per storage domain two disks with
  alias and content type ``OVF_STORE`` (``GET /storagedomains/{id}/disks``),
  each a raw volume (``DISKTYPE=OVFS``) holding a tar of ``info.json``, one
  ``<vm id>.ovf`` per VM with a disk on the domain, and ``metadata.json``;
  the ``.meta`` DESCRIPTION is the JSON ``{"Updated", "Size", "Last
  Updated", "Storage Domains", "Disk Description": "OVF_STORE"}``; a write
  first sets ``Updated`` false, writes the tar, then sets ``Updated`` true
  with the new ``Last Updated`` (Java's ``Date.toString()``) and ``Size``
  (ovirt-engine ``ProcessOvfUpdateForStorageDomainCommand``,
  ``OvfInfoFileConstants``, ``CreateOvfVolumeForStorageDomainCommand``; the
  OVF's ``References/File ovf:href="<disk>/<volume>"`` and ``Disk`` elements
  with ``ovf:vm_snapshot_id``, and ``SnapshotsSection_Type`` from
  ``OvfOvirtWriter``/``OvfVmWriter``). ``POST
  /storagedomains/{id}/updateovfstore`` answers at once, and ``ovf_delay``
  seconds later, as the engine's asynchronous command does, writes the store
  **only when the domain is outdated**: a store never written, or a VM with a
  disk there whose configuration generation changed since the domain's last
  write (ovirt-engine ``ProcessOvfUpdateForStoragePoolCommand``
  ``proccessDomainsForOvfUpdate`` and ``populateVmsMetadataForOvfUpdate``,
  which compares ``vm_static.db_generation`` with the generation written;
  a new VM, a snapshot's creation (``CreateSnapshotForVmCommand``
  ``incrementVmGeneration``) and its removal, merged or not
  (``RemoveSnapshotCommand.endVmCommand`` -> ``VmCommand.endVmCommand``)
  change it). A write ends with event 199 ``USER_UPDATE_OVF_STORE``
  (``ProcessOvfUpdateForStorageDomainCommand.getAuditLogTypeValue``, at
  END_SUCCESS, for a user); nothing to write, with event 1052
  ``OVF_STORES_UPDATE_IGNORED`` (``UpdateOvfStoreForStorageDomainCommand.
  performNextOperation``), and the store is left as it is. Both events carry
  the storage domain (each command's ``setStorageDomainId``, copied to the
  audit log by ``AuditLogable.createAuditLog``, shown as ``storage_domain``
  by the API's ``EventMapper``) and the request's correlation id; the
  request's job (``ActionType.UpdateOvfStoreForStorageDomain`` is
  monitored) finishes then. ``ovf_store_fails = 'error'``: the write fails
  after it set ``Updated`` false (event 190
  ``UPDATE_OVF_FOR_STORAGE_DOMAIN_FAILED``, the job failed); ``'stuck'``:
  the command never ends. ``write_ovf_stores()`` is the engine's hourly
  writer (``OvfUpdateIntervalInMinutes``: it runs as the system user, so no
  event), and ``rewrite_ovf_store_after_snapshot()`` makes it fire right
  after the next snapshot is made, i.e. in the middle of a backup. "Last
  Updated" is ``Date.toString()``: two writes in one second carry the same.
- Templates (``add_template``): an image of one volume, ``VOLTYPE=SHARED``,
  and its ``<template id>.ovf`` in the store (``TemplateId`` its own id,
  ``TemplateType``: ``OvfTemplateWriter``; the engine's import tells a
  template by ``<TemplateType>``, ``OvfUtils.getVmEntityType``). A VM made
  from one (``add_vm(template=...)``, thin): its image holds the template's
  volume, ``.meta`` and ``.lease`` hard-linked (vdsm ``Volume.create`` ->
  ``Volume.share`` -> ``FileVolumeManifest._share``) under a qcow2 volume of
  its own, the leaf; its OVF names its own volumes only, and its template
  in ``TemplateId``.
- Snapshot removal (live merge): 200 at once, ``locked`` for ``merge_delay``,
  then gone (404), the overlay files deleted and the disk's ``image_id`` the
  base's again. A failed merge leaves the snapshot ``ok``, files untouched.
- Events, refused on a repeated origin/custom_id pair; the engine's own
  events with their AuditLogType codes (snapshot creation initiated 45,
  finished 68, failed 69; the guest's filesystems not frozen 10764; removal
  initiated 342, finished 356, failed 357), the VM's id and the action's
  correlation id; ``GET /events`` newest first, with ``max`` and ``from``
  (only the events with a greater id).
- Jobs: one per snapshot creation or removal, ``started`` then ``finished``
  or ``failed``, found by ``GET /jobs?search=correlation_id=X`` (the
  ``correlation_id`` query parameter of the action).
- Feed faults on demand: ``events_from`` (``'refuse'``: 400 to ``from``,
  ``'ignore'``: answered as without it), ``job_search`` (``'refuse'``: 400),
  ``lose_events`` (an event the engine never logs), ``fail_freeze`` (the
  guest's filesystems not frozen: event 10764, the snapshot made all the
  same, as with LiveSnapshotAllowInconsistent), ``set_guest_agent`` (a VM
  whose guest agent reports nothing: no ``guest_operating_system``).
- Each VM's XML is kept and written again only when the VM changed, so that
  a benchmark measures the tool rather than the fake.
- Faults on demand (``fail``): an HTTP fault, a closed connection, a hang, an
  expired token, a lost answer, an HTML error page; a snapshot that stays
  locked (``stick_snapshot``), a live merge that fails (``fail_merge``).

Every request is logged in ``engine.requests`` (with ``fault``, the kind
injected, when a fault rule took it); accepted events are in
``engine.events``; a bug of the fake itself is answered 500 and its traceback
kept in ``engine.errors``.

Use::

    with FakeEngine(snapshot_delay=0.2, merge_delay=0.2) as engine:
        sd_id = engine.add_storage_domain('vmstore', tmp_path / 'master')
        engine.add_vm('vm1', disks=[dict(sd=sd_id)])
        connection = ovirtsdk4.Connection(
            url=engine.url, username='admin@internal', password='secret',
            ca_file=engine.ca_pem_path(tmp_path))

State changes with time by itself (a background thread, and lazily on every
request and every read through the Python API), all under one lock.
"""

import datetime
import http.server
import io
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
import xml.etree.ElementTree as ElementTree
from xml.sax.saxutils import escape as xml_escape

import ovirtsdk4.readers  # noqa: F401  (registers the model's readers)
import ovirtsdk4.types as types
import ovirtsdk4.writers  # noqa: F401  (registers the model's writers)
import trustme
from ovirtsdk4.reader import Reader
from ovirtsdk4.writer import Writer

API_PREFIX = '/ovirt-engine/api'
SSO_TOKEN_PATH = '/ovirt-engine/sso/oauth/token'
SSO_LOGOUT_PATH = '/ovirt-engine/services/sso-logout'
SEARCH_DEFAULT_MAX = 100
ACTIVE_SNAPSHOT_DESCRIPTION = 'Active VM'
NULL_UUID = '00000000-0000-0000-0000-000000000000'
FAULT_KINDS = ('fault', 'close', 'hang', 'expire', 'drop', 'html')
VM_STATUSES = frozenset(status.value for status in types.VmStatus)
TICK_SECONDS = 0.02
ADVANCE_BATCH = 10     # snapshots finished per hold of the lock (clock, request)
LEASE_SIZE = 512
OVERLAY_SIZE = 512
BASE_SIZE = 1024
SECTOR = 512
OVF_VOLUME_SIZE = 1 << 20     # the engine makes 128 MiB; sparse all the same
OVF_STORES_PER_DOMAIN = 2     # ConfigValues.StorageDomainOvfStoreCount
OVF_STORE_ALIAS = 'OVF_STORE'
OVF_NS = 'http://schemas.dmtf.org/ovf/envelope/1/'
XML_CONTENT_TYPE = 'application/xml'
# ovirt-engine's AuditLogType (backend/manager/modules/common/.../AuditLogType.java)
USER_CREATE_SNAPSHOT = 45
USER_CREATE_SNAPSHOT_FINISHED_SUCCESS = 68
USER_CREATE_SNAPSHOT_FINISHED_FAILURE = 69
USER_REMOVE_SNAPSHOT = 342
USER_REMOVE_SNAPSHOT_FINISHED_SUCCESS = 356
USER_REMOVE_SNAPSHOT_FINISHED_FAILURE = 357
FAILED_TO_FREEZE_VM = 10764
UPDATE_OVF_FOR_STORAGE_DOMAIN_FAILED = 190
USER_UPDATE_OVF_STORE = 199
OVF_STORES_UPDATE_IGNORED = 1052
FIRST_ENGINE_EVENT_ID = 10000
JSON_CONTENT_TYPE = 'application/json'


class Fault(Exception):
    """An API error answered as an XML fault with an HTTP status."""

    def __init__(self, status, reason, detail):
        super().__init__('%s %s: %s' % (status, reason, detail))
        self.status = status
        self.reason = reason
        self.detail = detail


def not_found(what):
    return Fault(404, 'Not Found', 'Entity not found: %s' % what)


def bad_request(detail):
    return Fault(400, 'Bad Request', detail)


def refused(detail):
    return Fault(409, 'Operation Failed', '[%s]' % detail)


class _Disk:
    def __init__(self, disk_id, name, sd_id, shareable, size, content_type='data',
                 base_format='raw'):
        self.id = disk_id
        self.name = name
        self.sd_id = sd_id
        self.shareable = shareable
        self.size = size          # the virtual size, bytes (a multiple of 512)
        self.content_type = content_type
        self.base_format = base_format   # 'raw' or 'cow'
        self.chain = []           # volume ids, base first, the leaf last
        self.locked_by = set()    # snapshot ids of operations in progress
        # a thin disk of a VM made from a template: (the template's disk id,
        # its volume id), the volume hard-linked under chain[0]; else None
        self.template = None

    @property
    def image_id(self):
        return self.chain[-1]


class _Snapshot:
    def __init__(self, snapshot_id, description, snapshot_type, status,
                 persist_memorystate=None, disk_ids=()):
        self.id = snapshot_id
        self.description = description
        self.type = snapshot_type
        self.status = status
        self.persist_memorystate = persist_memorystate
        self.disk_ids = list(disk_ids)
        self.volumes = {}         # disk id -> (base id, overlay id)
        self.date = datetime.datetime.now(datetime.timezone.utc)
        self.phase = None         # 'creating', 'removing' or None
        self.deadline = None      # monotonic time of the next change; None: never
        self.merge_fails = False


class _Template:
    def __init__(self, template_id, name):
        self.id = template_id
        self.name = name
        self.disk_ids = []        # each with one SHARED volume
        self.generation = 1       # vm_static.db_generation: 1 for a new template


class _Vm:
    def __init__(self, vm_id, name, status, cluster_id, template_id=NULL_UUID):
        self.id = vm_id
        self.name = name
        self.status = status
        self.cluster_id = cluster_id
        self.template_id = template_id   # the Blank template's id when none
        self.disk_ids = []
        self.snapshots = {}       # id -> _Snapshot, in creation order, active first
        self.stick_next = 0
        self.merge_failures = 0
        self.generation = 1       # vm_static.db_generation: 1 for a new VM


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address, handler, engine):
        self.engine = engine
        self.connections = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, handler)

    def finish_request(self, request, client_address):
        """Shake hands in the connection's own thread, then serve it."""
        with self.connections_lock:
            self.connections.add(request)
        try:
            try:
                # headers and body leave in separate writes: without this,
                # Nagle holds the body until the client's delayed ACK
                request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                request.settimeout(10)
                request.do_handshake()
                request.settimeout(None)
            except (ssl.SSLError, OSError):
                return
            self.RequestHandlerClass(request, client_address, self)
        finally:
            with self.connections_lock:
                self.connections.discard(request)

    def handle_error(self, request, client_address):
        pass  # clients that go away (timeouts, TLS refusals) are expected

    def close_connections(self):
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            try:
                socket.socket.shutdown(connection, socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'FakeOvirtEngine/4.5'
    sys_version = ''
    timeout = 120

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self._serve('GET')

    def do_POST(self):
        self._serve('POST')

    def do_PUT(self):
        self._serve('PUT')

    def do_DELETE(self):
        self._serve('DELETE')

    def _serve(self, method):
        engine = self.server.engine
        split = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length).decode('utf-8', 'replace') if length else ''
        full_path = urllib.parse.unquote(split.path)
        entry = {
            'method': method,
            'path': _logged_path(full_path),
            'query': urllib.parse.parse_qs(split.query, keep_blank_values=True),
            'body': body,
            'status': None,
        }
        token = _bearer_token(self.headers.get('Authorization'))
        rule = engine._arrive(entry)
        kind = rule['kind'] if rule else None
        if kind == 'close':
            self.close_connection = True
            return
        if kind == 'hang':
            if not engine._hang():
                self.close_connection = True
                return
            kind = None
        if kind == 'fault':
            answer = engine._injected_fault(full_path, rule['status'])
        elif kind == 'html':
            answer = _html_answer(rule['status'])
        elif kind == 'expire':
            answer = engine._expire(full_path, token)
        else:
            answer = engine._dispatch(method, full_path, entry['query'], body, token)
        status, content_type, payload, headers = answer
        with engine._lock:
            entry['status'] = status
        if kind == 'drop':
            self.close_connection = True
            return
        data = payload.encode('utf-8')
        self.send_response(status)
        if content_type:
            self.send_header('Content-Type', content_type)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _ovf_envelope(files, disks, content):
    """An OVF as the engine's OvfWriter lays it out: the envelope with its
    namespaces, the References (files), the networks and the disks'
    sections, then content (the <Content> of a VM or a template)."""
    return ('<?xml version="1.0" encoding="UTF-8"?>'
            '<ovf:Envelope xmlns:ovf="%s" '
            'xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
            'CIM_ResourceAllocationSettingData" '
            'xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/'
            'CIM_VirtualSystemSettingData" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" ovf:version="4.5.0.0">'
            '<References>%s</References>'
            '<Section xsi:type="ovf:NetworksSection_Type"><Info>List of networks</Info>'
            '</Section>'
            '<Section xsi:type="ovf:DiskSection_Type"><Info>List of Virtual Disks</Info>'
            '%s</Section>%s</ovf:Envelope>' % (OVF_NS, ''.join(files), ''.join(disks),
                                              content))


def _logged_path(full_path):
    """Given the URL path, return it as engine.requests shows it."""
    if full_path == API_PREFIX or full_path.startswith(API_PREFIX + '/'):
        path = full_path[len(API_PREFIX):].rstrip('/')
        return path or '/'
    return full_path


def _bearer_token(header):
    if header and header.lower().startswith('bearer '):
        return header[len('bearer '):].strip()
    return None


def _html_answer(status):
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = 'Error'
    page = '<html><head><title>%d %s</title></head><body><h1>%s</h1></body></html>' % (
        status, reason, reason)
    return status, 'text/html; charset=iso-8859-1', page, {}


def _xml_answer(status, text, headers=None):
    return status, XML_CONTENT_TYPE, text, headers or {}


def _json_answer(status, value):
    return status, JSON_CONTENT_TYPE, json.dumps(value), {}


def _fault_xml(reason, detail):
    return Writer.write(types.Fault(reason=reason, detail=detail))


def _href(*parts):
    return '/'.join((API_PREFIX,) + parts)


def _ref(cls, *parts, **attributes):
    """Given a model class and the parts of its path, return a link object."""
    obj = cls(id=parts[-1], **attributes)
    obj.href = _href(*parts)
    return obj


def _add_links(element, base, rels):
    for rel in rels:
        link = ElementTree.SubElement(element, 'link')
        link.set('href', '%s/%s' % (base, rel))
        link.set('rel', rel)


def _compile_wildcard(value):
    pattern = '.*'.join(re.escape(part) for part in value.split('*'))
    return re.compile(pattern + r'\Z', re.IGNORECASE)


def _parse_search(text, fields):
    """Given a search text and {field: check(value) -> predicate}, return (predicates, page).

    Raises Fault (400) for a term the fake does not understand.
    """
    predicates, page = [], None
    tokens = text.split()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.lower() == 'and':
            index += 1
            continue
        if token.lower() == 'page':
            number = tokens[index + 1] if index + 1 < len(tokens) else ''
            if not number.isdigit() or int(number) < 1:
                raise bad_request('Invalid search text "%s": page needs a positive number' % text)
            page = int(number)
            index += 2
            continue
        match = re.fullmatch(r'([A-Za-z_]+)(!=|=)(.+)', token)
        if not match or match.group(1).lower() not in fields:
            raise bad_request('Invalid search text "%s": cannot understand "%s"' % (text, token))
        predicate = fields[match.group(1).lower()](match.group(3), text)
        if match.group(2) == '!=':
            predicates.append(lambda obj, predicate=predicate: not predicate(obj))
        else:
            predicates.append(predicate)
        index += 1
    return predicates, page


def _name_term(value, text):
    pattern = _compile_wildcard(value)
    return lambda obj: pattern.match(obj.name) is not None


def _status_term(value, text):
    if value.lower() not in VM_STATUSES:
        raise bad_request('Invalid search text "%s": unknown status "%s"' % (text, value))
    return lambda obj: obj.status == value.lower()


def _parse_follow(query, allowed):
    follow = set()
    for value in query.get('follow', []):
        follow.update(part.strip() for part in value.split(',') if part.strip())
    unknown = follow - set(allowed)
    if unknown:
        raise bad_request('Cannot follow link(s): %s' % ', '.join(sorted(unknown)))
    return follow


def _parse_max(query):
    values = query.get('max')
    if not values:
        return None
    try:
        return int(values[-1])
    except ValueError:
        raise bad_request('Invalid value for parameter "max": %s' % values[-1]) from None


def _read_body(body, expected):
    """Given an XML body and a model class, return the object; Fault 400 otherwise."""
    try:
        obj = Reader.read(body)
    except Exception as error:  # the SDK's XML reader raises plain Exception
        raise bad_request('Cannot parse the request body: %s' % error) from None
    if not isinstance(obj, expected):
        raise bad_request('The request body is not a %s' % expected.__name__.lower())
    return obj


def _write_file(path, data):
    with open(path, 'wb') as stream:
        stream.write(data)


def _remove_file(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _put_meta(path, data):
    """Write a .meta as vdsm does: the whole file as <vol>.meta.new, then
    renamed over <vol>.meta (vdsm lib/vdsm/storage/fileVolume.py
    FileVolumeManifest._putMetadata, used for a new volume's metadata too:
    FileVolume.newMetadata). So at the master a .meta gets a new inode (a
    new gfid on gluster) on every metadata write."""
    with open(path + '.new', 'wb') as stream:
        stream.write(data)
    os.rename(path + '.new', path)


def _edit_meta(path, **changes):
    """Given a vdsm .meta file, rewrite the KEY=VALUE lines named in changes
    (as vdsm does: _put_meta)."""
    try:
        with open(path) as stream:
            lines = stream.read().splitlines()
    except FileNotFoundError:
        return
    for index, line in enumerate(lines):
        key = line.split('=', 1)[0]
        if key in changes:
            lines[index] = '%s=%s' % (key, changes[key])
    _put_meta(path, ('\n'.join(lines) + '\n').encode())


def _meta_value(path, key):
    """Given a .meta file, return the value of KEY, or None."""
    try:
        with open(path) as stream:
            for line in stream:
                if line.startswith(key + '='):
                    return line.rstrip('\n').split('=', 1)[1]
    except FileNotFoundError:
        pass
    return None


def _ovf_description(sd_id, updated, last_updated, size):
    """The DESCRIPTION JSON of an OVF_STORE volume, as ovirt-engine's
    ProcessOvfUpdateForStorageDomainCommand.generateOvfStoreDescription."""
    description = {'Updated': updated, 'Last Updated': last_updated,
                   'Storage Domains': [{'uuid': sd_id}],
                   'Disk Description': OVF_STORE_ALIAS}
    if size is not None:
        description['Size'] = size
    return json.dumps(description, separators=(',', ':'))


# (backing format, backing virtual size) -> (backing id, [(offset, bytes)], length):
# what qemu-img create made once, kept to be written again
_overlay_templates = {}
_overlay_templates_lock = threading.Lock()
TEMPLATE_BLOCK = 4096


def _virtual_size(path, volume_format):
    """Given a raw or qcow2 volume, return its virtual size in bytes."""
    if volume_format == 'raw':
        return os.path.getsize(path)
    with open(path, 'rb') as stream:
        header = stream.read(32)
    return int.from_bytes(header[24:32], 'big')


def _create_overlay(path, parent_id, parent_format):
    """Make at path a qcow2 overlay on parent_id (the bare UUID, in the same
    directory) as ``qemu-img create -f qcow2 -b <parent id> -F <format>``
    makes it: by the real qemu-img the first time for a backing format and
    virtual size, then byte for byte the same file with the backing id
    swapped (qemu-img writes no time or random bytes into a new qcow2, and
    the backing file name is the only thing that differs), so that 750
    overlays take milliseconds, not a qemu-img process each."""
    directory = os.path.dirname(path)
    key = (parent_format, _virtual_size(os.path.join(directory, parent_id), parent_format))
    with _overlay_templates_lock:
        template = _overlay_templates.get(key)
    if template is None:
        _qemu_img('create', '-q', '-f', 'qcow2', '-b', parent_id, '-F', parent_format,
                  os.path.basename(path), cwd=directory)
        with open(path, 'rb') as stream:
            data = stream.read()
        if data.count(parent_id.encode()) == 1:
            blocks = [(offset, data[offset:offset + TEMPLATE_BLOCK])
                      for offset in range(0, len(data), TEMPLATE_BLOCK)
                      if data[offset:offset + TEMPLATE_BLOCK].strip(b'\0')]
            with _overlay_templates_lock:
                _overlay_templates[key] = (parent_id.encode(), blocks, len(data))
        return
    old_id, blocks, length = template
    with open(path, 'wb') as stream:
        for offset, block in blocks:
            stream.seek(offset)
            stream.write(block.replace(old_id, parent_id.encode()))
        stream.truncate(length)


def _qemu_img(*args, cwd=None):
    """Run the real qemu-img; raise RuntimeError with its output on failure."""
    program = shutil.which('qemu-img')
    if program is None:
        raise RuntimeError('the fake engine needs qemu-img (apt-get install qemu-utils)')
    result = subprocess.run([program] + list(args), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError('qemu-img %s failed: %s' % (' '.join(args),
                                                        result.stdout.decode()))


class FakeEngine:
    """A fake oVirt engine on https://localhost:PORT/ovirt-engine/api."""

    def __init__(self, ca=None, user='admin@internal', password='secret',
                 snapshot_delay=0.3, merge_delay=0.3, host='127.0.0.1', port=0,
                 cert_names=('localhost', '127.0.0.1', '::1'), ovf_delay=0.3):
        self.ca = ca or trustme.CA()
        self.cert_names = tuple(cert_names)   # the names in the server certificate
        self.user = user
        self.password = password
        self.snapshot_delay = snapshot_delay
        self.merge_delay = merge_delay
        self.ovf_delay = ovf_delay     # seconds from updateovfstore to the write
        self.host = host
        self.port = port
        self.requests = []
        self.events = []
        # every overlay the engine made, kept after its merge: dicts of vm,
        # snapshot_id, description, disk_id, base, overlay
        self.overlays = []
        self.inline = True        # False: `follow` ignored; 'refuse': answered 400
        self.errors = []          # tracebacks of the fake's own bugs (answered 500)
        self.logged_out = 0
        # every OVF store write: dicts of sd, reason ('created', 'requested',
        # 'periodic'), last_updated, vms ({vm id: OVF text})
        self.ovf_writes = []
        self.ovf_store_fails = None    # 'error': the requested write fails; 'stuck': never ends
        self._ovf_due = []             # (monotonic time, sd id, job) of requested updates
        self._periodic_after_snapshot = 0
        self._lock = threading.RLock()
        self._tokens = set()
        self._rules = []
        self._release_event = threading.Event()
        self._stopping = threading.Event()
        self._storage_domains = {}   # id -> dict
        self._clusters = {}          # id -> name
        self._vms = {}               # id -> _Vm, creation order
        self._templates = {}         # id -> _Template, creation order
        self._disks = {}             # id -> _Disk
        self._event_keys = set()
        self._event_records = []     # the events with their id and time
        self._server = None
        self._threads = []
        self._init_feed()
        self.add_cluster('Default')

    # -- life cycle ----------------------------------------------------------

    def start(self):
        """Serve in daemon threads; return self."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert(*self.cert_names).configure_cert(context)
        self._server = _Server((self.host, self.port), _Handler, self)
        self._server.socket = context.wrap_socket(
            self._server.socket, server_side=True, do_handshake_on_connect=False)
        self.port = self._server.server_address[1]
        self._stopping.clear()
        self._release_event = threading.Event()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, args=(0.05,), name='fake-engine',
                             daemon=True),
            threading.Thread(target=self._tick, name='fake-engine-clock', daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self):
        """Stop serving: hanging requests end without an answer, connections close."""
        if self._server is None:
            return
        self._stopping.set()
        with self._lock:
            self._release_event.set()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        for thread in self._threads:
            thread.join(5)
        self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def url(self):
        return 'https://localhost:%d%s' % (self.port, API_PREFIX)

    def ca_pem_path(self, directory):
        """Write the CA certificate (PEM) into directory; return its path."""
        path = os.path.join(str(directory), 'fake-engine-ca.pem')
        self.ca.cert_pem.write_to_path(path)
        return path

    def _tick(self):
        while not self._stopping.wait(TICK_SECONDS):
            # a batch at a time, the lock let go in between: the engine
            # answers while it finishes hundreds of snapshots
            while not self._stopping.is_set():
                with self._lock:
                    if self._advance(ADVANCE_BATCH) < ADVANCE_BATCH:
                        break
                time.sleep(0)

    # -- building the world --------------------------------------------------

    def add_storage_domain(self, name, root_dir, type='glusterfs', address=None, path=None):
        """Add a data domain whose files live under root_dir/<sd_id>/images; return its id.

        Only <sd_id>/images/ is made (no dom_md/): the test builds the rest.
        """
        if type not in ('glusterfs', 'nfs'):
            raise ValueError('storage domain type must be glusterfs or nfs, not %r' % type)
        if address is None:
            address = 'gluster1.example.com' if type == 'glusterfs' else 'nfs1.example.com'
        if path is None:
            path = '/vmstore' if type == 'glusterfs' else '/exports/data'
        sd_id = str(uuid.uuid4())
        root_dir = os.path.abspath(str(root_dir))
        os.makedirs(os.path.join(root_dir, sd_id, 'images'), exist_ok=True)
        with self._lock:
            if any(sd['name'] == name for sd in self._storage_domains.values()):
                raise ValueError('storage domain %r exists' % name)
            # ovf_generations: {vm id: its generation in the domain's last write}
            self._storage_domains[sd_id] = dict(
                id=sd_id, name=name, root=root_dir, type=type, address=address, path=path,
                ovf_generations={})
            for _ in range(OVF_STORES_PER_DOMAIN):
                disk = _Disk(str(uuid.uuid4()), OVF_STORE_ALIAS, sd_id, False, OVF_VOLUME_SIZE,
                             content_type='ovf_store')
                os.makedirs(os.path.dirname(self._volume_path(disk, 'x')), exist_ok=True)
                volume_id = str(uuid.uuid4())
                self._write_ovf_volume(disk, volume_id)
                disk.chain.append(volume_id)
                self._disks[disk.id] = disk
            self._write_ovf_stores(sd_id, 'created')
        return sd_id

    def add_cluster(self, name):
        with self._lock:
            if name in self._clusters.values():
                raise ValueError('cluster %r exists' % name)
            cluster_id = str(uuid.uuid4())
            self._clusters[cluster_id] = name
            return cluster_id

    def add_template(self, name, disks=()):
        """Add a template; return its id. disks: as add_vm's (sd, content,
        format, name): each an image of its own holding one volume,
        VOLTYPE=SHARED, with its .meta and .lease (vdsm: a template's volume
        is the one a thin VM's image shares, volume.py Volume.share, which
        refuses a volume that is not SHARED)."""
        with self._lock:
            if any(t.name == name for t in self._templates.values()):
                raise ValueError('template %r exists' % name)
            template = _Template(str(uuid.uuid4()), name)
            for number, spec in enumerate(disks, 1):
                disk = self._new_disk(spec, '%s_Disk%d' % (name, number), number, name)
                _edit_meta(self._volume_path(disk, disk.chain[0]) + '.meta',
                           VOLTYPE='SHARED')
                template.disk_ids.append(disk.id)
            self._templates[template.id] = template
            return template.id

    def add_vm(self, name, status='up', disks=(), cluster='Default', template=None):
        """Add a VM; return its id.

        disks: [dict(sd=SD_ID, shareable=False, content=None, name=None,
        format='raw'), ...]; format 'cow' makes a qcow2 base. The content is
        padded with zeros to a multiple of 512 bytes (vdsm's sizes are).

        A disk given as dict(id=DISK_ID) attaches an existing (shareable) disk.

        template: a template's name: the VM is made from it, thin (oVirt's
        default), a disk per template disk before the disks given: its
        image holds the template's volume hard-linked with its .meta and
        .lease (vdsm volume.py Volume.create calls share() when the parent
        is in another image; fileVolume.py FileVolumeManifest._share links
        the three files) and the VM's own qcow2 volume on it, the leaf
        (PUUID the template's volume, backing file its bare UUID).
        """
        if status not in VM_STATUSES:
            raise ValueError('unknown VM status %r' % status)
        with self._lock:
            if any(vm.name == name for vm in self._vms.values()):
                raise ValueError('VM %r exists' % name)
            cluster_id = self._cluster_id(cluster)
            made_from = None
            if template is not None:
                made_from = [t for t in self._templates.values() if t.name == template]
                if not made_from:
                    raise ValueError('no template called %r' % template)
                made_from = made_from[0]
            vm = _Vm(str(uuid.uuid4()), name, status, cluster_id,
                     made_from.id if made_from else NULL_UUID)
            active = _Snapshot(str(uuid.uuid4()), ACTIVE_SNAPSHOT_DESCRIPTION, 'active', 'ok',
                               persist_memorystate=False)
            vm.snapshots[active.id] = active
            for number, template_disk_id in enumerate(made_from.disk_ids if made_from else (), 1):
                disk = self._thin_disk(self._disks[template_disk_id], '%s_Disk%d' % (name, number))
                vm.disk_ids.append(disk.id)
            for number, spec in enumerate(disks, len(vm.disk_ids) + 1):
                if 'id' in spec and spec['id'] in self._disks:
                    vm.disk_ids.append(spec['id'])
                    continue
                disk = self._new_disk(spec, '%s_Disk%d' % (name, number), number, name)
                vm.disk_ids.append(disk.id)
            self._vms[vm.id] = vm
            return vm.id

    def _new_disk(self, spec, default_name, number, owner):
        """A disk with one volume, the base, made from add_vm's spec."""
        if spec.get('sd') not in self._storage_domains:
            raise ValueError('disk %d of %s: unknown storage domain %r'
                             % (number, owner, spec.get('sd')))
        content = spec.get('content')
        if content is None:
            content = os.urandom(BASE_SIZE)
        content += b'\0' * (-len(content) % SECTOR)
        base_format = spec.get('format', 'raw')
        if base_format not in ('raw', 'cow'):
            raise ValueError('disk format must be raw or cow, not %r' % base_format)
        disk = _Disk(str(uuid.uuid4()), spec.get('name') or default_name,
                     spec['sd'], bool(spec.get('shareable', False)), len(content),
                     base_format=base_format)
        os.makedirs(os.path.dirname(self._volume_path(disk, 'x')), exist_ok=True)
        base_id = str(uuid.uuid4())
        self._write_volume(disk, base_id, NULL_UUID, content)
        disk.chain.append(base_id)
        self._disks[disk.id] = disk
        return disk

    def _thin_disk(self, template_disk, name):
        """A VM's disk on a template's: the template's volume hard-linked
        into the new image (volume, .meta, .lease: fileVolume.py _share and
        _shareLease) and a qcow2 volume of the VM's own on it."""
        disk = _Disk(str(uuid.uuid4()), name, template_disk.sd_id, False,
                     template_disk.size, base_format='cow')
        shared = template_disk.chain[0]
        source = self._volume_path(template_disk, shared)
        target = self._volume_path(disk, shared)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        for suffix in ('', '.meta', '.lease'):
            os.link(source + suffix, target + suffix)
        own = str(uuid.uuid4())
        self._write_volume(disk, own, shared, None)
        disk.chain.append(own)
        disk.template = (template_disk.id, shared)
        self._disks[disk.id] = disk
        return disk

    def add_snapshot(self, vm_name, description, age=0):
        """Add a finished snapshot (status ok) with its overlay files, taken
        age seconds ago; return its id."""
        with self._lock:
            self._advance()
            vm = self._vm_by_name(vm_name)
            disk_ids = [d for d in vm.disk_ids if not self._disks[d].shareable]
            snapshot = _Snapshot(str(uuid.uuid4()), description, 'regular', 'ok',
                                 persist_memorystate=False, disk_ids=disk_ids)
            snapshot.date -= datetime.timedelta(seconds=age)
            vm.snapshots[snapshot.id] = snapshot
            self._create_overlays(vm, snapshot)
            return snapshot.id

    def set_vm_status(self, vm_name, status):
        if status not in VM_STATUSES:
            raise ValueError('unknown VM status %r' % status)
        with self._lock:
            self._vm_by_name(vm_name).status = status

    def stick_snapshot(self, vm_name):
        """The next snapshot created on that VM never leaves 'locked' (until unstick)."""
        with self._lock:
            self._vm_by_name(vm_name).stick_next += 1

    def unstick(self, vm_name):
        """Let the stuck snapshots of that VM finish now."""
        with self._lock:
            for snapshot in self._vm_by_name(vm_name).snapshots.values():
                if snapshot.phase and snapshot.deadline is None:
                    snapshot.deadline = time.monotonic()
            self._advance()

    def rewrite_ovf_store_after_snapshot(self, times=1):
        """The engine's periodic OVF store write fires right after each of
        the next `times` snapshots is made (in the middle of a backup): the
        store then lists the snapshot, with the overlay as active volume."""
        with self._lock:
            self._periodic_after_snapshot += times

    def write_ovf_stores(self, sd_id, reason='periodic'):
        """Write the OVF stores of a domain now, as the engine does."""
        with self._lock:
            self._advance()
            self._write_ovf_stores(sd_id, reason)

    def storage_domain_ids(self):
        with self._lock:
            return list(self._storage_domains)

    def ovf_stores(self, sd_id):
        """Return [(disk id, volume id)] of the domain's OVF_STORE disks."""
        with self._lock:
            return [(d.id, d.image_id) for d in self._disks.values()
                    if d.sd_id == sd_id and d.content_type == 'ovf_store']

    def fail_merge(self, vm_name, times=1):
        """The next `times` removals of a snapshot on that VM fail after the merge delay."""
        with self._lock:
            self._vm_by_name(vm_name).merge_failures += times

    # -- looking at the world ------------------------------------------------

    def vm(self, name):
        """Return a dict view of the VM called name (KeyError if none)."""
        with self._lock:
            self._advance()
            vm = self._vm_by_name(name, error=KeyError)
            return {
                'id': vm.id,
                'name': vm.name,
                'status': vm.status,
                'cluster_id': vm.cluster_id,
                'disks': [self._disk_view(self._disks[d]) for d in vm.disk_ids],
                'snapshots': [self._snapshot_view(s) for s in vm.snapshots.values()],
            }

    def vm_names(self):
        """Return the names of all VMs, in creation order."""
        with self._lock:
            return [vm.name for vm in self._vms.values()]

    def vm_name_of(self, vm_id):
        """Return the name of the VM with that id (KeyError if none)."""
        with self._lock:
            return self._vms[vm_id].name

    def storage_domain(self, sd_id):
        with self._lock:
            return dict(self._storage_domains[sd_id])

    def disk_path(self, disk_id, image_id):
        with self._lock:
            self._advance()
            return self._volume_path(self._disks[disk_id], image_id)

    def _disk_view(self, disk):
        return {'id': disk.id, 'name': disk.name, 'sd': disk.sd_id, 'image_id': disk.image_id,
                'shareable': disk.shareable, 'chain': list(disk.chain),
                'template': disk.template}

    def template(self, name):
        """Return a dict view of the template called name (KeyError if none)."""
        with self._lock:
            for template in self._templates.values():
                if template.name == name:
                    return {'id': template.id, 'name': template.name,
                            'disks': [self._disk_view(self._disks[d])
                                      for d in template.disk_ids]}
            raise KeyError('no template called %r' % name)

    def _snapshot_view(self, snapshot):
        return {
            'id': snapshot.id,
            'description': snapshot.description,
            'status': snapshot.status,
            'type': snapshot.type,
            'persist_memorystate': snapshot.persist_memorystate,
            'disk_ids': list(snapshot.disk_ids),
            'volumes': {disk_id: {'base': base, 'overlay': overlay}
                        for disk_id, (base, overlay) in snapshot.volumes.items()},
        }

    # -- faults on demand ----------------------------------------------------

    def fail(self, method, path_regex, kind='fault', status=500, count=1, after=None):
        """The next `count` (None: all) matching requests fail the way `kind` says.

        after: (method, path_regex) or None; when given, only the requests that
        arrive after one matching it count (e.g. the VM look-ups that follow the
        first snapshot removal).

        method: 'GET', 'POST', ... or None / '*' for any.
        kind: 'fault' (an XML fault, a JSON error on the SSO paths, with `status`),
        'close' (closed without an answer, not processed), 'hang' (no answer until
        release() or stop(); after release() the request is processed normally),
        'expire' (401, and the token used becomes invalid), 'drop' (processed,
        then closed without an answer: the answer is lost), 'html' (`status` with
        an HTML page, as a proxy in front of a dead engine answers).
        """
        if kind not in FAULT_KINDS:
            raise ValueError('kind must be one of %s' % ', '.join(FAULT_KINDS))
        if after is not None:
            after_method, after_regex = after
            after = dict(method=None if after_method in (None, '*') else after_method.upper(),
                         regex=re.compile(after_regex))
        with self._lock:
            self._rules.append(dict(method=None if method in (None, '*') else method.upper(),
                                    regex=re.compile(path_regex), kind=kind, status=status,
                                    count=count, after=after, armed=after is None))

    def forget_sessions(self):
        """Invalidate every SSO token, as an engine restart does."""
        with self._lock:
            self._tokens.clear()

    def clear_faults(self):
        """Forget the fault rules not used up, and let hanging requests go on."""
        with self._lock:
            self._rules.clear()
        self.release()

    def release(self):
        """Let the hanging requests go on."""
        with self._lock:
            event, self._release_event = self._release_event, threading.Event()
        event.set()

    def _arrive(self, entry):
        """Log a request; return the fault rule that applies to it, if any."""
        with self._lock:
            self.requests.append(entry)
            chosen = None
            for rule in self._rules:
                if chosen is None and self._rule_applies(rule, entry):
                    chosen = rule
                after = rule['after']
                if (not rule['armed'] and after['method'] in (None, entry['method'])
                        and after['regex'].search(entry['path'])):
                    rule['armed'] = True
            if chosen is not None:
                entry['fault'] = chosen['kind']
            return chosen

    @staticmethod
    def _rule_applies(rule, entry):
        """Tell whether a fault rule takes this request, counting it; under the lock."""
        if not rule['armed']:
            return False
        if rule['method'] not in (None, entry['method']):
            return False
        if not rule['regex'].search(entry['path']):
            return False
        if rule['count'] is not None:
            if rule['count'] <= 0:
                return False
            rule['count'] -= 1
        return True

    def _hang(self):
        """Wait for release() or stop(); return True when the request should go on."""
        with self._lock:
            event = self._release_event
        event.wait()
        return not self._stopping.is_set()

    def _injected_fault(self, full_path, status):
        if full_path.startswith(API_PREFIX):
            return _xml_answer(status, _fault_xml('Operation Failed', '[injected]'))
        return _json_answer(status, {'error_code': 'server_error', 'error': '[injected]'})

    def _expire(self, full_path, token):
        with self._lock:
            self._tokens.discard(token)
        if full_path.startswith(API_PREFIX):
            return _xml_answer(401, _fault_xml('Unauthorized', 'The access token has expired'))
        return _json_answer(401, {'error_code': 'invalid_grant', 'error': 'The token has expired'})

    # -- the engine's feed: its own events, its jobs; the VM XML kept ---------

    def _init_feed(self):
        self.events_from = True   # 'refuse': 400 to `from`; 'ignore': answered without it
        self.job_search = True    # 'refuse': 400 to a search of the jobs
        self.jobs = []            # dicts: id, correlation_id, description, status, times
        self._job_xml = {}        # (job id, status) -> XML
        self._event_xml = {}      # event id -> XML
        self._vm_xml_cache = {}   # (vm id, follow) -> (fingerprint, XML)
        self._lost_events = []    # [code, vm name or None, count]
        self._freeze_failures = {}   # vm id -> snapshots whose freeze fails
        self._no_agent = set()    # vm ids whose guest agent reports nothing
        self._event_count = 0

    def lose_events(self, code, vm_name=None, count=1):
        """The engine does not log the next `count` events with that code (of
        that VM): as when it restarts between an action's end and its audit
        log entry. The action itself and its job are not affected."""
        with self._lock:
            self._lost_events.append([code, vm_name, count])

    def fail_freeze(self, vm_name, times=1):
        """The next `times` snapshots of that VM are taken without the
        guest's filesystems frozen: event FAILED_TO_FREEZE_VM (10764), the
        snapshot made all the same (LiveSnapshotAllowInconsistent, the
        engine's default)."""
        with self._lock:
            vm = self._vm_by_name(vm_name)
            self._freeze_failures[vm.id] = self._freeze_failures.get(vm.id, 0) + times

    def set_guest_agent(self, vm_name, present):
        """Whether the VM's guest agent reports to the engine: without it,
        the VM has no guest_operating_system (the engine shows none)."""
        with self._lock:
            vm = self._vm_by_name(vm_name)
            (self._no_agent.discard if present else self._no_agent.add)(vm.id)

    def engine_events(self, code=None):
        """Return the engine's own events (not those posted through the API),
        oldest first, as dicts: id, code, vm_id, sd_id, sd_name,
        correlation_id, time, description."""
        with self._lock:
            self._advance()
            return [dict(e) for e in self._event_records
                    if e.get('code') and (code is None or e['code'] == code)]

    def _next_event_id(self):
        self._event_count += 1
        return FIRST_ENGINE_EVENT_ID + self._event_count

    def _log_event(self, code, severity, description, vm=None, correlation_id=None, at=None,
                   sd=None):
        """Add one of the engine's own events (under the lock), unless a
        lose_events rule takes it; sd: the storage domain's dict."""
        for rule in self._lost_events:
            if rule[0] == code and rule[2] > 0 and rule[1] in (None, vm and vm.name):
                rule[2] -= 1
                return
        when = datetime.datetime.fromtimestamp(at if at is not None else time.time(),
                                               datetime.timezone.utc)
        self._event_records.append(dict(
            id=str(self._next_event_id()), code=code, origin='oVirt', severity=severity,
            custom_id=-1, description=description, cluster_id=vm.cluster_id if vm else None,
            vm_id=vm.id if vm else None, correlation_id=correlation_id, time=when,
            sd_id=sd['id'] if sd else None, sd_name=sd['name'] if sd else None))

    def _feed_started(self, vm, snapshot, phase, query):
        """A snapshot creation or removal was accepted: its job, its event,
        and for a creation the freeze (under the lock)."""
        correlation_id = (query.get('correlation_id') or [str(uuid.uuid4())])[-1]
        snapshot.correlation_id = correlation_id
        verb = 'Creating VM Snapshot' if phase == 'creating' else 'Removing Snapshot'
        job = dict(id=str(uuid.uuid4()), correlation_id=correlation_id,
                   description='%s %s for VM %s' % (verb, snapshot.description, vm.name),
                   status='started', start_time=datetime.datetime.now(datetime.timezone.utc),
                   end_time=None, vm_id=vm.id, snapshot_id=snapshot.id)
        self.jobs.append(job)
        snapshot.job = job
        if phase == 'creating':
            self._log_event(USER_CREATE_SNAPSHOT, 'normal',
                            "Snapshot '%s' creation for VM '%s' was initiated by %s."
                            % (snapshot.description, vm.name, self.user), vm, correlation_id)
            if self._freeze_failures.get(vm.id):
                self._freeze_failures[vm.id] -= 1
                self._log_event(FAILED_TO_FREEZE_VM, 'warning',
                                'Failed to freeze guest filesystems on VM %s. Note that using '
                                'the created snapshot might cause data inconsistency.'
                                % vm.name, vm, correlation_id)
        else:
            self._log_event(USER_REMOVE_SNAPSHOT, 'normal',
                            "Snapshot '%s' deletion for VM '%s' was initiated by %s."
                            % (snapshot.description, vm.name, self.user), vm, correlation_id)

    def _feed_finished(self, vm, snapshot, phase, failed, at):
        """A creation or removal ended at `at` (epoch seconds): its job and
        its event (under the lock)."""
        job = getattr(snapshot, 'job', None)
        correlation_id = getattr(snapshot, 'correlation_id', None)
        if job is not None:
            job['status'] = 'failed' if failed else 'finished'
            job['end_time'] = datetime.datetime.fromtimestamp(at, datetime.timezone.utc)
        if phase == 'creating':
            self._log_event(USER_CREATE_SNAPSHOT_FINISHED_SUCCESS, 'normal',
                            "Snapshot '%s' creation for VM '%s' has been completed."
                            % (snapshot.description, vm.name), vm, correlation_id, at)
        elif failed:
            self._log_event(USER_REMOVE_SNAPSHOT_FINISHED_FAILURE, 'error',
                            "Failed to delete snapshot '%s' for VM '%s'."
                            % (snapshot.description, vm.name), vm, correlation_id, at)
        else:
            self._log_event(USER_REMOVE_SNAPSHOT_FINISHED_SUCCESS, 'normal',
                            "Snapshot '%s' deletion for VM '%s' has been completed."
                            % (snapshot.description, vm.name), vm, correlation_id, at)

    def _cached_event_xml(self, event):
        xml = self._event_xml.get(event['id'])
        if xml is None:
            xml = self._event_xml[event['id']] = Writer.write(self._event_obj(event))
        return xml

    def _job_obj(self, job):
        return _ref(types.Job, 'jobs', job['id'], description=job['description'],
                    status=types.JobStatus(job['status']), auto_cleared=True, external=False,
                    start_time=job['start_time'], end_time=job['end_time'],
                    last_updated=job['end_time'] or job['start_time'],
                    owner=_ref(types.User, 'users', NULL_UUID))

    def _cached_job_xml(self, job):
        key = (job['id'], job['status'])
        xml = self._job_xml.get(key)
        if xml is None:
            xml = self._job_xml[key] = Writer.write(self._job_obj(job))
        return xml

    def _list_jobs(self, query, body):
        """The jobs, oldest first; search: correlation_id=X only (the engine's
        JobConditionFieldAutoCompleter knows no other field)."""
        text = (query.get('search') or [''])[-1].strip()
        jobs = self.jobs
        if text:
            if self.job_search == 'refuse':
                raise bad_request('Invalid search text "%s": search is not supported for '
                                  'jobs' % text)
            match = re.fullmatch(r'correlation_id=(\S+)', text, re.IGNORECASE)
            if not match:
                raise bad_request('Invalid search text "%s": cannot understand it' % text)
            jobs = [job for job in jobs if job['correlation_id'] == match.group(1)]
        limit = _parse_max(query)
        if limit is not None and limit >= 0:
            jobs = jobs[:limit]
        return _xml_answer(200, '<jobs>%s</jobs>' % ''.join(
            self._cached_job_xml(job) for job in jobs))

    def _get_job(self, query, body, job):
        for candidate in self.jobs:
            if candidate['id'] == job:
                return _xml_answer(200, self._cached_job_xml(candidate))
        raise not_found('job %s' % job)

    def _vm_fingerprint(self, vm):
        """Everything _vm_obj renders of a VM: its XML is written again only
        when this changes."""
        disks = tuple((d.id, d.name, d.sd_id, d.shareable, d.size, d.image_id,
                       bool(d.locked_by))
                      for d in (self._disks[disk_id] for disk_id in vm.disk_ids))
        snapshots = tuple((s.id, s.description, s.type, s.status, s.persist_memorystate,
                           s.date) for s in vm.snapshots.values())
        return (vm.name, vm.status, vm.cluster_id, vm.id in self._no_agent, disks, snapshots)

    def _cached_vm_xml(self, vm, follow):
        key = (vm.id, frozenset(follow))
        fingerprint = self._vm_fingerprint(vm)
        cached = self._vm_xml_cache.get(key)
        if cached is None or cached[0] != fingerprint:
            cached = self._vm_xml_cache[key] = (
                fingerprint, self._vm_xml(self._vm_obj(vm, follow)))
        return cached[1]

    # -- time ----------------------------------------------------------------

    def _advance(self, limit=None):
        """Make the changes that are due (call under the lock), or only the
        first `limit` snapshots of them (a request's look at the world: the
        clock thread does the rest). Return how many snapshots were done."""
        now = time.monotonic()
        done = 0
        for due in [due for due in self._ovf_due if due[0] <= now]:
            self._ovf_due.remove(due)
            self._requested_ovf_update(*due[1:])
        for vm in self._vms.values():
            for snapshot in list(vm.snapshots.values()):
                if snapshot.phase is None or snapshot.deadline is None or now < snapshot.deadline:
                    continue
                if limit is not None and done >= limit:
                    return done
                done += 1
                phase, failed = snapshot.phase, snapshot.merge_fails
                if snapshot.phase == 'creating':
                    self._finish_creation(vm, snapshot)
                else:
                    self._finish_removal(vm, snapshot)
                # done now, its files written: the time of its event and job
                self._feed_finished(vm, snapshot, phase, failed, time.time())
        return done

    def _finish_creation(self, vm, snapshot):
        self._unlock_disks(snapshot)
        snapshot.phase = snapshot.deadline = None
        snapshot.status = 'ok'
        self._create_overlays(vm, snapshot)
        vm.generation += 1
        if self._periodic_after_snapshot:
            self._periodic_after_snapshot -= 1
            for sd_id in sorted({self._disks[d].sd_id for d in snapshot.disk_ids}):
                self._write_ovf_stores(sd_id, 'periodic')

    def _finish_removal(self, vm, snapshot):
        self._unlock_disks(snapshot)
        snapshot.phase = snapshot.deadline = None
        vm.generation += 1        # merged or not: VmCommand.endVmCommand
        if snapshot.merge_fails:
            snapshot.merge_fails = False
            snapshot.status = 'ok'
            return
        for disk_id, (base_id, overlay_id) in snapshot.volumes.items():
            disk = self._disks[disk_id]
            index = disk.chain.index(overlay_id)
            del disk.chain[index]
            for suffix in ('', '.meta', '.lease'):
                _remove_file(self._volume_path(disk, overlay_id) + suffix)
            if index < len(disk.chain):   # an internal merge: the child now sits on the base
                child = self._volume_path(disk, disk.chain[index])
                base_format = _meta_value(self._volume_path(disk, base_id) + '.meta', 'FORMAT')
                # qemu's block commit points the child's backing file at the base
                _qemu_img('rebase', '-u', '-b', base_id, '-F',
                          'raw' if base_format == 'RAW' else 'qcow2', os.path.basename(child),
                          cwd=os.path.dirname(child))
                _edit_meta(child + '.meta', PUUID=base_id)
            else:
                _edit_meta(self._volume_path(disk, base_id) + '.meta', VOLTYPE='LEAF')
        del vm.snapshots[snapshot.id]

    def _unlock_disks(self, snapshot):
        for disk_id in snapshot.disk_ids:
            self._disks[disk_id].locked_by.discard(snapshot.id)

    def _create_overlays(self, vm, snapshot):
        for disk_id in snapshot.disk_ids:
            disk = self._disks[disk_id]
            base_id = disk.image_id
            overlay_id = str(uuid.uuid4())
            self._write_volume(disk, overlay_id, base_id, None)
            _edit_meta(self._volume_path(disk, base_id) + '.meta', VOLTYPE='INTERNAL')
            disk.chain.append(overlay_id)
            snapshot.volumes[disk_id] = (base_id, overlay_id)
            self.overlays.append(dict(vm=vm.name, snapshot_id=snapshot.id,
                                      description=snapshot.description,
                                      disk_id=disk_id, base=base_id,
                                      overlay=overlay_id))

    # -- files ---------------------------------------------------------------

    def _volume_path(self, disk, volume_id):
        root = self._storage_domains[disk.sd_id]['root']
        return os.path.join(root, disk.sd_id, 'images', disk.id, volume_id)

    def _write_volume(self, disk, volume_id, parent_id, content):
        """Write a volume, its .lease and its .meta as vdsm lays them out: a
        base (parent_id NULL_UUID) holding content, raw or qcow2 by the
        disk's base_format; otherwise a qcow2 overlay on parent_id made by
        the real qemu-img (content None)."""
        path = self._volume_path(disk, volume_id)
        is_base = parent_id == NULL_UUID
        if is_base and disk.base_format == 'raw':
            _write_file(path, content)
            volume_format = 'RAW'
        elif is_base:
            with tempfile.NamedTemporaryFile(prefix='fake-engine-raw-') as raw:
                raw.write(content)
                raw.flush()
                _qemu_img('convert', '-f', 'raw', '-O', 'qcow2', raw.name, path)
            volume_format = 'COW'
        else:
            parent_format = _meta_value(self._volume_path(disk, parent_id) + '.meta',
                                        'FORMAT')
            # in the image directory, the bare UUID as backing file, as vdsm
            _create_overlay(path, parent_id, 'raw' if parent_format == 'RAW' else 'qcow2')
            volume_format = 'COW'
        _write_file(path + '.lease', b'\0' * LEASE_SIZE)
        description = '{"DiskAlias":"%s","DiskDescription":""}' % disk.name
        self._write_meta(disk, volume_id, parent_id, volume_format, description,
                         'DATA', disk.size)

    def _write_meta(self, disk, volume_id, parent_id, volume_format, description,
                    disktype, capacity):
        meta = {
            'CAP': capacity,
            'CTIME': int(time.time()),
            'DESCRIPTION': description,
            'DISKTYPE': disktype,
            'DOMAIN': disk.sd_id,
            'FORMAT': volume_format,
            'GEN': 0,
            'IMAGE': disk.id,
            'LEGALITY': 'LEGAL',
            'PUUID': parent_id,
            'SEQ': 0,
            'TYPE': 'PREALLOCATED' if disk.shareable else 'SPARSE',
            'VOLTYPE': 'LEAF',
        }
        lines = ['%s=%s\n' % (key, meta[key]) for key in sorted(meta)] + ['EOF\n']
        _put_meta(self._volume_path(disk, volume_id) + '.meta', ''.join(lines).encode())

    # -- the OVF store -------------------------------------------------------

    def _write_ovf_volume(self, disk, volume_id):
        """A new OVF_STORE volume: raw, sparse, never written yet."""
        path = self._volume_path(disk, volume_id)
        with open(path, 'wb') as stream:
            stream.truncate(OVF_VOLUME_SIZE)
        _write_file(path + '.lease', b'\0' * LEASE_SIZE)
        self._write_meta(disk, volume_id, NULL_UUID, 'RAW',
                         _ovf_description(disk.sd_id, False, None, None), 'OVFS',
                         OVF_VOLUME_SIZE)

    def _ovf_date(self):
        """Java's Date.toString() of now: whole seconds, so two writes in one
        second carry the same date."""
        return time.strftime('%a %b %d %H:%M:%S UTC %Y', time.gmtime(time.time()))

    def _domain_vms(self, sd_id):
        """The VMs and templates with a disk on the domain (both in
        vm_static, each with its db_generation)."""
        return [vm for vm in list(self._vms.values()) + list(self._templates.values())
                if any(self._disks[d].sd_id == sd_id for d in vm.disk_ids)]

    def _ovf_outdated(self, sd_id):
        """Whether a requested update writes the domain's store: a store
        never written (or whose write failed: Updated false), or a VM on
        the domain new or changed since the last write, or one gone
        (ProcessOvfUpdateForStoragePoolCommand.proccessDomainsForOvfUpdate,
        populateVmsMetadataForOvfUpdate, removeOvfForTemplatesAndVmsOfStoragePool)."""
        for disk in self._disks.values():
            if disk.sd_id == sd_id and disk.content_type == 'ovf_store':
                meta = _meta_value(self._volume_path(disk, disk.image_id) + '.meta',
                                   'DESCRIPTION')
                if not json.loads(meta).get('Updated'):
                    return True
        written = self._storage_domains[sd_id]['ovf_generations']
        now = {vm.id: vm.generation for vm in self._domain_vms(sd_id)}
        return now != written

    def _requested_ovf_update(self, sd_id, job):
        """The end of POST updateovfstore's command (under the lock): write
        the store if the domain is outdated (event 199), else nothing
        (1052), or fail as ovf_store_fails says (190)."""
        sd = self._storage_domains[sd_id]
        done = 'finished'
        if self.ovf_store_fails == 'error':
            # performOvfUpdateForDomain sets Updated false before the upload
            for disk in self._disks.values():
                if disk.sd_id == sd_id and disk.content_type == 'ovf_store':
                    path = self._volume_path(disk, disk.image_id) + '.meta'
                    previous = json.loads(_meta_value(path, 'DESCRIPTION')).get('Last Updated')
                    _edit_meta(path, DESCRIPTION=_ovf_description(sd_id, False, previous, None))
            self._log_event(UPDATE_OVF_FOR_STORAGE_DOMAIN_FAILED, 'warning',
                            'Failed to update VMs/Templates OVF data for Storage Domain %s '
                            'in Data Center Default.' % sd['name'],
                            correlation_id=job['correlation_id'], sd=sd)
            done = 'failed'
        elif self._ovf_outdated(sd_id):
            self._write_ovf_stores(sd_id, 'requested')
            self._log_event(USER_UPDATE_OVF_STORE, 'normal',
                            'OVF_STORE for domain %s was updated by %s.' % (sd['name'], self.user),
                            correlation_id=job['correlation_id'], sd=sd)
        else:
            self._log_event(OVF_STORES_UPDATE_IGNORED, 'normal',
                            "OVFs update was ignored - nothing to update for storage domain "
                            "'%s'" % sd['name'], correlation_id=job['correlation_id'], sd=sd)
        job['status'] = done
        job['end_time'] = datetime.datetime.now(datetime.timezone.utc)

    def _write_ovf_stores(self, sd_id, reason):
        """The engine's OVF update of a domain: the tar of every VM with a
        disk there, written into each OVF_STORE volume, its .meta
        DESCRIPTION set not updated before and updated after."""
        date = self._ovf_date()
        vms = {vm.id: self._vm_ovf(vm) for vm in self._vms.values()
               if any(self._disks[d].sd_id == sd_id for d in vm.disk_ids)}
        # the templates with a disk on the domain too, each as <id>.ovf
        # (ProcessOvfUpdateForStorageDomainCommand.buildFilesForOvfs, over
        # getVmAndTemplatesIdsByStorageDomainId)
        vms.update((t.id, self._template_ovf(t)) for t in self._templates.values()
                   if any(self._disks[d].sd_id == sd_id for d in t.disk_ids))
        info = json.dumps({'Last Updated': date, 'Storage Domains': [{'uuid': sd_id}]},
                          indent=2).encode()
        status = {vm_id: 1 for vm_id in vms
                  if vm_id in self._vms and self._vms[vm_id].status == 'up'}
        metadata = json.dumps({'VM Status': status}, indent=2).encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode='w', format=tarfile.USTAR_FORMAT) as tar:
            entries = [('info.json', info)]
            entries += [('%s.ovf' % vm_id, text.encode()) for vm_id, text in vms.items()]
            entries += [('metadata.json', metadata)]
            for name, data in entries:
                member = tarfile.TarInfo(name)
                member.size = len(data)
                member.mtime = int(time.time())
                tar.addfile(member, io.BytesIO(data))
        data = buffer.getvalue()
        for disk in self._disks.values():
            if disk.sd_id != sd_id or disk.content_type != 'ovf_store':
                continue
            path = self._volume_path(disk, disk.image_id)
            before = _meta_value(path + '.meta', 'DESCRIPTION')
            previous = json.loads(before).get('Last Updated') if before else None
            _edit_meta(path + '.meta', DESCRIPTION=_ovf_description(sd_id, False, previous, None))
            with open(path, 'r+b') as stream:
                stream.write(data)
            _edit_meta(path + '.meta',
                       DESCRIPTION=_ovf_description(sd_id, True, date, len(data)))
        self._storage_domains[sd_id]['ovf_generations'] = {
            vm.id: vm.generation for vm in self._domain_vms(sd_id)}
        self.ovf_writes.append(dict(sd=sd_id, reason=reason, last_updated=date, vms=vms))

    def _vm_ovf(self, vm):
        """The OVF of a VM as OvfVmWriter writes what a restore needs of
        it: References/File per volume, a Disk per volume with its
        snapshot, and the snapshots."""
        active = [s for s in vm.snapshots.values() if s.type == 'active'][0]
        owner = {}      # volume id -> snapshot id (the snapshot that froze it)
        for snapshot in vm.snapshots.values():
            for base, _ in snapshot.volumes.values():
                owner[base] = snapshot.id
        files, disks = [], []
        for disk_id in vm.disk_ids:
            disk = self._disks[disk_id]
            parent = ''
            for volume_id in disk.chain:
                ref = '%s/%s' % (disk.id, volume_id)
                meta_format = _meta_value(self._volume_path(disk, volume_id) + '.meta', 'FORMAT')
                files.append('<File ovf:href="%s" ovf:id="%s" ovf:size="%d" '
                             'ovf:description="" ovf:disk_storage_type="IMAGE" '
                             'ovf:cinder_volume_type=""></File>' % (ref, volume_id, disk.size))
                disks.append('<Disk ovf:diskId="%s" ovf:size="1" ovf:actual_size="1" '
                             'ovf:vm_snapshot_id="%s" ovf:parentRef="%s" ovf:fileRef="%s" '
                             'ovf:format="http://www.vmware.com/specifications/vmdk.html'
                             '#sparse" ovf:volume-format="%s" ovf:volume-type="Sparse" '
                             'ovf:disk-interface="VirtIO_SCSI" ovf:read-only="false" '
                             'ovf:shareable="%s" ovf:boot="false" ovf:pass-discard="false" '
                             'ovf:disk-alias="%s" ovf:wipe-after-delete="false"></Disk>'
                             % (volume_id, owner.get(volume_id, active.id), parent, ref,
                                meta_format or 'RAW', str(disk.shareable).lower(), disk.name))
                parent = ref
        snapshots = ''.join(
            '<Snapshot ovf:id="%s"><Type>%s</Type><Description>%s</Description>'
            '<CreationDate>%s</CreationDate></Snapshot>'
            % (s.id, s.type.upper(), s.description, s.date.strftime('%Y/%m/%d %H:%M:%S'))
            for s in vm.snapshots.values())
        return _ovf_envelope(files, disks, (
            '<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>%s</Name>'
            '<TemplateId>%s</TemplateId>'
            '<Section ovf:id="%s" ovf:required="false" '
            'xsi:type="ovf:OperatingSystemSection_Type"><Info>Guest Operating System'
            '</Info><Description>other_linux</Description></Section>'
            '<Section xsi:type="ovf:SnapshotsSection_Type">%s</Section></Content>'
            % (vm.name, vm.template_id, vm.id, snapshots)))

    def _template_ovf(self, template):
        """The OVF of a template as OvfTemplateWriter writes what a
        restore needs of it: a File and a Disk per disk (its one volume),
        TemplateId its own id (OvfParser.isTemplate: TemplateId equal to
        the OperatingSystemSection's id) and TemplateType (what
        OvfUtils.getVmEntityType reads to register it as a template), and
        no snapshots."""
        files, disks = [], []
        for disk_id in template.disk_ids:
            disk = self._disks[disk_id]
            volume_id = disk.chain[0]
            ref = '%s/%s' % (disk.id, volume_id)
            meta_format = _meta_value(self._volume_path(disk, volume_id) + '.meta', 'FORMAT')
            files.append('<File ovf:href="%s" ovf:id="%s" ovf:size="%d" '
                         'ovf:description="" ovf:disk_storage_type="IMAGE" '
                         'ovf:cinder_volume_type=""></File>' % (ref, volume_id, disk.size))
            disks.append('<Disk ovf:diskId="%s" ovf:size="1" ovf:actual_size="1" '
                         'ovf:parentRef="" ovf:fileRef="%s" '
                         'ovf:format="http://www.vmware.com/specifications/vmdk.html#sparse" '
                         'ovf:volume-format="%s" ovf:volume-type="Sparse" '
                         'ovf:disk-interface="VirtIO_SCSI" ovf:read-only="false" '
                         'ovf:shareable="false" ovf:boot="false" ovf:pass-discard="false" '
                         'ovf:disk-alias="%s" ovf:wipe-after-delete="false"></Disk>'
                         % (volume_id, ref, meta_format or 'RAW', disk.name))
        return _ovf_envelope(files, disks, (
            '<Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type"><Name>%s</Name>'
            '<TemplateId>%s</TemplateId><TemplateType>TEMPLATE</TemplateType>'
            '<BaseTemplateId>%s</BaseTemplateId>'
            '<Section ovf:id="%s" ovf:required="false" '
            'xsi:type="ovf:OperatingSystemSection_Type"><Info>Guest Operating System'
            '</Info><Description>other_linux</Description></Section></Content>'
            % (template.name, template.id, template.id, template.id)))

    # -- lookups -------------------------------------------------------------

    def _vm_by_name(self, name, error=ValueError):
        for vm in self._vms.values():
            if vm.name == name:
                return vm
        raise error('no VM called %r' % name)

    def _cluster_id(self, name_or_id):
        if name_or_id in self._clusters:
            return name_or_id
        for cluster_id, name in self._clusters.items():
            if name == name_or_id:
                return cluster_id
        raise ValueError('no cluster %r' % name_or_id)

    def _vm(self, vm_id):
        vm = self._vms.get(vm_id)
        if vm is None:
            raise not_found('vm %s' % vm_id)
        return vm

    def _disk(self, disk_id):
        disk = self._disks.get(disk_id)
        if disk is None:
            raise not_found('disk %s' % disk_id)
        return disk

    # -- the HTTP side -------------------------------------------------------

    _ROUTES = [
        ('GET', r'/', '_get_api'),
        ('GET', r'/storagedomains', '_list_storage_domains'),
        ('GET', r'/storagedomains/(?P<sd>[^/]+)', '_get_storage_domain'),
        ('GET', r'/storagedomains/(?P<sd>[^/]+)/disks', '_list_domain_disks'),
        ('POST', r'/storagedomains/(?P<sd>[^/]+)/updateovfstore', '_update_ovf_store'),
        ('GET', r'/clusters', '_list_clusters'),
        ('GET', r'/clusters/(?P<cluster>[^/]+)', '_get_cluster'),
        ('GET', r'/vms', '_list_vms'),
        ('GET', r'/vms/(?P<vm>[^/]+)', '_get_vm'),
        ('GET', r'/vms/(?P<vm>[^/]+)/diskattachments', '_list_attachments'),
        ('GET', r'/vms/(?P<vm>[^/]+)/diskattachments/(?P<disk>[^/]+)', '_get_attachment'),
        ('GET', r'/vms/(?P<vm>[^/]+)/snapshots', '_list_snapshots'),
        ('POST', r'/vms/(?P<vm>[^/]+)/snapshots', '_add_snapshot'),
        ('GET', r'/vms/(?P<vm>[^/]+)/snapshots/(?P<snapshot>[^/]+)', '_get_snapshot'),
        ('DELETE', r'/vms/(?P<vm>[^/]+)/snapshots/(?P<snapshot>[^/]+)', '_remove_snapshot'),
        ('GET', r'/disks', '_list_disks'),
        ('GET', r'/disks/(?P<disk>[^/]+)', '_get_disk'),
        ('GET', r'/events', '_list_events'),
        ('GET', r'/jobs', '_list_jobs'),
        ('GET', r'/jobs/(?P<job>[^/]+)', '_get_job'),
        ('POST', r'/events', '_add_event'),
    ]

    def _dispatch(self, method, full_path, query, body, token):
        """Answer one request; return (status, content type, text, headers)."""
        try:
            if full_path == SSO_TOKEN_PATH:
                return self._sso_token(method, body)
            if full_path == SSO_LOGOUT_PATH:
                return self._sso_logout(query, body)
            if full_path != API_PREFIX and not full_path.startswith(API_PREFIX + '/'):
                raise not_found(full_path)
            with self._lock:
                if token not in self._tokens:
                    raise Fault(401, 'Unauthorized', 'Authentication is required')
                self._advance(ADVANCE_BATCH)
                path = _logged_path(full_path)
                known_path = False
                for route_method, pattern, name in self._ROUTES:
                    match = re.fullmatch(pattern, path)
                    if match:
                        known_path = True
                        if route_method == method:
                            return getattr(self, name)(query=query, body=body, **match.groupdict())
                if known_path:
                    raise Fault(405, 'Method Not Allowed',
                                '%s is not allowed on %s' % (method, path))
                raise not_found(path)
        except Fault as fault:
            return _xml_answer(fault.status, _fault_xml(fault.reason, fault.detail))
        except Exception:  # a bug of the fake: answer 500 and keep it for the tests
            text = traceback.format_exc()
            with self._lock:
                self.errors.append(text)
            return _xml_answer(500, _fault_xml('Internal Server Error', text))

    def _sso_token(self, method, body):
        form = urllib.parse.parse_qs(body, keep_blank_values=True)
        username = form.get('username', [''])[-1]
        if (method != 'POST' or form.get('grant_type', [''])[-1] != 'password'
                or username != self.user or form.get('password', [''])[-1] != self.password):
            return _json_answer(400, {
                'error_code': 'access_denied',
                'error': "Cannot authenticate user '%s': The username or password is incorrect.."
                         % username,
            })
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens.add(token)
        expires = int((time.time() + 36000) * 1000)
        return _json_answer(200, {'access_token': token, 'scope': 'ovirt-app-api',
                                  'exp': str(expires), 'token_type': 'bearer'})

    def _sso_logout(self, query, body):
        form = urllib.parse.parse_qs(body, keep_blank_values=True)
        token = (form.get('token') or query.get('token') or [''])[-1]
        with self._lock:
            self._tokens.discard(token)
            self.logged_out += 1
        return _json_answer(200, {})

    # API handlers: called under the lock with the path's groups, query and body.

    def _get_api(self, query, body):
        api = types.Api(
            product_info=types.ProductInfo(
                name='oVirt Engine', vendor='ovirt.org', instance_id=str(uuid.uuid4()),
                version=types.Version(major=4, minor=5, build=4, revision=1,
                                      full_version='4.5.4-1.el8')),
            time=datetime.datetime.now(datetime.timezone.utc))
        element = ElementTree.fromstring(Writer.write(api))
        element.set('href', API_PREFIX)
        _add_links(element, API_PREFIX, ['clusters', 'disks', 'events', 'storagedomains', 'vms'])
        return _xml_answer(200, ElementTree.tostring(element, encoding='unicode'))

    def _storage_domain_obj(self, sd):
        obj = _ref(types.StorageDomain, 'storagedomains', sd['id'], name=sd['name'],
                   type=types.StorageDomainType.DATA,
                   storage=types.HostStorage(type=types.StorageType(sd['type']),
                                             address=sd['address'], path=sd['path']),
                   available=100 << 30, used=10 << 30, master=False,
                   external_status=types.ExternalStatus.OK)
        return obj

    def _list_storage_domains(self, query, body):
        objs = [self._storage_domain_obj(sd) for sd in self._storage_domains.values()]
        return _xml_answer(200, Writer.write(objs, root='storage_domains'))

    def _get_storage_domain(self, query, body, sd):
        if sd not in self._storage_domains:
            raise not_found('storage domain %s' % sd)
        return _xml_answer(200, Writer.write(self._storage_domain_obj(self._storage_domains[sd])))

    def _list_domain_disks(self, query, body, sd):
        if sd not in self._storage_domains:
            raise not_found('storage domain %s' % sd)
        disks = [d for d in self._disks.values() if d.sd_id == sd]
        return _xml_answer(200, Writer.write([self._disk_obj(d) for d in disks], root='disks'))

    def _update_ovf_store(self, query, body, sd):
        """POST updateovfstore: answered at once, its command and job go on
        (see _requested_ovf_update)."""
        if sd not in self._storage_domains:
            raise not_found('storage domain %s' % sd)
        correlation_id = (query.get('correlation_id') or [str(uuid.uuid4())])[-1]
        job = dict(id=str(uuid.uuid4()), correlation_id=correlation_id,
                   description='Updating OVF_STORE for storage domain %s'
                   % self._storage_domains[sd]['name'],
                   status='started', start_time=datetime.datetime.now(datetime.timezone.utc),
                   end_time=None, vm_id=None, snapshot_id=None)
        self.jobs.append(job)
        if self.ovf_store_fails != 'stuck':
            self._ovf_due.append((time.monotonic() + self.ovf_delay, sd, job))
        return _xml_answer(200, Writer.write(types.Action(status='complete')))

    def _cluster_obj(self, cluster_id):
        return _ref(types.Cluster, 'clusters', cluster_id, name=self._clusters[cluster_id])

    def _list_clusters(self, query, body):
        clusters = [_NamedId(cluster_id, name) for cluster_id, name in self._clusters.items()]
        clusters = self._search(clusters, query, {'name': _name_term})
        return _xml_answer(200, Writer.write([self._cluster_obj(c.id) for c in clusters],
                                             root='clusters'))

    def _get_cluster(self, query, body, cluster):
        if cluster not in self._clusters:
            raise not_found('cluster %s' % cluster)
        return _xml_answer(200, Writer.write(self._cluster_obj(cluster)))

    def _search(self, objs, query, fields):
        """Given objects in creation order, apply search, max and page; return the slice."""
        predicates, page = _parse_search((query.get('search') or [''])[-1], fields)
        limit = _parse_max(query)
        if limit is None:
            limit = SEARCH_DEFAULT_MAX
        found = [obj for obj in objs if all(predicate(obj) for predicate in predicates)]
        if limit < 0:
            return found if (page or 1) == 1 else []
        start = ((page or 1) - 1) * limit
        return found[start:start + limit]

    def _disk_obj(self, disk):
        status = types.DiskStatus.LOCKED if disk.locked_by else types.DiskStatus.OK
        obj = _ref(types.Disk, 'disks', disk.id, name=disk.name, alias=disk.name,
                   image_id=disk.image_id, content_type=types.DiskContentType(disk.content_type),
                   storage_domains=[_ref(types.StorageDomain, 'storagedomains', disk.sd_id)],
                   shareable=disk.shareable, storage_type=types.DiskStorageType.IMAGE,
                   format=(types.DiskFormat.RAW if disk.shareable or disk.content_type != 'data'
                           else types.DiskFormat.COW),
                   sparse=not disk.shareable, status=status,
                   provisioned_size=max(disk.size, 1 << 30), actual_size=disk.size)
        return obj

    def _attachment_obj(self, vm, disk_id, full):
        disk = self._disks[disk_id]
        disk_obj = self._disk_obj(disk) if full else _ref(types.Disk, 'disks', disk.id)
        return _ref(types.DiskAttachment, 'vms', vm.id, 'diskattachments', disk.id,
                    active=True, bootable=vm.disk_ids[0] == disk_id,
                    interface=types.DiskInterface.VIRTIO_SCSI, pass_discard=False,
                    read_only=False, uses_scsi_reservation=False,
                    disk=disk_obj, vm=_ref(types.Vm, 'vms', vm.id))

    def _snapshot_obj(self, vm, snapshot):
        persist = snapshot.persist_memorystate
        if persist is None:
            persist = vm.status == 'up'
        return _ref(types.Snapshot, 'vms', vm.id, 'snapshots', snapshot.id,
                    description=snapshot.description, date=snapshot.date,
                    persist_memorystate=persist,
                    snapshot_status=types.SnapshotStatus(snapshot.status),
                    snapshot_type=types.SnapshotType(snapshot.type),
                    vm=_ref(types.Vm, 'vms', vm.id))

    def _vm_obj(self, vm, follow):
        obj = _ref(types.Vm, 'vms', vm.id, name=vm.name, status=types.VmStatus(vm.status),
                   cluster=_ref(types.Cluster, 'clusters', vm.cluster_id),
                   type=types.VmType.SERVER, memory=1 << 30)
        if vm.status == 'up' and vm.id not in self._no_agent:
            obj.guest_operating_system = types.GuestOperatingSystem(
                family='Linux', distribution='CentOS Stream', architecture='x86_64')
        if follow & {'disk_attachments', 'disk_attachments.disk'}:
            full = 'disk_attachments.disk' in follow
            obj.disk_attachments = [self._attachment_obj(vm, disk_id, full)
                                    for disk_id in vm.disk_ids]
        if 'snapshots' in follow:
            obj.snapshots = [self._snapshot_obj(vm, s) for s in vm.snapshots.values()]
        return obj

    def _vm_xml(self, objs, root=None):
        """Write VMs with the SDK's writer, then add the links the real engine
        sends (for one VM, before its end tag as text: no parse and write
        again, which would double what a VM costs to render)."""
        if root is None:
            text = Writer.write(objs)
            end = text.rindex('</vm>')
            return text[:end] + ''.join(
                '<link href="%s/%s" rel="%s" />' % (xml_escape(objs.href, {'"': '&quot;'}),
                                                    rel, rel)
                for rel in ('diskattachments', 'snapshots')) + text[end:]
        element = ElementTree.fromstring(Writer.write(objs, root=root))
        for vm_element in ([element] if root is None else list(element)):
            _add_links(vm_element, vm_element.get('href'),
                       ['diskattachments', 'snapshots'])
        return ElementTree.tostring(element, encoding='unicode')

    def _follow(self, query, allowed):
        """The links to inline: none when ``inline`` is False (a proxy that
        drops the parameter), after the same check; a 400 for any when it is
        'refuse' (an engine that does not know it)."""
        follow = _parse_follow(query, allowed)
        if follow and self.inline == 'refuse':
            raise bad_request('Cannot follow link(s): %s' % ', '.join(sorted(follow)))
        return follow if self.inline else set()

    _VM_FOLLOWS = ('disk_attachments', 'disk_attachments.disk', 'snapshots')

    def _list_vms(self, query, body):
        follow = self._follow(query, self._VM_FOLLOWS)
        vms = self._search(list(self._vms.values()), query,
                           {'name': _name_term, 'status': _status_term})
        return _xml_answer(200, '<vms>%s</vms>' % ''.join(
            self._cached_vm_xml(vm, follow) for vm in vms))

    def _get_vm(self, query, body, vm):
        follow = self._follow(query, self._VM_FOLLOWS)
        return _xml_answer(200, self._cached_vm_xml(self._vm(vm), follow))

    def _list_attachments(self, query, body, vm):
        follow = self._follow(query, ('disk',))
        vm = self._vm(vm)
        objs = [self._attachment_obj(vm, disk_id, 'disk' in follow) for disk_id in vm.disk_ids]
        return _xml_answer(200, Writer.write(objs, root='disk_attachments'))

    def _get_attachment(self, query, body, vm, disk):
        follow = self._follow(query, ('disk',))
        vm = self._vm(vm)
        if disk not in vm.disk_ids:
            raise not_found('disk attachment %s' % disk)
        return _xml_answer(200, Writer.write(self._attachment_obj(vm, disk, 'disk' in follow)))

    def _list_disks(self, query, body):
        disks = self._search(list(self._disks.values()), query, {'name': _name_term})
        return _xml_answer(200, Writer.write([self._disk_obj(d) for d in disks], root='disks'))

    def _get_disk(self, query, body, disk):
        return _xml_answer(200, Writer.write(self._disk_obj(self._disk(disk))))

    def _list_snapshots(self, query, body, vm):
        self._follow(query, ())
        vm = self._vm(vm)
        objs = [self._snapshot_obj(vm, s) for s in vm.snapshots.values()]
        limit = _parse_max(query)
        if limit is not None and limit >= 0:
            objs = objs[:limit]
        return _xml_answer(200, Writer.write(objs, root='snapshots'))

    def _get_snapshot(self, query, body, vm, snapshot):
        vm = self._vm(vm)
        if snapshot not in vm.snapshots:
            raise not_found('snapshot %s' % snapshot)
        return _xml_answer(200, Writer.write(self._snapshot_obj(vm, vm.snapshots[snapshot])))

    def _check_not_during_snapshot(self, vm, action):
        if any(s.status == 'locked' for s in vm.snapshots.values()):
            raise refused('Cannot %s Snapshot. Snapshot is currently being created for VM %s.'
                          % (action, vm.name))

    def _add_snapshot(self, query, body, vm):
        vm = self._vm(vm)
        request = _read_body(body, types.Snapshot)
        if not request.description:
            raise bad_request('Snapshot [description] required for add')
        self._check_not_during_snapshot(vm, 'create')
        if request.disk_attachments:
            disk_ids = []
            for attachment in request.disk_attachments:
                disk_id = attachment.id
                if attachment.disk is not None and attachment.disk.id:
                    disk_id = attachment.disk.id
                if not disk_id:
                    raise bad_request('Snapshot disk attachment [disk.id] required')
                disk_ids.append(disk_id)
            missing = [d for d in disk_ids if d not in vm.disk_ids]
            if missing:
                raise refused('Cannot create Snapshot. The following disk(s) are not attached '
                              'to VM %s: %s.' % (vm.name, ', '.join(missing)))
            shared = [self._disks[d].name for d in disk_ids if self._disks[d].shareable]
            if shared:
                raise refused('Cannot create Snapshot. Snapshots of shareable disks are not '
                              'supported: %s.' % ', '.join(shared))
            disk_ids = list(dict.fromkeys(disk_ids))
        else:
            disk_ids = [d for d in vm.disk_ids if not self._disks[d].shareable]
        snapshot = _Snapshot(str(uuid.uuid4()), request.description, 'regular', 'locked',
                             persist_memorystate=request.persist_memorystate, disk_ids=disk_ids)
        snapshot.phase = 'creating'
        if vm.stick_next:
            vm.stick_next -= 1
        else:
            snapshot.deadline = time.monotonic() + self.snapshot_delay
        for disk_id in disk_ids:
            self._disks[disk_id].locked_by.add(snapshot.id)
        vm.snapshots[snapshot.id] = snapshot
        self._feed_started(vm, snapshot, 'creating', query)
        href = _href('vms', vm.id, 'snapshots', snapshot.id)
        return _xml_answer(201, Writer.write(self._snapshot_obj(vm, snapshot)),
                           {'Location': href})

    def _remove_snapshot(self, query, body, vm, snapshot):
        vm = self._vm(vm)
        if snapshot not in vm.snapshots:
            raise not_found('snapshot %s' % snapshot)
        target = vm.snapshots[snapshot]
        if target.type == 'active':
            raise refused('Cannot remove Snapshot. The active snapshot of VM %s cannot be removed.'
                          % vm.name)
        self._check_not_during_snapshot(vm, 'remove')
        target.status = 'locked'
        target.phase = 'removing'
        target.deadline = time.monotonic() + self.merge_delay
        if vm.merge_failures:
            vm.merge_failures -= 1
            target.merge_fails = True
        for disk_id in target.disk_ids:
            self._disks[disk_id].locked_by.add(target.id)
        self._feed_started(vm, target, 'removing', query)
        return _xml_answer(200, '')

    def _event_obj(self, event):
        obj = _ref(types.Event, 'events', event['id'], origin=event['origin'],
                   severity=types.LogSeverity(event['severity']), custom_id=event['custom_id'],
                   description=event['description'], time=event['time'],
                   code=event.get('code', 0), correlation_id=event.get('correlation_id'))
        if event['cluster_id']:
            obj.cluster = _ref(types.Cluster, 'clusters', event['cluster_id'])
        if event.get('vm_id'):
            obj.vm = _ref(types.Vm, 'vms', event['vm_id'])
        if event.get('sd_id'):
            obj.storage_domain = _ref(types.StorageDomain, 'storagedomains', event['sd_id'],
                                      name=event['sd_name'])
        return obj

    def _list_events(self, query, body):
        """Newest first, as the engine sorts them; ``from``: only the events
        with a greater id; ``max``: at most that many."""
        records = self._event_records
        if 'from' in query and self.events_from == 'refuse':
            raise bad_request('Unknown parameter "from"')
        if 'from' in query and self.events_from is True:
            try:
                after = int(query['from'][-1])
            except ValueError:
                raise bad_request('Invalid value for parameter "from": %s'
                                  % query['from'][-1]) from None
            records = [e for e in records if int(e['id']) > after]
        limit = _parse_max(query)
        chosen = list(reversed(records))
        if limit is not None and limit >= 0:
            chosen = chosen[:limit]
        return _xml_answer(200, '<events>%s</events>' % ''.join(
            self._cached_event_xml(event) for event in chosen))

    def _add_event(self, query, body):
        request = _read_body(body, types.Event)
        missing = [name for name in ('origin', 'severity', 'custom_id', 'description')
                   if getattr(request, name) in (None, '')]
        if missing:
            raise bad_request('Event [%s] required for add' % ', '.join(missing))
        key = (request.origin, request.custom_id)
        if key in self._event_keys:
            raise refused('Cannot add Event. An event with the same custom id already exists.')
        cluster_id = None
        if request.cluster is not None and request.cluster.id:
            if request.cluster.id not in self._clusters:
                raise not_found('cluster %s' % request.cluster.id)
            cluster_id = request.cluster.id
        self._event_keys.add(key)
        self.events.append(dict(origin=request.origin, severity=request.severity.value,
                                custom_id=request.custom_id, description=request.description,
                                cluster_id=cluster_id))
        event = dict(self.events[-1], id=str(self._next_event_id()),
                     time=datetime.datetime.now(datetime.timezone.utc))
        self._event_records.append(event)
        return _xml_answer(201, Writer.write(self._event_obj(event)),
                           {'Location': _href('events', event['id'])})


class _NamedId:
    def __init__(self, id, name):
        self.id = id
        self.name = name
