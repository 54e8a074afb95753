"""Run vmbackup.py with one of its functions replaced by one that raises an
error, as a disk that fills up or a bug would: for the tests that check that
any error after the engine is reached is a reported failure.

    python inject.py FUNCTION ERROR -- VMBACKUP-ARGUMENTS...

ERROR is ENOSPC (OSError: No space left on device), EACCES, or bug (a
KeyError, an error vmbackup.py does not expect)."""
import errno
import os
import runpy
import sys


def main():
    name, kind, separator = sys.argv[1:4]
    assert separator == '--', sys.argv
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                          os.pardir, 'vmbackup.py')
    sys.argv = [script] + sys.argv[4:]
    namespace = runpy.run_path(script, run_name='vmbackup_injected')
    main_function = namespace['main']
    globals_ = main_function.__globals__
    original = globals_[name]

    def broken(*args, **kwargs):
        if kind == 'bug':
            raise KeyError('injected')
        code = getattr(errno, kind)
        raise OSError(code, os.strerror(code), '/injected/' + name)

    broken.__wrapped__ = original
    globals_[name] = broken
    sys.exit(main_function(sys.argv[1:]))


if __name__ == '__main__':
    main()
