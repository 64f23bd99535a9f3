"""Cost of one passphrase guess: against MANIFEST.json's key check (scrypt) and against a published .gpg file.

A guesser can test a passphrase against either public artefact; the key check must not be the cheaper one.
For the `.gpg` side this times gpg decrypting a 1-byte file encrypted with `crypto.S2K_ARGS` (so the time is
almost all S2K: iterated SHA-256 over 65,011,712 bytes), median of `--repeat` runs. The old fast check (one
SHA-256) is timed too, for scale.

Usage: `python bench/keycheck_bench.py [--repeat 5]`
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

from lmsynth import keycheck
from lmsynth.crypto import decrypt_file, encrypt_file


def _median(fn, repeat: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    """Print seconds per guess for each check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    key = SecretStr("0" * 64)
    with tempfile.TemporaryDirectory() as tmp:
        plain, enc = Path(tmp) / "p", Path(tmp) / "p.gpg"
        plain.write_bytes(b"x")
        encrypt_file(plain, enc, passphrase=key)
        gpg_s = _median(lambda: decrypt_file(enc, Path(tmp) / "out", passphrase=key), args.repeat)
    scrypt_s = _median(lambda: keycheck.make(key), args.repeat)  # a fresh salt each time: no cache hit
    fast_s = _median(lambda: hashlib.sha256(b"lmsynth-source-fingerprint-v1\x1f" + b"0" * 64).hexdigest(), 1000)
    s2k_s = _median(lambda: hashlib.sha256(bytes(65_011_712)).digest(), args.repeat)
    mib = 128 * (1 << keycheck.LOG2_N) * keycheck.R >> 20
    params = f"ln={keycheck.LOG2_N}, r={keycheck.R}, p={keycheck.P}, {mib} MiB"
    print(f"gpg S2K alone (SHA-256 over 65,011,712 bytes): {s2k_s * 1000:9.1f} ms per guess")
    print(f"gpg decrypting a 1-byte .gpg (with start-up):  {gpg_s * 1000:9.1f} ms per guess")
    print(f"scrypt key check ({params}): {scrypt_s * 1000:9.1f} ms per guess")
    print(f"old fast check (one SHA-256):                  {fast_s * 1e6:9.2f} µs per guess")


if __name__ == "__main__":
    main()
