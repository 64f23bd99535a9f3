"""Every exception lmsynth raises; `str(err)` is always one line a user can act on."""

from __future__ import annotations

from pathlib import Path


class LmsynthError(Exception):
    """Root of every lmsynth error."""


# ---------------------------------------------------------------------------
# INPUT ERRORS
# ---------------------------------------------------------------------------


class InputRecordError(LmsynthError, ValueError):
    """A record in an input file is malformed; names the file, line and field."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = " ".join(message.split())
        where = self.path if line is None else f"{self.path}: line {line}"
        if field:
            where += f": field `{field}`"
        super().__init__(f"{where}: {self.message}")


class MissingRunsError(InputRecordError):
    """A release's run folders are not here (e.g. a fresh checkout); names the subsets and how to make them."""

    def __init__(self, missing: list[tuple[str, str]], *, commands: list[str]) -> None:
        self.subsets = [config for config, _ in missing]
        where = ", ".join(f"`{config}` ({path})" for config, path in missing)
        super().__init__(
            missing[0][1],
            None,
            None,
            f"no such file or folder: the records of subset(s) {where} are missing. Make them with "
            + "; ".join(f"`{c}`" for c in commands)
            + ", or read run folders staged on the Hub with `--runs hf://datasets/ORG/NAME@REVISION`"
            + ", or try the bundled sample with `lmsynth demo`",
        )


class SourceError(LmsynthError, OSError):
    """A source cannot be opened or read (missing file, unreadable, unknown format, no access)."""

    def __init__(self, source: str, message: str) -> None:
        self.source = source
        super().__init__(f"{source}: {message}")


class ConfigError(LmsynthError, ValueError):
    """A YAML config (pipeline, rules, manifest) fails validation; names the file and key path."""

    def __init__(self, path: Path | str, key: str | None, message: str) -> None:
        self.path = str(path)
        self.key = key
        where = f"{self.path}: `{key}`" if key else self.path
        super().__init__(f"{where}: {' '.join(message.split())}")


class ManifestError(ConfigError):
    """A release manifest is invalid; names the subset and the field."""

    def __init__(self, path: Path | str, subset: str | None, field: str | None, message: str) -> None:
        self.subset = subset
        self.field = field
        key = ".".join(p for p in (f"subsets[{subset}]" if subset else None, field) if p) or None
        super().__init__(path, key, message)


# ---------------------------------------------------------------------------
# SECRET / CRYPTO ERRORS
# ---------------------------------------------------------------------------


class PassphraseError(LmsynthError, ValueError):
    """No passphrase was given, or the given one does not decrypt a file."""


class EncryptionError(LmsynthError, RuntimeError):
    """GnuPG failed to encrypt or decrypt for a reason other than a wrong passphrase."""


# ---------------------------------------------------------------------------
# RELEASE ERRORS
# ---------------------------------------------------------------------------


class LeakError(LmsynthError, RuntimeError):
    """A public file of a release contains gated instruction text."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class ChecksumError(LmsynthError, RuntimeError):
    """A file of a release does not match MANIFEST.json."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class VerifyError(LmsynthError, RuntimeError):
    """A published release fails verification (counts, loading, decryption)."""


# ---------------------------------------------------------------------------
# TARGET / HUB ERRORS
# ---------------------------------------------------------------------------


class TargetError(LmsynthError, RuntimeError):
    """A target URI is malformed or a target cannot be reached or written."""

    def __init__(self, target: str, message: str) -> None:
        self.target = target
        super().__init__(f"{target}: {message}")


class TagConflictError(TargetError):
    """The version tag already exists on a target with different content."""

    def __init__(self, target: str, tag: str, message: str | None = None) -> None:
        self.tag = tag
        super().__init__(
            target, message or f"tag `{tag}` already exists with different content; pass --force to move it"
        )


class HubAuthError(TargetError):
    """The hub refused the credentials (missing, expired or without write access)."""


class HubRateLimitError(TargetError):
    """The hub kept answering 429/5xx after all retries."""


# ---------------------------------------------------------------------------
# PIPELINE ERRORS
# ---------------------------------------------------------------------------


class PipelineError(LmsynthError, RuntimeError):
    """A pipeline run failed (engine, step or shard failure)."""


class ShardError(PipelineError):
    """Shard outputs are missing, duplicated or from a different pipeline fingerprint."""


# ---------------------------------------------------------------------------
# SCALE ERRORS (sharded runs, gather, Ray)
# ---------------------------------------------------------------------------


class ShardSpecError(LmsynthError, ValueError):
    """A shard spec such as `--shard 2/3` is malformed or out of range; names the option."""

    def __init__(self, option: str, value: str, message: str) -> None:
        self.option = option
        self.value = value
        super().__init__(f"`{option}` {value!r}: {message}")


class ShardSetError(ShardError):
    """The shard run folders given to gather do not form one complete set; names the shards at fault."""

    def __init__(self, reason: str, shards: list[str], message: str) -> None:
        self.reason = reason  # "missing" | "duplicated" | "unfinished" | "mismatch" | "invalid"
        self.shards = shards
        super().__init__(message)


class RayResourceError(PipelineError):
    """A Ray run asks for more CPUs or GPUs than the cluster has (Ray would wait forever)."""

    def __init__(self, resource: str, needed: float, available: float, message: str) -> None:
        self.resource = resource
        self.needed = needed
        self.available = available
        super().__init__(message)


# ---------------------------------------------------------------------------
# SOURCE ERRORS (rows of columnar and streamed sources)
# ---------------------------------------------------------------------------


class InputRowError(InputRecordError):
    """A row of a Parquet file or hub dataset is malformed; names the file (or dataset), row number and field."""

    def __init__(self, path: Path | str, row: int, field: str | None, message: str) -> None:
        super().__init__(path, row, field, message)
        where = f"{self.path}: row {row}"
        if field:
            where += f": field `{field}`"
        self.args = (f"{where}: {self.message}",)


class OutDirError(LmsynthError, ValueError):
    """An output folder may not be replaced (an input, the target, the current folder, someone else's folder).

    Names the output folder and the path it collides with; raised before any work.
    """

    def __init__(self, out: str, other: str, message: str) -> None:
        self.out = out
        self.other = other
        super().__init__(f"{message}; choose another output folder")


class ArgumentError(LmsynthError, ValueError):
    """An argument of a library verb is invalid; names the argument."""

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(f"`{argument}` {message}")


# ---------------------------------------------------------------------------
# ENVIRONMENT ERRORS
# ---------------------------------------------------------------------------


class MissingDependencyError(LmsynthError, ImportError):
    """An optional dependency is not installed; names the extra that provides it."""

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(f"`{package}` is not installed; install it with: pip install 'lmsynth[{extra}]'")


def require(module: str, *, extra: str) -> None:
    """Raise `MissingDependencyError` naming the extra when `module` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(module, extra)


class DiskFullError(LmsynthError, OSError):
    """A write failed for want of space (ENOSPC); names the path, and what was left when it matters."""

    def __init__(self, path: Path | str, detail: str | None = None) -> None:
        self.path = str(path)
        super().__init__(f"No space left on device: {self.path}" + (f" ({detail})" if detail else ""))


UNNAMED = "(a file it did not name)"


def disk_full(exc: BaseException) -> DiskFullError | None:
    """The `DiskFullError` for `exc` when it, or an exception it was raised from, is an ENOSPC; else None."""
    import errno

    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFullError):
            return e
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return DiskFullError(e.filename if e.filename is not None else UNNAMED)
        e = e.__cause__ or e.__context__
    return None


# ---------------------------------------------------------------------------
# EXPORT ERRORS
# ---------------------------------------------------------------------------


class ExportError(LmsynthError, ValueError):
    """An export was asked for with bad options or an input folder `recover` did not write."""
