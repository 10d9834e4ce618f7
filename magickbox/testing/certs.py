"""A throwaway certificate authority for tests: a CA, and server and client certificates
it signed, made with the openssl command line (PEM files in a folder)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class ThrowawayCA:
    ca: Path  # the CA's certificate: what peers trust
    server: Pair  # for localhost and 127.0.0.1
    client: Pair
    stranger: Pair  # a client certificate signed by another CA


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _self_signed(folder: Path, name: str) -> Pair:
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", pair.key, "-out", pair.cert)  # fmt: skip
    return pair


def _signed(folder: Path, name: str, ca: Pair, san: str) -> Pair:
    pair = Pair(folder / f"{name}.crt", folder / f"{name}.key")
    csr, ext = folder / f"{name}.csr", folder / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", pair.key, "-out", csr)  # fmt: skip
    _openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
             "-days", "2", "-extfile", ext, "-out", pair.cert)  # fmt: skip
    return pair


def make_test_ca(folder: Path) -> ThrowawayCA:
    """A CA with a server certificate (localhost, 127.0.0.1) and client certificates."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = _self_signed(folder, "ca")
    other = _self_signed(folder, "other-ca")
    return ThrowawayCA(
        ca=ca.cert,
        server=_signed(folder, "server", ca, "DNS:localhost,IP:127.0.0.1"),
        client=_signed(folder, "client", ca, "DNS:client"),
        stranger=_signed(folder, "stranger", other, "DNS:stranger"),
    )
