"""`v2g secc` refuses to start on a missing, expired or mismatched certificate or key."""

import shutil

import pytest
from click.testing import CliRunner
from v2g_pki import make

from host_tools.commands.secc import cli
from host_tools.secc import pki


def run(config_dir, *extra):
    # lo exists everywhere; a socket URL passes the port check: the PKI is checked before either is used
    return CliRunner().invoke(cli, ["--iface", "lo", "--link", "socket://127.0.0.1:9", "--config-dir", str(config_dir),
                                    "--log-dir", str(config_dir / "log"), *extra])


def test_a_good_chain_passes(tmp_path):
    assert "SECC" in pki.check(make(tmp_path / "pki"))


@pytest.mark.parametrize("name", ["secc_chain.pem", "secc_key.pem", "v2g_root.pem"])
def test_missing_file_refused(tmp_path, name):
    d = make(tmp_path / "pki")
    (d / name).unlink()
    r = run(d)
    assert r.exit_code != 0
    assert "refusing to start" in r.output and name in r.output and "missing" in r.output


def test_expired_leaf_refused(tmp_path):
    d = make(tmp_path / "pki", leaf_expired=True)
    r = run(d)
    assert r.exit_code != 0 and "expired" in r.output and "SECC DE*V2G*E1" in r.output


def test_key_of_another_certificate_refused(tmp_path):
    d = make(tmp_path / "pki")
    other = make(tmp_path / "other")
    shutil.copy(other / "secc_key.pem", d / "secc_key.pem")
    r = run(d)
    assert r.exit_code != 0 and "does not belong to the certificate" in r.output


def test_chain_from_another_root_refused(tmp_path):
    d = make(tmp_path / "pki")
    other = make(tmp_path / "other", root_cn="Another Root")
    shutil.copy(other / "v2g_root.pem", d / "v2g_root.pem")
    r = run(d)
    assert r.exit_code != 0 and "is not issued by" in r.output


def test_no_tls_needs_no_certificates(tmp_path):
    assert pki.PkiError   # --no-tls skips the check: the start fails later, on the venv or link, not on PKI
    r = run(tmp_path, "--no-tls")
    assert "refusing to start" not in r.output
