"""An S3-compatible store through obstore: check, conditional put, find, links, reads.

Configuration is the standard AWS environment, read by obstore itself:
``AWS_ENDPOINT_URL`` (MinIO, R2, B2, a local server), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, and
``AWS_ALLOW_HTTP=true`` for an ``http://`` endpoint.  Nothing here prints.

Every video goes up with a conditional put (``If-None-Match: *``): a name that
holds an object already is never replaced (:class:`Taken`).  One over
:data:`SINGLE_PUT_MAX` streams in parts to a staging name and is copied into
place by a copy that completes only if the name holds nothing, its metadata
kept beside it (such a copy drops it).  The store's
errors become batchvid's: a bucket that does not exist or credentials it
refuses are :class:`~batchvid.errors.OutputError` (exit 2); a store that does
not answer is :class:`~batchvid.errors.StoreUnreachable` (videos wait).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from ..errors import OutputError, StoreUnreachable
from .target import OutputTarget

if TYPE_CHECKING:
    from obstore.store import S3Store

__all__ = ["LINK_LIFETIME", "S3Outputs", "Taken"]

#: How long a report's presigned links last: SigV4's longest (seven days).
LINK_LIFETIME: Final = timedelta(days=7)
#: The longest :meth:`S3Outputs.read_all` waits for every poster of a contact sheet.
READ_ALL_WITHIN_S: Final = 120.0
#: A request that takes longer than this has failed (a video of tens of MB included).
REQUEST_TIMEOUT: Final = "300s"
_CODE: Final = re.compile(r"<Code>([A-Za-z]+)</Code>")
_REFUSED: Final = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
        "Unauthorized",
    }
)


#: Videos up to this size go up in one conditional PutObject (obstore holds it in memory
#: while it is sent).  Larger ones stream in parts to a staging name and are copied into
#: place only if the name holds nothing (a multipart copy whose completion carries
#: ``If-None-Match: *``); their metadata, which such a copy drops, waits beside them.
SINGLE_PUT_MAX: Final = 64 * 1024 * 1024
#: The part size of those uploads (S3's least is 5 MiB; the last part may be smaller).
PART_SIZE: Final = 8 * 1024 * 1024
#: Where large videos are staged, and where their metadata is kept (under the prefix).
STAGING: Final = ".batchvid/incoming"
PROOFS: Final = ".batchvid/proofs"
#: The attributes every object has; any other is metadata of batchvid's own.
_STANDARD: Final = frozenset(
    {"Content-Type", "Content-Disposition", "Content-Encoding", "Content-Language",
     "Cache-Control", "Storage-Class"}
)  # fmt: skip
#: Error codes an S3 server answers when trying again later may work.
_TRANSIENT: Final = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed"}
)


class Taken(Exception):
    """The name holds an object already: nothing was written."""


class S3Outputs:
    """One bucket and prefix of an S3-compatible store (see the module docstring)."""

    def __init__(self, target: OutputTarget) -> None:
        assert target.bucket is not None
        try:
            from obstore.store import S3Store
        except ImportError:  # pragma: no cover - the dev install has it
            raise OutputError(
                f"{target.uri}: writing videos to a store needs obstore: pip install 'batchvid[s3]'"
            ) from None
        self.target = target
        self.where = os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        try:
            self._store: S3Store = S3Store(
                target.bucket,
                prefix=target.prefix or None,
                # Given here, these replace what obstore reads from the environment's
                # client settings: AWS_ALLOW_HTTP must be passed on by hand.
                client_options={
                    "timeout": REQUEST_TIMEOUT,
                    "connect_timeout": "10s",
                    "allow_http": os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true"),
                },
                retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=60)},
                # How a copy refuses to replace (large videos): S3's own conditional
                # multipart completion, unless the environment names another way (R2's
                # header, say).
                copy_if_not_exists=os.environ.get("AWS_COPY_IF_NOT_EXISTS", "multipart"),
            )
        except Exception as exc:  # obstore's configuration errors (a bad endpoint, say)
            raise OutputError(f"{target.uri}: the store cannot be set up: {exc}") from None

    def check(self) -> None:
        """The bucket exists and takes these credentials: list one name under the prefix.
        Raises OutputError (or StoreUnreachable) saying which, before anything is paid.

        Blocking, on purpose: an async listing that fails can leave work of obstore's
        runtime behind that outlives a short event loop (the process then aborted at
        exit); a caller in a loop runs this on a worker thread."""
        import obstore

        try:
            next(iter(obstore.list(self._store, chunk_size=1)), None)
        except Exception as exc:
            raise self._error(exc, "cannot be used") from None

    async def find(self, name: str) -> tuple[dict[str, str], dict[str, Any]] | None:
        """The object ``name``'s metadata and facts (size, ETag), or ``None`` if none."""
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            result = await obstore.get_async(self._store, name, options={"head": True})
        except (NotFoundError, FileNotFoundError):
            return None
        except Exception as exc:
            raise self._error(exc, f"did not say whether {name} exists") from None
        attributes = dict(result.attributes)
        if not set(attributes) - _STANDARD:  # none of its own: a large video's wait beside it
            attributes.update(await self._proof(name) or {})
        return attributes, dict(result.meta)

    async def _proof(self, name: str) -> dict[str, str] | None:
        """The metadata kept beside a large video (``None``: none)."""
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            result = await obstore.get_async(self._store, f"{PROOFS}/{name}.json")
            found = json.loads(bytes(await result.bytes_async()))
        except (NotFoundError, FileNotFoundError, ValueError):
            return None
        except Exception as exc:
            raise self._error(exc, f"did not give what {name} holds") from None
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else None

    async def put_new(self, name: str, file: Path, attributes: Mapping[str, str]) -> str | None:
        """Upload ``file`` as ``name`` unless the name holds an object (:class:`Taken`);
        the new object's ETag."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        if file.stat().st_size > SINGLE_PUT_MAX:
            return await self._put_large(name, file, attributes)
        try:
            put = await obstore.put_async(
                self._store, name, file, mode="create", attributes=dict(attributes)
            )
        except (AlreadyExistsError, PreconditionError, FileExistsError):
            raise Taken(name) from None
        except OSError as exc:
            if not file.exists():  # the local file, not the store: the caller's to handle
                raise
            raise self._error(exc, f"did not take {name}") from None
        except Exception as exc:
            raise self._error(exc, f"did not take {name}") from None
        return put.get("e_tag")

    async def _put_large(self, name: str, file: Path, attributes: Mapping[str, str]) -> str | None:
        """A large video: its metadata beside it (conditional; the same again is this
        video's own earlier try), its bytes streamed in parts to a staging name, then
        copied to ``name`` unless the name holds an object (:class:`Taken`)."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        try:
            await obstore.put_async(
                self._store, f"{PROOFS}/{name}.json", json.dumps(dict(attributes)).encode(),
                mode="create", attributes={"Content-Type": "application/json"},
            )  # fmt: skip
        except (AlreadyExistsError, PreconditionError):
            if await self._proof(name) != dict(attributes):
                raise Taken(name) from None
        except Exception as exc:
            raise self._error(exc, f"did not take what {name} holds") from None
        staging = f"{STAGING}/{uuid.uuid4().hex}-{PurePosixPath(name).name}"
        try:
            writer = obstore.open_writer_async(self._store, staging, buffer_size=PART_SIZE)
            with file.open("rb") as source:
                while chunk := await anyio.to_thread.run_sync(source.read, PART_SIZE):
                    await writer.write(chunk)
            await writer.close()
            await obstore.copy_async(self._store, staging, name, overwrite=False)
        except (AlreadyExistsError, PreconditionError, FileExistsError):
            raise Taken(name) from None
        except OSError as exc:
            if not file.exists():
                raise
            raise self._error(exc, f"did not take {name}") from None
        except Exception as exc:
            raise self._error(exc, f"did not take {name}") from None
        finally:
            with contextlib.suppress(Exception), anyio.CancelScope(shield=True):
                await obstore.delete_async(self._store, staging)
        found = await self.find(name)
        return found[1].get("e_tag") if found else None

    async def read(self, name: str) -> bytes:
        """The bytes of a small object (a poster)."""
        import obstore

        try:
            result = await obstore.get_async(self._store, name)
            return bytes(await result.bytes_async())
        except Exception as exc:
            raise self._error(exc, f"did not give {name}") from None

    def presigned(self, uris: Iterable[str], lifetime: timedelta = LINK_LIFETIME) -> dict[str, str]:
        """Presigned GET links to the objects ``uris`` name under this prefix, valid for
        ``lifetime`` (signed here: no request is made)."""
        import obstore

        names = {uri: name for uri in uris if (name := self.name_of(uri)) is not None}
        if not names:
            return {}
        try:
            urls = obstore.sign(self._store, "GET", list(names.values()), lifetime)
        except Exception as exc:  # no credentials to sign with, say
            raise OutputError(f"{self.target.uri}: cannot sign links to it: {exc}") from None
        return dict(zip(names, urls, strict=True))

    async def read_all(self, uris: Iterable[str], *, at_once: int = 16) -> dict[str, bytes]:
        """The bytes of small objects (posters), by URI; those that cannot be read are
        left out (a contact sheet shows a grey tile)."""
        found: dict[str, bytes] = {}
        gate = anyio.Semaphore(at_once)

        async def one(uri: str, name: str) -> None:
            async with gate:
                with contextlib.suppress(OutputError):
                    found[uri] = await self.read(name)

        with anyio.move_on_after(READ_ALL_WITHIN_S):  # a store that never answers: grey tiles
            async with anyio.create_task_group() as tg:
                for uri in dict.fromkeys(uris):
                    name = self.name_of(uri)
                    if name is not None:
                        tg.start_soon(one, uri, name)
        return dict(found)

    def name_of(self, uri: str) -> str | None:
        """The object name under this prefix that ``uri`` points at (``None``: elsewhere)."""
        head = self.target.uri.rstrip("/") + "/"
        return uri[len(head) :] if uri.startswith(head) else None

    def _error(self, exc: Exception, what: str) -> OutputError:
        text = str(exc)
        found = _CODE.search(text)
        code = found.group(1) if found else ""
        where = f"{self.target.uri} ({self.where})"
        if code == "NoSuchBucket":
            return OutputError(f"{where}: the bucket {self.target.bucket!r} does not exist")
        if code in _REFUSED or type(exc).__name__ in (
            "PermissionDeniedError",
            "UnauthenticatedError",
        ):
            return OutputError(
                f"{where}: the store refused the credentials ({code or type(exc).__name__}); "
                "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION"
            )
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if (code and code not in _TRANSIENT) or type(exc).__name__ in (
            "NotSupportedError",
            "InvalidPathError",
            "UnknownConfigurationKeyError",
        ):  # an answer, and a refusal: waiting will not change it
            return OutputError(f"{where} {what}: the store refused ({code or first[:300]})")
        return StoreUnreachable(f"{where} {what}: {first[:300]}")
