"""`v2g api` refuses bad start-up input with a message naming it, before serving anything."""

import subprocess
import sys
from pathlib import Path

V2G = str(Path(sys.executable).with_name("v2g"))


def run(*args):
    return subprocess.run([V2G, "api", *args], capture_output=True, text=True, timeout=60)


def base(cfg, **over):
    a = {"--listen": "127.0.0.1:1", "--mqtt": "mqtt://v2g-api@127.0.0.1:1", "--issuer": "http://127.0.0.1:9",
         "--audience": "https://v2g-api.test", "--config-dir": str(cfg), **over}
    return [x for kv in a.items() for x in kv]


def test_bad_start_up_input_is_named(tmp_path):
    cfg = tmp_path / "etc"
    cfg.mkdir(mode=0o750)
    p = run(*base(cfg, **{"--listen": "nowhere"}))
    assert p.returncode == 2 and "--listen" in p.stderr and "HOST:PORT" in p.stderr
    p = run(*base(tmp_path / "missing"))
    assert p.returncode == 2 and "does not exist" in p.stderr
    p = run(*base(cfg))                                   # no key to sign commands with
    assert p.returncode == 2 and "app_jwt_key.pem" in p.stderr
    (cfg / "app_jwt.secret").write_text("s" * 32)
    (cfg / "app_jwt.secret").chmod(0o600)
    p = run(*base(cfg, **{"--store": "mysql://db/v2g"}))
    assert p.returncode == 2 and "unknown engine 'mysql'" in p.stderr
    p = run(*base(cfg, **{"--store": "postgresql://v2g@127.0.0.1:1/v2g"}))   # nothing listens on port 1
    assert p.returncode == 2 and "coordinator does not answer" in p.stderr
    p = run(*base(cfg, **{"--mqtt": "http://broker", "--store": f"sqlite:///{tmp_path}/h.db"}))
    assert p.returncode == 2 and "mqtt:// or mqtts://" in p.stderr
    (cfg / "app_jwt.secret").chmod(0o644)                 # a secret others can read
    p = run(*base(cfg))
    assert p.returncode == 2 and "app_jwt.secret" in p.stderr
