"""The fake engine, driven by the real ovirtsdk4 over HTTPS.

These tests pin down what the fake reproduces of the real engine (DESIGN.md,
"Facts about the real systems") and how the SDK reacts to each fault kind, so
that the tests of vmbackup.py can rely on both.
"""

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

import ovirtsdk4 as sdk
import ovirtsdk4.types as types
import pytest
import trustme

from support.fake_engine import FakeEngine
from support.site import wait_for

USER = 'admin@internal'
PASSWORD = 'secret'
BULK_UP = 120
BULK_DOWN = 5
GEOREP = 'GLUSTER-Geo-rep-snapshot'


@pytest.fixture(scope='module')
def engine(tmp_path_factory):
    with FakeEngine(snapshot_delay=0.2, merge_delay=0.2) as engine:
        engine.master = tmp_path_factory.mktemp('master')
        engine.sd_id = engine.add_storage_domain('vmstore', engine.master)
        for number in range(BULK_UP):
            engine.add_vm('bulk-%03d' % number, disks=[dict(sd=engine.sd_id)])
        for number in range(BULK_DOWN):
            engine.add_vm('idle-%03d' % number, status='down', disks=[dict(sd=engine.sd_id)])
        yield engine
        assert engine.errors == []


@pytest.fixture(autouse=True)
def no_faults_left(engine):
    yield
    engine.clear_faults()


@pytest.fixture
def ca_file(engine, tmp_path):
    return engine.ca_pem_path(tmp_path)


@pytest.fixture
def connect(engine, ca_file):
    connections = []

    def connect(**options):
        settings = dict(url=engine.url, username=USER, password=PASSWORD, ca_file=ca_file,
                        timeout=5)
        settings.update(options)
        connection = sdk.Connection(**settings)
        connections.append(connection)
        return connection

    yield connect
    for connection in connections:
        connection.close(logout=False)


@pytest.fixture
def connection(connect):
    return connect()


@pytest.fixture
def new_vm(engine):
    """Return a function that adds a running VM with one disk per spec and returns its name."""
    counter = iter(range(10 ** 6))

    def new_vm(*disks):
        name = 'vm-%s-%d' % (os.urandom(3).hex(), next(counter))
        specs = [dict(sd=engine.sd_id, **disk) for disk in (disks or [{}])]
        engine.add_vm(name, disks=specs)
        return name

    return new_vm


def vms_service(connection):
    return connection.system_service().vms_service()


def snapshots_service(connection, engine, vm_name):
    return vms_service(connection).vm_service(engine.vm(vm_name)['id']).snapshots_service()


def georep_snapshot(disk_ids=None):
    attachments = None
    if disk_ids is not None:
        attachments = [types.DiskAttachment(disk=types.Disk(id=disk_id)) for disk_id in disk_ids]
    return types.Snapshot(description=GEOREP, persist_memorystate=False,
                          disk_attachments=attachments)


def snapshot_status(engine, vm_name, snapshot_id):
    for snapshot in engine.vm(vm_name)['snapshots']:
        if snapshot['id'] == snapshot_id:
            return snapshot['status']
    return None


def volume_files(engine, disk_id, image_id):
    path = engine.disk_path(disk_id, image_id)
    return [path, path + '.meta', path + '.lease']


def api_request(engine, ca_file, path, token=None):
    """Given an API path, GET it with urllib; return (status, body)."""
    context = ssl.create_default_context(cafile=ca_file)
    request = urllib.request.Request(engine.url + path)
    if token:
        request.add_header('Authorization', 'Bearer ' + token)
    try:
        with urllib.request.urlopen(request, context=context, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sso_token(engine, ca_file):
    form = urllib.parse.urlencode(dict(grant_type='password', scope='ovirt-app-api',
                                       username=USER, password=PASSWORD)).encode()
    url = engine.url.replace('/ovirt-engine/api', '/ovirt-engine/sso/oauth/token')
    context = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(url, data=form, context=context, timeout=5) as answer:
        assert answer.headers['Content-Type'] == 'application/json'
        return json.load(answer)['access_token']


# -- login, api root, TLS ------------------------------------------------------

def test_the_sdk_logs_in_and_reads_the_api_root(engine, connection):
    assert connection.test(raise_exception=True)
    api = connection.system_service().get()
    assert api.product_info.name == 'oVirt Engine'
    assert (api.product_info.version.major, api.product_info.version.minor) == (4, 5)
    token_posts = [r for r in engine.requests if r['path'] == '/ovirt-engine/sso/oauth/token']
    assert 'grant_type=password' in token_posts[-1]['body']
    assert engine.requests[-1]['path'] == '/'


def test_a_wrong_password_raises_auth_error(connect):
    with pytest.raises(sdk.AuthError, match='username or password is incorrect'):
        connect(password='wrong').system_service().get()


def test_a_server_certificate_from_another_ca_fails_verification(connect, tmp_path):
    other = tmp_path / 'other-ca.pem'
    trustme.CA().cert_pem.write_to_path(str(other))
    with pytest.raises(sdk.Error, match='SSL certificate') as caught:
        connect(ca_file=str(other)).system_service().get()
    assert caught.value.code is None


def test_logout_invalidates_the_token(engine, connect):
    connection = connect()
    connection.test(raise_exception=True)
    token = connection.authenticate()
    before = engine.logged_out
    connection.close()
    assert engine.logged_out == before + 1
    with pytest.raises(sdk.AuthError):
        connect(username=None, password=None, token=token).system_service().get()


def test_api_requests_without_a_valid_token_get_401_and_unknown_paths_404(engine, ca_file):
    status, body = api_request(engine, ca_file, '/vms')
    assert status == 401 and '<fault>' in body
    token = sso_token(engine, ca_file)
    assert api_request(engine, ca_file, '/vms', token='not-' + token)[0] == 401
    status, body = api_request(engine, ca_file, '/no/such/thing', token=token)
    assert status == 404 and '<reason>Not Found</reason>' in body
    assert api_request(engine, ca_file, '/vms/no-such-id', token=token)[0] == 404


# -- searches ------------------------------------------------------------------

def test_a_search_without_max_returns_at_most_100_vms(connection):
    assert len(vms_service(connection).list(search='status=up')) == 100


def test_paging_and_max_reach_every_vm_in_creation_order(engine, connection):
    first = vms_service(connection).list(search='status=up page 1')
    second = vms_service(connection).list(search='status=up page 2')
    assert engine.requests[-1]['query'] == {'search': ['status=up page 2']}
    everything = vms_service(connection).list(search='status=up', max=1000)
    bulk = ['bulk-%03d' % number for number in range(BULK_UP)]
    assert [vm.name for vm in first + second][:BULK_UP] == bulk
    assert [vm.name for vm in everything][:BULK_UP] == bulk
    assert len(first) == 100 and len(first + second) == len(everything)
    small_pages = vms_service(connection).list(search='name=bulk-* page 3', max=50)
    assert [vm.name for vm in small_pages] == bulk[100:]


def test_search_terms_filter_by_status_and_wildcard_name(connection):
    down = vms_service(connection).list(search='status=down')
    assert sorted(vm.name for vm in down) == ['idle-%03d' % number for number in range(BULK_DOWN)]
    named = vms_service(connection).list(search='name=bulk-11* and status=up')
    assert sorted(vm.name for vm in named) == ['bulk-%03d' % number for number in range(110, 120)]


def test_an_unknown_search_term_is_refused_with_400(connection):
    with pytest.raises(sdk.Error) as caught:
        vms_service(connection).list(search='sortby name')
    assert caught.value.code == 400


def test_follow_disk_attachments_disk_inlines_the_disks(engine, connection, new_vm):
    name = new_vm({}, {'shareable': True})
    expected = engine.vm(name)
    assert engine.vm_name_of(expected['id']) == name and name in engine.vm_names()
    [vm] = vms_service(connection).list(search='name=%s' % name, follow='disk_attachments.disk')
    disks = [attachment.disk for attachment in vm.disk_attachments]
    assert [(d.id, d.image_id, d.shareable) for d in disks] == [
        (d['id'], d['image_id'], d['shareable']) for d in expected['disks']]
    assert all(d.storage_domains[0].id == engine.sd_id for d in disks)
    [plain] = vms_service(connection).list(search='name=%s' % name)
    assert plain.disk_attachments.href.endswith('/vms/%s/diskattachments' % expected['id'])
    attachments = connection.follow_link(plain.disk_attachments)
    assert attachments[0].disk.image_id is None
    full = connection.follow_link(attachments[0].disk)
    assert full.image_id == expected['disks'][0]['image_id']


def test_storage_domains_show_their_gluster_volume(engine, connection):
    [domain] = [sd for sd in connection.system_service().storage_domains_service().list()
                if sd.id == engine.sd_id]
    assert domain.storage.type == types.StorageType.GLUSTERFS
    assert (domain.storage.address, domain.storage.path) == ('gluster1.example.com', '/vmstore')


# -- snapshots -----------------------------------------------------------------

def test_a_snapshot_is_locked_then_ok_with_overlay_files_and_a_new_image_id(
        engine, connection, new_vm):
    name = new_vm({}, {'shareable': True})
    disk, shared = engine.vm(name)['disks']
    base_files = volume_files(engine, disk['id'], disk['image_id'])
    assert all(os.path.exists(path) for path in base_files)
    service = snapshots_service(connection, engine, name)
    snapshot = service.add(georep_snapshot([disk['id']]))
    assert snapshot.snapshot_status == types.SnapshotStatus.LOCKED
    assert snapshot.snapshot_type == types.SnapshotType.REGULAR
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) == 'ok')
    overlay = engine.vm(name)['disks'][0]['image_id']
    assert overlay != disk['image_id']
    assert all(os.path.exists(path) for path in volume_files(engine, disk['id'], overlay))
    assert engine.vm(name)['disks'][1]['image_id'] == shared['image_id']
    disk_service = connection.system_service().disks_service().disk_service(disk['id'])
    assert disk_service.get().image_id == overlay
    [view] = [s for s in engine.vm(name)['snapshots'] if s['id'] == snapshot.id]
    assert view['persist_memorystate'] is False
    assert view['volumes'] == {disk['id']: {'base': disk['image_id'], 'overlay': overlay}}
    listed = service.list()
    assert [s.snapshot_type for s in listed] == [types.SnapshotType.ACTIVE,
                                                 types.SnapshotType.REGULAR]
    assert listed[0].description == 'Active VM'


def test_a_snapshot_without_persist_memorystate_is_recorded_as_none(engine, connection, new_vm):
    name = new_vm()
    snapshot = snapshots_service(connection, engine, name).add(types.Snapshot(description='mine'))
    [view] = [s for s in engine.vm(name)['snapshots'] if s['id'] == snapshot.id]
    assert view['persist_memorystate'] is None


def test_removing_a_snapshot_locks_it_then_deletes_its_overlay(engine, connection, new_vm):
    name = new_vm()
    base = engine.vm(name)['disks'][0]
    service = snapshots_service(connection, engine, name)
    snapshot = service.add(georep_snapshot())
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) == 'ok')
    overlay_files = volume_files(engine, base['id'], engine.vm(name)['disks'][0]['image_id'])
    service.snapshot_service(snapshot.id).remove()
    removing = service.snapshot_service(snapshot.id).get()
    assert removing.snapshot_status == types.SnapshotStatus.LOCKED
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) is None)
    with pytest.raises(sdk.NotFoundError) as caught:
        service.snapshot_service(snapshot.id).get()
    assert caught.value.code == 404
    assert not any(os.path.exists(path) for path in overlay_files)
    assert all(os.path.exists(path) for path in volume_files(engine, base['id'], base['image_id']))
    assert engine.vm(name)['disks'][0]['image_id'] == base['image_id']


def test_snapshots_are_refused_while_one_is_locked_and_for_shareable_or_foreign_disks(
        engine, connection, new_vm):
    name = new_vm({}, {'shareable': True})
    disk, shared = engine.vm(name)['disks']
    service = snapshots_service(connection, engine, name)
    for disk_ids in ([shared['id']], [engine.vm('bulk-000')['disks'][0]['id']]):
        with pytest.raises(sdk.Error) as caught:
            service.add(georep_snapshot(disk_ids))
        assert caught.value.code == 409 and caught.value.fault.reason == 'Operation Failed'
    service.add(georep_snapshot([disk['id']]))
    with pytest.raises(sdk.Error, match='currently being created') as caught:
        service.add(georep_snapshot([disk['id']]))
    assert caught.value.code == 409
    with pytest.raises(sdk.NotFoundError):
        vms_service(connection).vm_service('no-such-vm').snapshots_service().add(georep_snapshot())


def test_the_active_snapshot_cannot_be_removed(engine, connection, new_vm):
    name = new_vm()
    [active] = engine.vm(name)['snapshots']
    with pytest.raises(sdk.Error) as caught:
        snapshots_service(connection, engine, name).snapshot_service(active['id']).remove()
    assert caught.value.code == 409


def test_a_failed_merge_leaves_the_snapshot_ok_with_its_files(engine, connection, new_vm):
    name = new_vm()
    engine.add_snapshot(name, GEOREP)
    [_, stale] = engine.vm(name)['snapshots']
    disk = engine.vm(name)['disks'][0]
    engine.fail_merge(name)
    service = snapshots_service(connection, engine, name)
    service.snapshot_service(stale['id']).remove()
    assert snapshot_status(engine, name, stale['id']) == 'locked'
    wait_for(lambda: snapshot_status(engine, name, stale['id']) == 'ok')
    assert all(os.path.exists(path) for path in volume_files(engine, disk['id'], disk['image_id']))
    service.snapshot_service(stale['id']).remove()
    wait_for(lambda: snapshot_status(engine, name, stale['id']) is None)
    assert engine.vm(name)['disks'][0]['image_id'] == stale['volumes'][disk['id']]['base']


def test_a_stuck_snapshot_stays_locked(engine, connection, new_vm):
    name = new_vm()
    engine.stick_snapshot(name)
    snapshot = snapshots_service(connection, engine, name).add(georep_snapshot())
    deadline = time.monotonic() + 3 * engine.snapshot_delay
    while time.monotonic() < deadline:
        assert snapshot_status(engine, name, snapshot.id) == 'locked'
        time.sleep(0.05)
    engine.unstick(name)
    assert snapshot_status(engine, name, snapshot.id) == 'ok'


# -- faults on demand, and what the SDK makes of them --------------------------

@pytest.mark.parametrize('status, error', [(500, sdk.Error), (404, sdk.NotFoundError),
                                           (409, sdk.Error)])
def test_an_injected_fault_raises_an_sdk_error_with_its_code(engine, connection, status, error):
    engine.fail('GET', r'^/vms$', status=status)
    with pytest.raises(error) as caught:
        vms_service(connection).list()
    assert caught.value.code == status
    assert caught.value.fault.detail == '[injected]'
    assert engine.requests[-1]['status'] == status


def test_a_closed_connection_is_retried_once_by_libcurl_then_raises(engine, connection):
    vms_service(connection).list(max=1)  # a kept-alive connection for the next requests
    engine.fail('GET', r'^/vms$', kind='close')
    assert len(vms_service(connection).list(max=1)) == 1
    assert [r['status'] for r in engine.requests[-2:]] == [None, 200]
    engine.fail('GET', r'^/vms$', kind='close', count=2)
    with pytest.raises(sdk.Error, match='Failed to read response') as caught:
        vms_service(connection).list(max=1)
    assert caught.value.code is None


def test_an_answer_lost_on_a_kept_alive_connection_makes_libcurl_send_the_request_again(
        engine, connection):
    vms_service(connection).list(max=1)
    engine.fail('GET', r'^/vms$', kind='drop')
    assert len(vms_service(connection).list(max=1)) == 1
    assert [(r['path'], r['status']) for r in engine.requests[-2:]] == [('/vms', 200),
                                                                         ('/vms', 200)]


def test_a_hanging_request_raises_after_the_client_timeout(engine, connect):
    connection = connect(timeout=1)
    connection.test(raise_exception=True)
    engine.fail('GET', r'^/vms$', kind='hang')
    started = time.monotonic()
    with pytest.raises(sdk.Error, match='timed out') as caught:
        vms_service(connection).list()
    assert 0.9 < time.monotonic() - started < 3
    assert not isinstance(caught.value, sdk.TimeoutError) and caught.value.code is None
    assert len(vms_service(connection).list(max=1)) == 1  # the hung request blocks nothing else
    hung = [r for r in engine.requests if r['path'] == '/vms' and r['status'] is None][-1]
    engine.release()
    wait_for(lambda: hung['status'] == 200)  # released, it is answered to nobody


def test_an_expired_token_makes_the_sdk_log_in_again_and_retry(engine, connection):
    connection.test(raise_exception=True)
    engine.fail('GET', r'^/vms$', kind='expire')
    assert len(vms_service(connection).list(max=1)) == 1
    assert [(r['method'], r['path'], r['status']) for r in engine.requests[-3:]] == [
        ('GET', '/vms', 401), ('POST', '/ovirt-engine/sso/oauth/token', 200), ('GET', '/vms', 200)]


def test_a_failing_sso_endpoint_raises_auth_error(engine, connect):
    engine.fail('POST', '/ovirt-engine/sso/oauth/token', status=500)
    with pytest.raises(sdk.AuthError, match='server_error'):
        connect().system_service().get()


# -- events --------------------------------------------------------------------

def test_an_event_is_accepted_once_per_origin_and_custom_id(engine, connection):
    cluster_id = engine.add_cluster('events-cluster')
    events = connection.system_service().events_service()
    event = types.Event(origin='ovirt-georep-backup', severity=types.LogSeverity.NORMAL,
                        custom_id=424242, description='Successfully backed up',
                        cluster=types.Cluster(id=cluster_id))
    events.add(event)
    assert engine.events[-1] == dict(origin='ovirt-georep-backup', severity='normal',
                                     custom_id=424242, description='Successfully backed up',
                                     cluster_id=cluster_id)
    with pytest.raises(sdk.Error, match='same custom id') as caught:
        events.add(event)
    assert caught.value.code == 409
    events.add(types.Event(origin='ovirt-georep-backup', severity=types.LogSeverity.ALERT,
                           custom_id=424243, description='Failed',
                           cluster=types.Cluster(name='events-cluster')))
    assert engine.events[-1]['cluster_id'] is None


def test_an_event_without_a_description_is_refused_with_400(connection):
    with pytest.raises(sdk.Error) as caught:
        connection.system_service().events_service().add(types.Event(
            origin='ovirt-georep-backup', severity=types.LogSeverity.ALERT, custom_id=7))
    assert caught.value.code == 400


# -- the engine's feed: its events, its jobs ----------------------------------

def events_of(connection, vm_id, **options):
    """The engine's own events about that VM, oldest first, as (code, correlation id)."""
    events = connection.system_service().events_service().list(**options)
    return [(e.code, e.correlation_id) for e in reversed(events)
            if e.vm is not None and e.vm.id == vm_id]


def test_a_snapshot_and_its_removal_log_the_engine_events_with_the_vm_and_correlation_id(
        engine, connection, new_vm):
    name = new_vm()
    vm_id = engine.vm(name)['id']
    service = snapshots_service(connection, engine, name)
    snapshot = service.add(georep_snapshot(), query={'correlation_id': 'run-1-create'})
    assert events_of(connection, vm_id) == [(45, 'run-1-create')]
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) == 'ok')
    service.snapshot_service(snapshot.id).remove(query={'correlation_id': 'run-1-remove'})
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) is None)
    assert events_of(connection, vm_id) == [(45, 'run-1-create'), (68, 'run-1-create'),
                                            (342, 'run-1-remove'), (356, 'run-1-remove')]
    [created] = [e for e in engine.engine_events(68) if e['vm_id'] == vm_id]
    assert "Snapshot '%s' creation for VM '%s' has been completed." % (GEOREP, name) \
        == created['description']


def test_events_from_gives_only_newer_ones_newest_first_and_max_caps_them(
        engine, connection, new_vm):
    events = connection.system_service().events_service()
    [latest] = events.list(max=1)
    name = new_vm()
    snapshot = snapshots_service(connection, engine, name).add(georep_snapshot())
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) == 'ok')
    newer = events.list(from_=int(latest.id))
    assert [e.code for e in newer] == [68, 45]
    assert all(int(e.id) > int(latest.id) for e in newer)
    assert [e.code for e in events.list(from_=int(latest.id), max=1)] == [68]
    assert events.list(from_=int(newer[0].id)) == []
    assert len(events.list(max=2)) == 2


def test_jobs_found_by_correlation_id_start_then_finish_or_fail(engine, connection, new_vm):
    name = new_vm()
    engine.fail_merge(name)
    service = snapshots_service(connection, engine, name)
    jobs = connection.system_service().jobs_service()
    snapshot = service.add(georep_snapshot(), query={'correlation_id': 'job-test-create'})
    [job] = jobs.list(search='correlation_id=job-test-create')
    assert job.status == types.JobStatus.STARTED
    assert GEOREP in job.description and name in job.description
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) == 'ok')
    assert [j.status for j in jobs.list(search='correlation_id=job-test-create')] == [
        types.JobStatus.FINISHED]
    service.snapshot_service(snapshot.id).remove(query={'correlation_id': 'job-test-remove'})
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) == 'ok')
    assert [j.status for j in jobs.list(search='correlation_id=job-test-remove')] == [
        types.JobStatus.FAILED]
    assert jobs.job_service(job.id).get().status == types.JobStatus.FINISHED
    assert jobs.list(search='correlation_id=no-such-id') == []


def test_an_engine_can_refuse_or_ignore_from_and_refuse_the_job_search(engine, connection):
    events = connection.system_service().events_service()
    jobs = connection.system_service().jobs_service()
    everything = len(events.list())
    try:
        engine.events_from = 'refuse'
        with pytest.raises(sdk.Error) as caught:
            events.list(from_=1)
        assert caught.value.code == 400
        engine.events_from = 'ignore'
        assert len(events.list(from_=10 ** 9)) == everything
        engine.job_search = 'refuse'
        with pytest.raises(sdk.Error) as caught:
            jobs.list(search='correlation_id=x')
        assert caught.value.code == 400
        assert isinstance(jobs.list(), list)
    finally:
        engine.events_from = engine.job_search = True


def test_a_lost_event_is_never_logged_but_its_action_and_job_end(engine, connection, new_vm):
    name = new_vm()
    vm_id = engine.vm(name)['id']
    engine.lose_events(68, name)
    service = snapshots_service(connection, engine, name)
    snapshot = service.add(georep_snapshot(), query={'correlation_id': 'lost-event'})
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) == 'ok')
    assert [code for code, _ in events_of(connection, vm_id)] == [45]
    [job] = connection.system_service().jobs_service().list(search='correlation_id=lost-event')
    assert job.status == types.JobStatus.FINISHED


def test_a_failed_freeze_logs_10764_and_the_snapshot_is_made_all_the_same(
        engine, connection, new_vm):
    name = new_vm()
    vm_id = engine.vm(name)['id']
    engine.fail_freeze(name)
    service = snapshots_service(connection, engine, name)
    snapshot = service.add(georep_snapshot(), query={'correlation_id': 'not-frozen'})
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) == 'ok')
    assert events_of(connection, vm_id) == [(45, 'not-frozen'), (10764, 'not-frozen'),
                                            (68, 'not-frozen')]
    [warning] = engine.engine_events(10764)[-1:]
    assert warning['severity'] == 'warning'
    assert warning['description'].startswith('Failed to freeze guest filesystems on VM %s.'
                                             % name)


def test_a_vm_without_a_guest_agent_shows_no_guest_operating_system(engine, connection, new_vm):
    name = new_vm()
    service = vms_service(connection).vm_service(engine.vm(name)['id'])
    assert service.get().guest_operating_system.family == 'Linux'
    engine.set_guest_agent(name, False)
    assert service.get().guest_operating_system is None


def test_a_vm_is_written_again_only_when_it_changed(engine, connection, new_vm, monkeypatch):
    name = new_vm()
    vm_id = engine.vm(name)['id']
    written = []
    render = engine._vm_obj
    monkeypatch.setattr(engine, '_vm_obj', lambda vm, follow: (written.append(vm.id),
                                                               render(vm, follow))[1])
    service = vms_service(connection).vm_service(vm_id)
    first = service.get(follow='snapshots')
    vms_service(connection).list(search='status=up', max=1000, follow='snapshots')
    assert vm_id in written
    written.clear()
    assert vms_service(connection).list(search='name=%s' % name, follow='snapshots')[0].id == vm_id
    assert service.get(follow='snapshots').snapshots[0].id == first.snapshots[0].id
    assert written == []
    snapshot = snapshots_service(connection, engine, name).add(georep_snapshot())
    again = service.get(follow='snapshots')
    assert written == [vm_id]
    assert [s.id for s in again.snapshots] == [first.snapshots[0].id, snapshot.id]


@pytest.mark.parametrize('parent_format', ['raw', 'qcow2'])
def test_an_overlay_is_the_file_qemu_img_create_makes_with_its_own_backing_id(
        tmp_path, parent_format):
    from support import fake_engine
    ids = ['%08d-0000-4000-8000-000000000000' % n for n in range(4)]
    raw = tmp_path / 'content.raw'
    raw.write_bytes(b'x' * 1048576)
    for parent in ids[:2]:
        if parent_format == 'raw':
            (tmp_path / parent).write_bytes(raw.read_bytes())
        else:
            fake_engine._qemu_img('convert', '-f', 'raw', '-O', 'qcow2', str(raw),
                                  str(tmp_path / parent))
    fake_engine._overlay_templates.clear()
    fake_engine._create_overlay(str(tmp_path / 'first'), ids[0], parent_format)
    fake_engine._create_overlay(str(tmp_path / 'second'), ids[1], parent_format)
    fake_engine._qemu_img('create', '-q', '-f', 'qcow2', '-b', ids[1], '-F', parent_format,
                          'by-qemu-img', cwd=str(tmp_path))
    assert (parent_format, 1048576) in fake_engine._overlay_templates   # the second: no qemu-img
    made = (tmp_path / 'second').read_bytes()
    assert made == (tmp_path / 'by-qemu-img').read_bytes()
    assert ids[1].encode() in made and ids[0].encode() not in made


def newest(events):
    """The id of the newest event, 0 when there is none."""
    latest = events.list(max=1)
    return int(latest[0].id) if latest else 0


def test_an_ovf_store_update_writes_only_an_outdated_domain_and_says_which(
        engine, connection, tmp_path):
    sd_id = engine.add_storage_domain('ovf-%s' % os.urandom(3).hex(), tmp_path)
    sd_name = engine.storage_domain(sd_id)['name']
    name = 'ovf-vm-%s' % os.urandom(3).hex()
    engine.add_vm(name, disks=[dict(sd=sd_id)])
    system = connection.system_service()
    domain = system.storage_domains_service().storage_domain_service(sd_id)
    events = system.events_service()
    jobs = system.jobs_service()

    def update(correlation_id):
        """Ask for the update; return its events about the domain and the
        number of writes of the domain's store so far."""
        latest = newest(events)
        domain.update_ovf_store(query={'correlation_id': correlation_id})
        wait_for(lambda: [j.status for j in jobs.list(
            search='correlation_id=%s' % correlation_id)] == [types.JobStatus.FINISHED])
        said = [(e.code, e.storage_domain.id, e.storage_domain.name, e.correlation_id)
                for e in events.list(from_=latest) if e.storage_domain is not None]
        return said, len([w for w in engine.ovf_writes if w['sd'] == sd_id])

    # a new VM on the domain: outdated, written, event 199
    assert update('ovf-1') == ([(199, sd_id, sd_name, 'ovf-1')], 2)
    assert engine.ovf_writes[-1]['reason'] == 'requested'
    # nothing changed since: nothing to update, event 1052, nothing written
    assert update('ovf-2') == ([(1052, sd_id, sd_name, 'ovf-2')], 2)
    # a snapshot changes the VM's generation: written again
    service = snapshots_service(connection, engine, name)
    snapshot = service.add(georep_snapshot())
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) == 'ok')
    assert update('ovf-3') == ([(199, sd_id, sd_name, 'ovf-3')], 3)
    # and so does its removal; the hourly writer writes it, with no event
    service.snapshot_service(snapshot.id).remove()
    wait_for(lambda: snapshot_status(engine, name, snapshot.id) is None)
    latest = newest(events)
    engine.write_ovf_stores(sd_id)
    assert [e for e in events.list(from_=latest) if e.storage_domain is not None] == []
    assert update('ovf-4') == ([(1052, sd_id, sd_name, 'ovf-4')], 4)
