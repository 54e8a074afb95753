"""Issue 16: restore points, gluster snapshots of the slave volume taken on
a slave node over ssh after a run whose copy was verified in full; the fake
ssh and the fake gluster CLI's snapshots (tests/fakebin/ssh, _snapshots.py)."""
import json

from conftest import SLAVE, SLAVEVOL, assert_invariants, needs_root

pytestmark = needs_root


def snapshots(site):
    path = site.root / 'snapshots.json'
    return json.loads(path.read_text())['snapshots'] if path.exists() else []


def test_smoke(site):
    site.add_vm('web')
    result = site.run(config=site.config(restore_points={'keep': '2'}))
    print(result.err)
    print(snapshots(site))
    print(site.calls('ssh'))
    assert result.code == 0
