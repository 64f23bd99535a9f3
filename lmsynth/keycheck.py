"""The public key check in MANIFEST.json (`source_fingerprint`): scrypt of the passphrase, salted, slow on purpose.

It lets a re-release tell that it holds the published key (so it reuses the published ciphertexts, or says
plainly that the key differs) and lets `verify` refuse a wrong key before decrypting. Being public, it must
not make guessing the passphrase any cheaper than the published `.gpg` files already do: those cost one
OpenPGP S2K per guess (iterated, salted SHA-256 over 65,011,712 bytes, `crypto.S2K_ARGS`). scrypt with
N=2^15, r=8, p=1 costs more on every kind of hardware: about 3x the CPU time of that S2K here, and 32 MiB
of memory per guess where the S2K needs none, which is what makes GPU and ASIC guessing expensive (see
`bench/keycheck_bench.py`). So the check is not the weak point.

Format (PHC string): `scrypt$ln=15,r=8,p=1$<salt, base64>$<32-byte digest, base64>`, with a fresh random
16-byte salt; a re-release with the same key keeps the published string, so its MANIFEST.json is unchanged.
Checks in any other format (the fast SHA-256 of earlier versions) are ignored: no reuse, no early refusal.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re

from pydantic import SecretStr


SCHEME = "scrypt"
LOG2_N = 15
R = 8
P = 1
SALT_BYTES = 16
DIGEST_BYTES = 32
_PATTERN = re.compile(r"^scrypt\$ln=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")


def make(passphrase: SecretStr, *, salt: bytes | None = None) -> str:
    """A new key check of `passphrase` (random salt unless given)."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = _scrypt(passphrase, salt, LOG2_N, R, P)
    return f"{SCHEME}$ln={LOG2_N},r={R},p={P}${_b64(salt)}${_b64(digest)}"


def matches(check: str | None, passphrase: SecretStr | None) -> bool:
    """Whether `check` is a key check of `passphrase` (False when either is missing or the format is unknown)."""
    parsed = _parse(check)
    if parsed is None or passphrase is None:
        return False
    ln, r, p, salt, digest = parsed
    return hmac.compare_digest(_scrypt(passphrase, salt, ln, r, p), digest)


def differs(check: str | None, passphrase: SecretStr | None) -> bool:
    """Whether `check` is a key check this version can read and `passphrase` does not match it."""
    return passphrase is not None and _parse(check) is not None and not matches(check, passphrase)


# Private helpers


def _parse(check: str | None) -> tuple[int, int, int, bytes, bytes] | None:
    m = _PATTERN.match(check or "")
    if m is None:
        return None
    ln, r, p = (int(g) for g in m.groups()[:3])
    if not (10 <= ln <= 24 and 1 <= r <= 32 and 1 <= p <= 16):
        return None
    return ln, r, p, base64.b64decode(m.group(4)), base64.b64decode(m.group(5))


def _scrypt(passphrase: SecretStr, salt: bytes, ln: int, r: int, p: int) -> bytes:
    return _scrypt_cached(passphrase.get_secret_value(), salt, ln, r, p)


@functools.lru_cache(maxsize=4)  # a release checks the same key against the same check more than once
def _scrypt_cached(secret: str, salt: bytes, ln: int, r: int, p: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(
        secret.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r * p + (64 << 20),
        dklen=DIGEST_BYTES,
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
