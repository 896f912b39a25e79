"""A throwaway PKI for one run, made with the openssl command (ECDSA P-256 keys: fast to make).

One CA signs every serving and client certificate; client identities follow Kubernetes'
conventions (CN = user, O = group). The service-account signing key is a separate key pair.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


@dataclass(frozen=True)
class Cert:
    crt: Path
    key: Path


class PKI:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = Cert(self.dir / "ca.crt", self.dir / "ca.key")
        self.sa_key = self.dir / "sa.key"
        self.sa_pub = self.dir / "sa.pub"

    def _genkey(self, key: Path) -> None:
        _openssl(
            "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=self.dir
        )

    def init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._genkey(self.ca.key)
        _openssl(
            "req", "-x509", "-new", "-key", str(self.ca.key), "-days", "3",
            "-subj", "/CN=bndl-test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-out", str(self.ca.crt), cwd=self.dir,
        )  # fmt: skip
        self._genkey(self.sa_key)
        _openssl("ec", "-in", str(self.sa_key), "-pubout", "-out", str(self.sa_pub), cwd=self.dir)

    def issue(
        self,
        name: str,
        cn: str,
        orgs: tuple[str, ...] = (),
        *,
        server: bool = False,
        client: bool = False,
        ips: tuple[str, ...] = (),
        dns: tuple[str, ...] = (),
    ) -> Cert:
        cert = Cert(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        self._genkey(cert.key)
        subj = "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"
        csr = self.dir / f"{name}.csr"
        _openssl(
            "req", "-new", "-key", str(cert.key), "-subj", subj, "-out", str(csr), cwd=self.dir
        )
        usages = [u for u, on in (("serverAuth", server), ("clientAuth", client)) if on]
        ext = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={','.join(usages)}",
        ]
        sans = [f"IP:{i}" for i in ips] + [f"DNS:{d}" for d in dns]
        if sans:
            ext.append("subjectAltName=" + ",".join(sans))
        extfile = self.dir / f"{name}.ext"
        extfile.write_text("\n".join(ext) + "\n")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca.crt), "-CAkey", str(self.ca.key),
            "-set_serial", str(secrets.randbits(63)), "-days", "3", "-extfile", str(extfile),
            "-out", str(cert.crt),
            cwd=self.dir,
        )  # fmt: skip
        csr.unlink()
        extfile.unlink()
        return cert


def kubeconfig(path: Path, server: str, ca: Path, user: str, cert: Cert) -> Path:
    """Write a kubeconfig with file references (no embedding: files stay in the run directory)."""
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: bndl-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {cert.crt}
    client-key: {cert.key}
contexts:
- name: bndl-test
  context:
    cluster: bndl-test
    user: {user}
current-context: bndl-test
"""
    )
    return path
