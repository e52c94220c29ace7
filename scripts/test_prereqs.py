"""Install what the test suite needs beyond Python packages: Debian's Chromium for the
browser tests (as the machine's root, through apt-get). Prints what it does; idempotent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def main() -> int:
    if shutil.which("chromium") or os.path.exists("/usr/bin/chromium"):
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("Chromium is missing and cannot be installed here (need root and apt-get): "
              "install Debian's `chromium` package for the browser tests", file=sys.stderr)
        return 1
    print("==> installing Chromium from Debian's packages for the browser tests", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"], check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
