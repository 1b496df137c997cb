"""Where a development stack keeps its files: the one list ``mplogin dev``, the doctor and the
bench name them by.

Everything lives under the data dir (``MPLOGIN_DATA_DIR``, ``.mplogin`` by default, which git
ignores) and is private to the user who runs it (``shared.private_files``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auth_worker.secretbox import DEV_SECRETBOX_FILE

SECRETS_DIR = "dev-secrets"
STANDIN_PID_GLOB = "nx-27017-*.pid"
"""The pid files the stand-in writes in the logs folder (``mplogin.standin``)."""


@dataclass(frozen=True)
class DevFiles:
    """The files of one data dir."""

    data: Path

    @property
    def apps_file(self) -> Path:
        """The apps file ``mplogin dev`` writes at every start."""
        return self.data / "apps.toml"

    @property
    def secrets(self) -> Path:
        """The dev apps' secrets and keys (named in the apps file, relative to it)."""
        return self.data / SECRETS_DIR

    @property
    def logs(self) -> Path:
        """One log file per process, and the stand-in's pid files."""
        return self.data / "logs"

    @property
    def keys(self) -> Path:
        """The signing keys (unless MPLOGIN_KEYS_DIR says otherwise)."""
        return self.data / "keys"

    @property
    def mongo(self) -> Path:
        """The stand-in's database."""
        return self.data / "mongo"

    @property
    def secretbox_key(self) -> Path:
        """The session_key encryption key a development worker generates."""
        return self.data / DEV_SECRETBOX_FILE

    def log(self, name: str) -> Path:
        """The log file of the process ``name``."""
        return self.logs / f"{name}.log"

    @staticmethod
    def secret_ref(name: str) -> str:
        """How the apps file names a file of the secrets folder (relative to the apps file)."""
        return f"{SECRETS_DIR}/{name}"
