"""Headless Chromium for tests: render a page or a file, as a person's browser would.

The flags keep it from reaching out (this machine has no network) and from needing a GPU or
a sandbox; ``HOME`` is the test's own, so the NSS database Chromium reads on Linux
(``$HOME/.pki/nssdb``: trusted CAs, client certificates) is the one the test built.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")


def missing_browser_tools() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is not installed (Debian package chromium)"
    if shutil.which("pk12util") is None or shutil.which("certutil") is None:
        return "pk12util/certutil are not installed (Debian package libnss3-tools)"
    return None


def chromium(home: Path, *args: str, timeout: float = 90) -> str:
    """Run headless Chromium with ``HOME=home`` and a fresh profile; its stdout (``--dump-dom``)."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        env = {**os.environ, "HOME": str(home)}
        run = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], env=env,
                             capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if run.returncode != 0:
        raise AssertionError(f"chromium exited {run.returncode}:\n{run.stderr[-3000:]}")
    return run.stdout
