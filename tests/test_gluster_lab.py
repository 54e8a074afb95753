"""The real-gluster lab's own safety, without gluster: on a machine whose
gluster is not the lab's (a real gluster node) the real-gluster tests skip,
and apt-get's plan is read right (what it installs, what it upgrades)."""
import pytest

from support import georep

IDLE = {1: (0, 'S', '/sbin/init'), 40: (1, 'S', '/usr/sbin/sshd -D')}


def no_mark(pid):
    return None


def test_a_glusterd_that_no_lab_started_means_a_gluster_node(tmp_path):
    processes = dict(IDLE)
    processes[812] = (1, 'S', '/usr/sbin/glusterd -p /var/run/glusterd.pid')
    reason = georep.gluster_node_reason(processes, no_mark, tmp_path)
    assert reason.startswith('this is a gluster node: glusterd runs (pid 812)')
    assert 'skipped' in reason


def test_a_glusterd_that_a_lab_started_is_the_labs_to_recover(tmp_path):
    processes = dict(IDLE)
    processes[812] = (1, 'S', '/usr/sbin/glusterd -N')
    lab_started = {812: '/tmp/lab'}.get
    assert georep.gluster_node_reason(processes, lab_started, tmp_path) is None
    assert georep.gluster_node_reason(IDLE, no_mark, tmp_path) is None


@pytest.mark.parametrize('path, expected', [
    ('peers/2b0a3c9e-6f1e-4c6e-9a57-0d1e5b3c7f00', 'lists peers'),
    ('vols/engine/info', 'knows the volumes engine'),
])
def test_a_stopped_glusterd_that_knows_a_pool_means_a_gluster_node(
        tmp_path, path, expected):
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text('x')
    assert expected in georep.gluster_node_reason(IDLE, no_mark, tmp_path)


def test_volumes_a_killed_lab_left_are_not_a_gluster_node(tmp_path):
    (tmp_path / 'vols' / 'georeplab-master').mkdir(parents=True)
    assert georep.gluster_node_reason(IDLE, no_mark, tmp_path) is None


def test_the_apt_plan_tells_new_packages_from_upgrades():
    simulation = '\n'.join([
        'NOTE: This is only a simulation!',
        'Inst openssh-client [1:9.2p1-2+deb12u6] (1:9.2p1-2+deb12u10 '
        'Debian:12.15/oldstable [amd64])',
        'Inst openssh-server (1:9.2p1-2+deb12u10 Debian:12.15/oldstable [amd64])',
        'Conf openssh-server (1:9.2p1-2+deb12u10 Debian:12.15/oldstable [amd64])',
    ])
    assert georep.parse_apt_simulation(simulation) == (
        ['openssh-server'],
        ['openssh-client 1:9.2p1-2+deb12u6 -> 1:9.2p1-2+deb12u10'])
