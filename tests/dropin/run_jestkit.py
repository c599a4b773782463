"""`python tests/dropin/run_jestkit.py ARGS` is `jestkit ARGS` with the test-only torchvision
workaround applied first.

Why. A test that runs a `jestkit` command as a subprocess (the README's commands, as written)
gets a fresh interpreter, where open_clip's import of torchvision fails on this project's
machines (a CUDA torchvision next to the CPU torch; see torchvision_ops.py). This launcher
imports torchvision through torchvision_ops.import_torchvision, which does nothing when
torchvision loads on its own, then calls jestkit.cli.main with the command line. It lives in
tests/ and nothing in jestkit imports it: the installed `jestkit` command is unchanged.
"""

from __future__ import annotations

import sys

from torchvision_ops import import_torchvision  # this file's folder is on sys.path as a script


def main() -> int:
    import_torchvision()
    from jestkit.cli import main as jestkit_main

    return jestkit_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
