"""A private OpenSSH sshd on 127.0.0.1 for the tests: own host key, config, authorized_keys, high port."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from bot.processes import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)
    return path


class PrivateSshd:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.host_key = keygen(folder / "host_key")
        self.client_key = keygen(folder / "client_key")
        self.authorized_keys = folder / "authorized_keys"
        self.authorized_keys.write_text((folder / "client_key.pub").read_text())
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {(folder / 'host_key.pub').read_text()}")
        self.log = folder / "sshd.log"
        self.config = folder / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.host_key}\n"
            f"PidFile {folder / 'sshd.pid'}\nAuthorizedKeysFile {self.authorized_keys}\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nLogLevel VERBOSE\nAllowTcpForwarding yes\nMaxStartups 100\n"
            "MaxSessions 100\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrivateSshd:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config), "-E", str(self.log)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text() if self.log.exists() else ''}")
            if self.log.exists() and "Server listening" in self.log.read_text():
                return self
            time.sleep(0.02)
        raise RuntimeError("sshd did not start listening within 10 s")

    def accepted(self) -> int:
        """How many SSH connections sshd has authenticated so far."""
        return self.log.read_text().count("Accepted publickey")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
