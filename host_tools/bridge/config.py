"""The bridge's config directory: settings and keys, checked before anything starts.

Files (all optional unless the chosen security profile needs them):

    csms_password          Basic Auth password towards the CSMS (security profiles 1 and 2)
    csms_ca.pem            CA that signed the CSMS certificate (profiles 2 and 3)
    client_cert.pem        the station's client certificate (profile 3)
    client_key.pem         its private key (profile 3)
    app_jwt.secret         HS256 secret of the app's command tokens, or
    app_jwt_public.pem     ES256 public key of the app's command tokens
    mqtt_ca.pem            CA of the MQTT broker (mqtts://)
    mqtt_password          password for the MQTT user given in the broker URL
    mqtt_client_cert.pem, mqtt_client_key.pem   optional client certificate towards the broker

The bridge refuses to start when the directory or any file in it is writable by its
group or others (whoever can replace a key or a CA can impersonate the CSMS or the app),
when a secret or private key is readable by others, or when a symlink in it dangles.
"""

import os
import stat
from pathlib import Path

SECRET_NAMES = ("csms_password", "client_key.pem", "app_jwt.secret", "mqtt_password",
                "mqtt_client_key.pem")


class ConfigDirError(Exception):
    """The config directory cannot be used; the message names the file and the fix."""


def _is_secret(name: str) -> bool:
    return name in SECRET_NAMES or name.endswith((".key", "_key.pem", ".secret"))


def _is_private_key(p: Path) -> bool:
    if not p.name.endswith(".pem") or p.name.endswith(("_public.pem", "_cert.pem", "_ca.pem")):
        return False
    try:
        return b"PRIVATE KEY" in p.read_bytes()[:4096]
    except OSError:
        return False


def check_config_dir(path) -> Path:
    """Raise ConfigDirError if the directory or any file in it is writable by group or
    others, a secret is readable by others, or a symlink in it dangles."""
    d = Path(path)
    try:
        st = d.stat()
    except FileNotFoundError as e:
        raise ConfigDirError(f"config directory {d} does not exist (create it, mode 0750)") from e
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigDirError(f"config directory {d} is not a directory")
    if st.st_mode & stat.S_IWOTH:
        raise ConfigDirError(f"config directory {d} is writable by others "
                             f"(mode {stat.S_IMODE(st.st_mode):04o}); fix with: chmod o-w {d}")
    if st.st_mode & stat.S_IWGRP:
        raise ConfigDirError(f"config directory {d} is writable by its group "
                             f"(mode {stat.S_IMODE(st.st_mode):04o}); fix with: chmod g-w {d}")
    for p in sorted(d.iterdir()):
        lst = p.lstat()
        if stat.S_ISLNK(lst.st_mode):
            try:
                m = p.stat().st_mode      # the target's mode is what counts
            except OSError as e:
                raise ConfigDirError(f"{p} is a symlink to {os.readlink(p)}, which does not exist "
                                     "(a dangling link): fix or remove it") from e
        else:
            m = lst.st_mode
        if stat.S_ISDIR(m):
            continue
        what = "secret" if _is_secret(p.name) else "file"
        if m & (stat.S_IWGRP | stat.S_IWOTH):
            who = "others" if m & stat.S_IWOTH else "its group"
            raise ConfigDirError(f"{what} {p} is writable by {who} "
                                 f"(mode {stat.S_IMODE(m):04o}); fix with: chmod go-w {p}")
        if (_is_secret(p.name) or _is_private_key(p)) and m & stat.S_IROTH:
            raise ConfigDirError(f"secret {p} is readable by others "
                                 f"(mode {stat.S_IMODE(m):04o}); fix with: chmod 600 {p}")
    return d


def secret_text(d, name):
    """The stripped text of a file in the config dir, or None if absent."""
    p = Path(d) / name
    if not p.is_file():
        return None
    return p.read_text(encoding="utf-8").strip()


def file_or_none(d, name):
    p = Path(d) / name
    return str(p) if p.is_file() else None


def default_log_dir() -> Path:
    """/var/log/v2g when writable (a gateway), else the user's state directory."""
    sys_dir = Path("/var/log/v2g")
    try:
        sys_dir.mkdir(parents=True, exist_ok=True)
        if os.access(sys_dir, os.W_OK):
            return sys_dir
    except OSError:
        pass
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "v2g"


def default_state_dir() -> Path:
    sys_dir = Path("/var/lib/v2g")
    try:
        sys_dir.mkdir(parents=True, exist_ok=True)
        if os.access(sys_dir, os.W_OK):
            return sys_dir
    except OSError:
        pass
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "v2g" / "bridge"
