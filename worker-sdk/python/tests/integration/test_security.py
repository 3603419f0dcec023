"""Tokens and TLS against the real broker: the Python client and worker
authenticate with a token, speak TLS, and present a client certificate
where the broker demands one."""

import hashlib
import secrets

import grpc
import pytest

from baton import Baton, Tls, pb
from baton_harness import wait_until

certs = pytest.importorskip("certs", reason="needs the `cryptography` package (the test extra)")


def write_tokens(path, **tokens):
    """``name=(role, secret[, queues])`` -> a token file of their SHA-256."""
    lines = []
    for name, (role, secret, *queues) in tokens.items():
        lines += ["[[token]]", f'name = "{name}"', f'role = "{role}"',
                  f'sha256 = "{hashlib.sha256(secret.encode()).hexdigest()}"']
        if queues:
            lines.append("queues = [" + ", ".join(f'"{q}"' for q in queues[0]) + "]")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def refused(worker, status):
    """The worker process exits 2, naming the broker's status."""
    wait_until(lambda: worker.proc.poll() is not None, 20, f"worker {worker.name} to be refused")
    assert worker.proc.returncode == 2, worker.log()
    assert status in worker.log(), worker.log()


def test_tokens_roles_and_owners(start_broker, start_worker, tmp_path):
    secret = {n: secrets.token_hex(16) for n in ("client", "other", "admin", "worker")}
    path = write_tokens(
        tmp_path / "tokens.toml",
        ci=("client", secret["client"]),
        other=("client", secret["other"]),
        ops=("admin", secret["admin"]),
        w=("worker", secret["worker"], ["general"]),
    )
    broker = start_broker(args=["--tokens", str(path)], token=secret["admin"])
    # The worker takes its token from $BATON_TOKEN.
    start_worker(target=broker, extra_env={"BATON_TOKEN": secret["worker"]})

    app = Baton(broker.address, token=secret["client"])
    result = app.signature("demo.add", (2, 3), immutable=True).apply_async()
    assert result.get(timeout=20) == 5
    assert result.status() == "SUCCEEDED"

    # No token, or an unknown one: UNAUTHENTICATED.
    for token in (None, "not-a-token"):
        stranger = Baton(broker.address, token=token, timeout=5)
        with pytest.raises(grpc.RpcError) as e:  # raised when the refusal is awaited
            stranger.signature("demo.add", (1, 1), immutable=True).apply_async().wait_stored()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stranger.close()
    # Another client does not see the chain at all.
    other = Baton(broker.address, token=secret["other"], timeout=5)
    with pytest.raises(grpc.RpcError) as e:
        other.AsyncResult(result.id).status()
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # Stubs made on app.channel carry the token too; a client is no admin.
    with pytest.raises(grpc.RpcError) as e:
        pb.AdminStub(app.channel).ListQueues(pb.ListQueuesRequest(), timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = Baton(broker.address, token=secret["admin"])
    assert admin.AsyncResult(result.id).status() == "SUCCEEDED"
    pb.AdminStub(admin.channel).ListQueues(pb.ListQueuesRequest(), timeout=5)

    # A worker with a client token, or for a queue its token lacks, is refused.
    refused(start_worker(target=broker, wait=False, args=["--token", secret["client"]]), "PERMISSION_DENIED")
    refused(start_worker(queues=("heavy",), target=broker, wait=False, extra_env={"BATON_TOKEN": secret["worker"]}),
            "PERMISSION_DENIED")
    for a in (app, other, admin):
        a.close()


def test_tls_and_mutual_tls(start_broker, start_worker, tmp_path):
    pki = certs.Pki(tmp_path / "pki")
    server_cert, server_key = pki.issue("broker", server=True)
    client_cert, client_key = pki.issue("worker-1", server=False)
    broker = start_broker(
        args=["--tls-cert", str(server_cert), "--tls-key", str(server_key), "--tls-client-ca", str(pki.ca)],
        tls={"ca": str(pki.ca)},
    )
    start_worker(target=broker, args=["--tls-ca", str(pki.ca), "--tls-cert", str(client_cert), "--tls-key", str(client_key)])

    # A client needs no certificate; here the CA comes as PEM bytes and the
    # broker's name is checked as "localhost" while connecting by IP.
    app = Baton(broker.address, tls=Tls(ca=pki.ca.read_bytes(), domain="localhost"))
    result = app.signature("demo.add", (20, 22), immutable=True).apply_async()
    assert result.get(timeout=20) == 42
    app.close()

    # A worker without a client certificate is refused.
    refused(start_worker(target=broker, wait=False, args=["--tls-ca", str(pki.ca)]), "UNAUTHENTICATED")

    # A client that does not trust the CA, or speaks plaintext, gets nowhere.
    stranger = certs.Pki(tmp_path / "other", name="another CA")
    for tls in ({"ca": str(stranger.ca)}, None):
        lost = Baton(broker.address, tls=tls, timeout=3)
        with pytest.raises(grpc.RpcError) as e:
            lost.signature("demo.add", (1, 1), immutable=True).apply_async().wait_stored()
        assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        lost.close()
