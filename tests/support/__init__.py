"""What the tests build on and are not tests: the fake site, the fake
engine, the monitoring endpoint, the FUSE mount that stops answering, the
real-gluster lab, and the scripts made from them (inject.py, demo.py).
tests/conftest.py puts tests/ on sys.path: `from support.site import Site`.

Nothing is imported here: georep.py runs under any python3 by itself."""
