"""Install what the test suite needs beyond Python packages, from Debian's packages (as the
machine's root, through apt-get): Chromium for the browser tests and bubblewrap, the
sandbox agents run terraform in (the sandbox tests always run with it). Prints what it does;
idempotent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# Debian package -> the executable that shows it is installed, and what it is for.
PACKAGES = {
    "chromium": ("chromium", "the browser tests"),
    "bubblewrap": ("bwrap", "the terraform sandbox (agents and its tests)"),
}


def installed(executable: str) -> bool:
    return bool(shutil.which(executable)) or os.path.exists(f"/usr/bin/{executable}")


def main() -> int:
    # `make run` asks for the sandbox only (`bubblewrap`); `make test` for everything.
    wanted = sys.argv[1:] or list(PACKAGES)
    missing = [name for name in wanted if not installed(PACKAGES[name][0])]
    if not missing:
        return 0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        for name in missing:
            print(f"{name} is missing and cannot be installed here (need root and apt-get): "
                  f"install Debian's `{name}` package for {PACKAGES[name][1]}", file=sys.stderr)
        return 1
    print(f"==> installing {', '.join(missing)} from Debian's packages "
          f"({'; '.join(PACKAGES[n][1] for n in missing)})", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
