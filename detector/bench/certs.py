"""Throw-away TLS material for tests and the reliability script: keys and certificates for 127.0.0.1 and localhost,
made with the openssl command line (valid for one day)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_cert(folder: Path, name: str, ca: str | None = None) -> tuple[Path, Path]:
    """``folder/name.key`` and ``folder/name.crt``: self-signed, or signed by the CA ``ca`` made here before."""
    key, crt = folder / f"{name}.key", folder / f"{name}.crt"
    subj = ["-subj", f"/CN={name}"]
    san = ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    if ca is None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                        "-days", "1", *subj, *san], check=True, capture_output=True)
    else:
        csr = folder / f"{name}.csr"
        subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                        *subj], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", folder / f"{ca}.crt", "-CAkey",
                        folder / f"{ca}.key", "-CAcreateserial", "-out", crt, "-days", "1"], check=True,
                       capture_output=True)
    return key, crt
