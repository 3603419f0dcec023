"""Token and TLS options of the app, the worker CLI and the channel helpers."""

import pytest

from baton import Baton, Tls, _transport
from baton.cli import parser


def test_tls_forms():
    assert _transport.tls_config(None) is None and _transport.tls_config(False) is None
    assert _transport.tls_config(True) == Tls()
    assert _transport.tls_config({"ca": "ca.pem", "domain": "b"}) == Tls(ca="ca.pem", domain="b")

    class Settings:
        ca = b"pem"
        cert = None
        key = None

    assert _transport.tls_config(Settings()) == Tls(ca=b"pem")
    with pytest.raises(ValueError, match="unknown key"):
        _transport.tls_config({"cafile": "x"})
    with pytest.raises(ValueError, match="cert and key go together"):
        Tls(cert="c.pem")
    with pytest.raises(ValueError, match="tls must be"):
        _transport.tls_config("yes")


def test_pem_sources(tmp_path):
    path = tmp_path / "ca.pem"
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    assert _transport._pem(str(path), "ca") == path.read_bytes()
    assert _transport._pem(path, "ca") == path.read_bytes()
    assert _transport._pem(b"raw", "ca") == b"raw"
    assert _transport._pem("-----BEGIN X-----", "ca") == b"-----BEGIN X-----"
    with pytest.raises(ValueError, match="cannot read ca"):
        _transport._pem(str(tmp_path / "missing.pem"), "ca")


def test_tokens(monkeypatch):
    assert _transport.check_token(" abc\n") == "abc"
    assert _transport.check_token("") is None
    with pytest.raises(ValueError, match="visible ASCII"):
        _transport.check_token("a b")
    assert _transport.metadata("t") == (("authorization", "Bearer t"),)
    assert _transport.metadata(None) == ()
    monkeypatch.setenv("BATON_TOKEN", "from-env")
    assert Baton().token == "from-env"
    assert Baton(token="given").token == "given"
    monkeypatch.delenv("BATON_TOKEN")
    assert Baton().token is None


def test_app_settings_reset_the_channel():
    app = Baton("127.0.0.1:1", token="t", tls={"ca": b"pem"})
    assert app.tls == Tls(ca=b"pem")
    client = app.client
    assert (client.token, client.tls) == ("t", Tls(ca=b"pem"))
    app.tls = None
    assert app.client is not client and app.client.tls is None


def test_worker_cli_flags():
    a = parser().parse_args(
        ["worker", "-A", "m", "--token", "t", "--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", "k.pem",
         "--tls-domain", "broker"]
    )
    assert (a.token, a.tls_ca, a.tls_cert, a.tls_key, a.tls_domain, a.tls) == (
        "t", "ca.pem", "c.pem", "k.pem", "broker", False)
    assert parser().parse_args(["worker", "-A", "m", "--tls"]).tls is True
