"""Videos kept in a store: spooled, checked, put where nothing is replaced, found again.

With an ``s3://`` output a video is fetched into the spool (a local folder),
checked there as any download is (size, sha256, probe, poster), then put in
the store: its poster first, then the video, each with a conditional put.
The spool files go as soon as the video is kept (or cannot be), before the
ledger records it: the spool holds no more than the downloads in flight (and
what a killed run left, which the job's next try clears).

Before fetching, the store is asked whether this task's video is there
already (a run that crashed between the upload and the ledger's record): if
so it is recorded from the object's own metadata, with no download.  A name
that holds another task's video (a bucket two batches share, an edited
manifest) is never replaced: the video takes the name with its task id
(:func:`batchvid.outputs.object_name`).
"""

from __future__ import annotations

import contextlib
import glob
import logging
from pathlib import Path

from ..errors import OutputError, StoreUnreachable
from ..ledger.rows import JobRow
from ..media import poster_path
from ..outputs import S3Outputs, Stored, object_attributes, object_name, stored_from
from ..outputs.objects import TASK, poster_name
from ..outputs.s3 import Taken
from .workers import DownloadOutcome, Workers

__all__ = ["Keeper"]

log = logging.getLogger(__name__)


class Keeper:
    """Downloads into ``spool`` and keeps each video in ``store`` (see the module docstring)."""

    def __init__(self, store: S3Outputs, workers: Workers, spool: Path) -> None:
        self.store = store
        self.spool = spool
        self._workers = workers

    async def download(self, job: JobRow, dest: Path) -> DownloadOutcome:
        """The job's video in the store: found there, or fetched to ``dest`` (in the
        spool) and put there.  A store that does not answer is ``store_down``; one
        that refuses (credentials, a bucket gone, both names taken) is ``store_refused``:
        the run stops, as no video could be kept."""
        assert job.task_id is not None
        try:
            found = await self.find(job.task_id, dest.name)
            if found is not None:  # a run that ended after the upload, before the record
                log.info("job %s: its video is in the store already: %s", job.id, found.uri)
                _clear(dest)  # what that run left in the spool
                return DownloadOutcome("fetched", stored=found, facts=found.facts)
            _clear(dest, keep_part=True)  # a whole file left by a killed run: fetched anew
            outcome = await self._workers.download(job, dest)
            if outcome.kind in ("vanished", "undecodable"):
                _clear(dest)  # its parts and rejected bytes: this video will not be kept
            if outcome.kind != "fetched" or outcome.result is None:
                return outcome
            try:
                stored = await self._put(job.task_id, dest.name, outcome)
            finally:
                _clear(dest)
                _remove(outcome.result.path, outcome.poster)
        except StoreUnreachable as exc:
            return DownloadOutcome("store_down", reason=str(exc))
        except OutputError as exc:
            return DownloadOutcome("store_refused", reason=str(exc))
        except OSError as exc:  # the spool's file went (another worker, a cleaner): again
            return DownloadOutcome("failed", reason=f"the spooled video could not be read: {exc}")
        return DownloadOutcome("fetched", result=outcome.result, facts=outcome.facts, stored=stored)

    async def find(self, task_id: str, filename: str) -> Stored | None:
        """This task's video, if the store has it under its name, or under the name with
        the task id (another task's video held the name)."""
        for name in (filename, object_name(filename, task_id, taken=True)):
            found = await self.store.find(name)
            stored = stored_from(self.store.target, name, task_id, *found) if found else None
            if stored is not None:
                return stored
        return None

    async def _put(self, task_id: str, filename: str, outcome: DownloadOutcome) -> Stored:
        """The poster, then the video, each under a name that holds nothing yet."""
        result = outcome.result
        assert result is not None
        for name in (filename, object_name(filename, task_id, taken=True)):
            poster = await self._put_poster(name, task_id, outcome.poster)
            attributes = object_attributes(
                task_id, result.sha256, result.size, outcome.facts, poster
            )
            try:
                etag = await self.store.put_new(name, result.path, attributes)
            except Taken:
                found = await self.find(task_id, filename)
                if found is not None:  # an earlier try of this run put it
                    return found
                continue  # another task's video: the next name
            target = self.store.target
            return Stored(
                uri=target.object_uri(name),
                name=name,
                size=result.size,
                sha256=result.sha256,
                etag=etag,
                facts=outcome.facts,
                poster_uri=target.object_uri(poster) if poster else None,
            )
        raise OutputError(
            f"{self.store.target.object_uri(filename)} and the name with the task id both hold "
            "other videos; nothing was replaced"
        )

    async def _put_poster(self, video_name: str, task_id: str, poster: Path | None) -> str | None:
        """The poster beside the videos.  A name already taken is this video's poster
        only if it says so (an earlier try put it); else the video goes without one
        (a poster is only a picture: never worth replacing an object for)."""
        if poster is None:
            return None
        name = poster_name(video_name)
        try:
            await self.store.put_new(name, poster, {"Content-Type": "image/jpeg", TASK: task_id})
        except Taken:
            found = await self.store.find(name)
            return name if found is not None and found[0].get(TASK) == task_id else None
        return name


def _clear(dest: Path, *, keep_part: bool = False) -> None:
    """What the spool holds of one video: the file, its poster, and (unless
    ``keep_part``: a transfer to resume) its ``.part`` and rejected bytes."""
    _remove(dest, poster_path(dest))
    if not keep_part:
        for path in dest.parent.glob(glob.escape(dest.name) + ".*"):
            _remove(path, None)


def _remove(video: Path, poster: Path | None) -> None:
    """The spool's copies go once the video is kept (or could not be)."""
    for path in (video, poster):
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()
