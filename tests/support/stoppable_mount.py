"""A FUSE mount that can be made to stop answering, as shared storage does
when its glusterfs client hangs (the conftest's stoppable_mount fixture)."""
import os
import pathlib
import shutil
import signal
import subprocess

from support.site import mounts_under, wait_for


class StoppableMount:
    """A FUSE mount of a directory (Debian's bindfs, in the foreground) that
    can be made to stop answering, as shared storage does when its glusterfs
    client hangs: with the bindfs process stopped (SIGSTOP) the kernel's
    FUSE requests wait for an answer that does not come, and stat, open and
    read block in the kernel; with it killed the mount is stale and every
    access fails with ENOTCONN. close() lets it go on and unmounts."""

    def __init__(self, source, point):
        self.source, self.point = pathlib.Path(source), pathlib.Path(point)
        self.source.mkdir(parents=True, exist_ok=True)
        self.point.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(['bindfs', '-f', str(self.source), str(self.point)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: str(self.point) in mounts_under(self.point.parent)
                 or self.process.poll() is not None, timeout=30, message='bindfs to mount')
        if self.process.poll() is not None:
            raise RuntimeError('bindfs failed: %s' % self.process.stderr.read())

    def stop(self):
        self.process.send_signal(signal.SIGSTOP)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def close(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()          # bindfs unmounts on SIGTERM
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if str(self.point) in mounts_under(self.point.parent):
            subprocess.run(['umount', '-l', str(self.point)], check=False)


def fuse_problem():
    """Why a StoppableMount cannot be made here, or None."""
    if os.geteuid() != 0:
        return 'a FUSE mount that stops answering needs root'
    if not os.path.exists('/dev/fuse'):
        return 'no /dev/fuse'
    if shutil.which('bindfs') is None:
        return 'no bindfs (make test installs it)'
    return None
