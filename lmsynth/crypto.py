"""OpenPGP symmetric encryption of the gated files, with GnuPG through python-gnupg.

Every call runs in a throwaway, short GNUPGHOME (long paths break the agent socket) with
`--no-symkey-cache`, so no passphrase outlives the call in an agent cache, and the agent is stopped
afterwards. The passphrase goes to gpg on stdin (loopback pinentry), never on a command line.

The output is classic RFC 4880 SKESK v4 + SEIPD (AES256), which plain `gpg --batch --passphrase-fd 0 -d`
decrypts. It is not byte-deterministic: gpg draws a fresh salt and session key each time. Releases
therefore record the digest of the plaintext and reuse the previous ciphertext when it is unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from pydantic import SecretStr

from lmsynth import constants, scratch
from lmsynth.errors import DiskFullError, EncryptionError, PassphraseError
from lmsynth.faults import kill_point
from lmsynth.io import atomic_path, no_space_left


CIPHER = "AES256"
# python-gnupg logs a WARNING for every gpg that exits non-zero; lmsynth reports each failure itself, in one line.
logging.getLogger("gnupg").setLevel(logging.ERROR)
# An explicit key-derivation strength: the strongest iteration count OpenPGP allows, with SHA-256. Leaving it
# to gpg makes the agent calibrate it on every call (seconds each on a busy machine).
S2K_ARGS = ("--s2k-digest-algo", "SHA256", "--s2k-count", "65011712")
# Hint shown with a wrong passphrase: the key is derived from the gated original dataset.
KEY_HINT = "derive it from the original dataset with `lmsynth key --source SRC`"


def encrypt_file(src: Path | str, dst: Path | str, *, passphrase: SecretStr) -> Path:
    """Encrypt `src` symmetrically (AES256, binary OpenPGP) to `dst`, atomically.

    Args:
        src: The plaintext file.
        dst: The `.gpg` file to write.
        passphrase: The symmetric passphrase.

    Returns:
        `dst`.

    Raises:
        PassphraseError: the passphrase is empty or holds a newline/NUL (gpg reads it as one line).
        EncryptionError: gpg failed.
    """
    with open(src, "rb") as f:
        return _encrypt(f, Path(dst), passphrase=passphrase, name=str(src))


def encrypt_stream(chunks: Iterable[bytes], dst: Path | str, *, passphrase: SecretStr) -> Path:
    """Encrypt the bytes of `chunks` like `encrypt_file`, streamed into gpg: no plaintext file is written.

    Raises:
        PassphraseError: the passphrase is empty or holds a newline/NUL.
        EncryptionError: gpg failed.
    """
    return _encrypt(_ChunkReader(chunks), Path(dst), passphrase=passphrase, name=str(dst))


def decrypt_file(src: Path | str, dst: Path | str, *, passphrase: SecretStr) -> Path:
    """Decrypt the OpenPGP file `src` into `dst`, atomically (nothing is left at `dst` on failure).

    Args:
        src: The `.gpg` file.
        dst: The plaintext file to write.
        passphrase: The symmetric passphrase.

    Returns:
        `dst`.

    Raises:
        PassphraseError: the passphrase does not decrypt `src`.
        EncryptionError: `src` is missing or not an OpenPGP file, or gpg failed otherwise.
    """
    src, dst = Path(src), Path(dst)
    secret = _check_passphrase(passphrase)
    if not src.is_file():
        raise EncryptionError(f"{src}: no such file")
    with _gpg() as gpg, atomic_path(dst) as tmp, open(src, "rb") as f:
        res = gpg.decrypt_file(f, passphrase=secret, output=str(tmp), extra_args=["--no-symkey-cache"])
        if not res.ok:
            _check_space(res, tmp, gpg)
            status = _status(res)
            if "bad passphrase" in status or "decryption failed" in status or "bad session key" in res.stderr:
                raise PassphraseError(f"the passphrase does not decrypt {src}; {KEY_HINT}")
            raise EncryptionError(f"{src}: gpg could not decrypt ({status})")
    return dst


# Private helpers


def _encrypt(f: io.RawIOBase | IO[bytes], dst: Path, *, passphrase: SecretStr, name: str) -> Path:
    secret = _check_passphrase(passphrase)
    with _gpg() as gpg, atomic_path(dst) as tmp:
        res = gpg.encrypt_file(
            f,
            recipients=None,
            symmetric=CIPHER,
            passphrase=secret,
            armor=False,
            output=str(tmp),
            extra_args=["--no-symkey-cache", "--compress-algo", "none", *S2K_ARGS],
        )
        error = getattr(f, "error", None)
        if error is not None:
            raise error
        if not res.ok:
            _check_space(res, tmp, gpg)
            raise EncryptionError(f"{name}: gpg could not encrypt ({_status(res)})")
    return dst


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (what python-gnupg copies into gpg's stdin).

    An exception raised by the iterator (a bad record) is kept in `error` and re-raised by the caller:
    python-gnupg reads in a thread, where it would otherwise be lost.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = b""
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        while not self._buf and self.error is None:
            try:
                self._buf = next(self._chunks)
                kill_point("crypto.streaming")  # gpg is running, reading the plaintext from us
            except StopIteration:
                return 0
            except Exception as e:  # noqa: BLE001 — handed back to the calling thread
                self.error = e
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _check_passphrase(passphrase: SecretStr) -> str:
    if not isinstance(passphrase, SecretStr):
        raise PassphraseError("`passphrase` must be a SecretStr")
    secret = passphrase.get_secret_value()
    if not secret:
        raise PassphraseError("the passphrase is empty")
    if any(c in secret for c in "\n\r\0"):
        raise PassphraseError("the passphrase must be one line (no newline or NUL characters)")
    return secret


@contextlib.contextmanager
def _gpg() -> Iterator[object]:
    """A python-gnupg handle on a fresh short GNUPGHOME, torn down (agent included) afterwards."""
    import gnupg

    home = Path(tempfile.mkdtemp(prefix="lg"))  # short: the agent socket path has a length limit
    scratch.register_gnupg_home(home)  # a killed command's agent is stopped by the next command
    try:
        # gpg gets the passphrase on a pipe (`passphrase=`), never from its environment: it inherits no secret.
        yield gnupg.GPG(gnupghome=str(home), encoding="utf-8", env=constants.child_env())
    finally:
        scratch.remove_gnupg_home(home)


def _check_space(res: object, output: Path, gpg: object) -> None:
    """A gpg failure on a full disk is that full disk (gpg itself may say "need symmetric passphrase")."""
    places = (output.parent, Path(getattr(gpg, "gnupghome", None) or output.parent))
    full = next((p for p in places if no_space_left(p)), None)
    if full is None and "No space left on device" in (getattr(res, "stderr", "") or ""):
        full = output.parent
    if full is not None:
        raise DiskFullError(full)


def _status(res: object) -> str:
    status = getattr(res, "status", None) or "unknown status"
    return " ".join(str(status).split())


@contextlib.contextmanager
def decrypt_stream(src: IO[bytes], *, passphrase: SecretStr, name: str) -> Iterator[IO[bytes]]:
    """Yield the plaintext of the OpenPGP stream `src` as gpg writes it: nothing decrypted touches the disk.

    For files too large to decrypt into a scratch copy first (a Hub download read as it arrives). gpg gets
    the passphrase on a pipe of its own (`--passphrase-fd`), never in argv or its environment, which holds
    only its GnuPG home and PATH. The caller must read the stream to its end; gpg's verdict is checked when
    the block ends, so a truncated or tampered file fails there even after the plaintext looked fine.

    Raises:
        PassphraseError: the passphrase does not decrypt `src` (names `name`).
        EncryptionError: `src` is not OpenPGP data, or gpg failed otherwise (names `name`).
    """
    import os
    import subprocess
    import threading

    secret = _check_passphrase(passphrase)
    home = Path(tempfile.mkdtemp(prefix="lg"))  # short: the agent socket path has a length limit
    scratch.register_gnupg_home(home)
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, secret.encode("utf-8") + b"\n")  # one line, far below a pipe's buffer
    finally:
        os.close(write_fd)
    env = constants.child_env(GNUPGHOME=str(home), LC_ALL="C")
    args = ["gpg", "--batch", "--no-tty", "--quiet", "--pinentry-mode", "loopback", "--no-symkey-cache"]
    args += ["--passphrase-fd", str(read_fd), "--status-fd", "2", "--decrypt"]
    try:
        proc = subprocess.Popen(  # noqa: S603 — fixed argv, no secret in it
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(read_fd,),
            env=env,
        )
    except OSError as e:
        scratch.remove_gnupg_home(home)
        raise EncryptionError(f"{name}: cannot run gpg ({e.strerror or e})") from None
    finally:
        os.close(read_fd)
    errors: list[bytes] = []
    feed_error: list[BaseException] = []

    def feed() -> None:
        try:
            while block := src.read(1 << 20):
                proc.stdin.write(block)  # type: ignore[union-attr]
        except BrokenPipeError:
            pass  # gpg stopped reading: its exit status says why
        except Exception as e:  # noqa: BLE001 — handed back to the calling thread
            feed_error.append(e)
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]

    threads = [
        threading.Thread(target=feed, daemon=True),
        threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for t in threads:
        t.start()

    def verdict() -> Exception | None:
        for t in threads:
            t.join()
        status = b"".join(errors).decode("utf-8", "replace")
        if "BAD_PASSPHRASE" in status or "Bad session key" in status:
            return PassphraseError(f"the passphrase does not decrypt {name}")
        if feed_error:
            return EncryptionError(f"{name}: cannot read ({type(feed_error[0]).__name__}: {feed_error[0]})")
        if proc.returncode != 0:
            if "NODATA" in status:
                return EncryptionError(f"{name}: not an OpenPGP file")
            failure = next((ln for ln in status.splitlines() if ln.startswith("gpg:")), f"exit {proc.returncode}")
            return EncryptionError(f"{name}: gpg could not decrypt ({failure.removeprefix('gpg: ')})")
        return None

    try:
        yield proc.stdout  # type: ignore[misc]
        while proc.stdout.read(1 << 20):  # type: ignore[union-attr]  # the rest: gpg checks integrity at the end
            pass
        proc.wait()
    except BaseException as e:
        # A failed read of the plaintext (not gzip, cut short) is usually gpg's own failure: report that one.
        proc.stdout.close()  # type: ignore[union-attr]
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        err = verdict() if isinstance(e, Exception) else None
        if err is not None and (isinstance(err, PassphraseError) or proc.returncode != 0):
            raise err from None
        raise
    finally:
        scratch.remove_gnupg_home(home)
    err = verdict()
    if err is not None:
        raise err
