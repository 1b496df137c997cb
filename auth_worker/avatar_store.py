"""Where avatar images live: a small storage interface, and its MongoDB GridFS implementation.

The image bytes go to an :class:`AvatarStorage`; what the service knows about each avatar (its
owner, moderation status, trace id, review key) lives in the ``avatars`` collection
(``auth_worker.profile_store``), so another store (an S3-compatible bucket) only has to put, get
and delete bytes by id. docs/profile.md lists the collections and how long each keeps what.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo.asynchronous.database import AsyncDatabase

BUCKET = "avatar_files"
"""The GridFS bucket: collections ``avatar_files.files`` and ``avatar_files.chunks``."""
CHUNK_SIZE = 255 * 1024


@dataclass(frozen=True, slots=True)
class StoredImage:
    """An image's bytes and type, as stored."""

    data: bytes
    content_type: str


class AvatarStorage(Protocol):
    """Bytes by id: all the service asks of an image store."""

    async def put(self, avatar_id: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``avatar_id`` (a new id each time)."""

    async def get(self, avatar_id: str) -> StoredImage | None:
        """The image stored under ``avatar_id``, or None."""

    async def delete(self, avatar_id: str) -> None:
        """Delete the image stored under ``avatar_id`` (nothing when there is none)."""

    async def stored_before(self, cutoff: datetime, limit: int) -> list[str]:
        """Ids of up to ``limit`` images stored before ``cutoff`` (for the orphan sweep)."""


async def _avatar_ids(db: AsyncDatabase[dict[str, Any]], user_id: str) -> list[str]:
    cursor = db["avatars"].find({"user_id": user_id}, projection={"_id": 1})
    return [str(doc["_id"]) async for doc in cursor]


async def erase_user_avatar_files(db: AsyncDatabase[dict[str, Any]], user_id: str) -> int:
    """The data map's eraser for the bucket's file records (auth_worker/datamap.py): delete the
    image (record and chunks) of each of the user's avatars, found by its ``avatars`` document,
    which the map deletes after; how many images were deleted. An image stored by an upload
    whose document was never written is an orphan, deleted by the worker's sweep."""
    storage = GridFSAvatarStorage(db)
    files = db[f"{BUCKET}.files"]
    deleted = 0
    for avatar_id in await _avatar_ids(db, user_id):
        if await files.find_one({"_id": avatar_id}, projection={"_id": 1}) is None:
            continue  # its image is gone already
        await storage.delete(avatar_id)
        deleted += 1
    return deleted


async def erase_user_avatar_chunks(db: AsyncDatabase[dict[str, Any]], user_id: str) -> int:
    """The eraser for the bucket's chunks: those of the user's avatars left without their file
    record (a delete interrupted between the two); how many went."""
    deleted = 0
    for avatar_id in await _avatar_ids(db, user_id):
        result = await db[f"{BUCKET}.chunks"].delete_many({"files_id": avatar_id})
        deleted += result.deleted_count
    return deleted


class GridFSAvatarStorage:
    """Avatar images in a GridFS bucket of the service's own database (PyMongo's async API)."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._bucket = AsyncGridFSBucket(db, bucket_name=BUCKET, chunk_size_bytes=CHUNK_SIZE)
        self._files = db[f"{BUCKET}.files"]

    async def put(self, avatar_id: str, data: bytes, content_type: str) -> None:
        """Store the image; its GridFS file id is the avatar id."""
        await self._bucket.upload_from_stream_with_id(
            avatar_id, avatar_id, data, metadata={"content_type": content_type})

    async def get(self, avatar_id: str) -> StoredImage | None:
        """The image, or None when no file has this id."""
        try:
            stream = await self._bucket.open_download_stream(avatar_id)
        except NoFile:
            return None
        data = await stream.read()
        metadata = stream.metadata or {}
        return StoredImage(data, str(metadata.get("content_type", "application/octet-stream")))

    async def delete(self, avatar_id: str) -> None:
        """Delete the file and its chunks; a missing file is not an error."""
        try:
            await self._bucket.delete(avatar_id)
        except NoFile:
            return

    async def stored_before(self, cutoff: datetime, limit: int) -> list[str]:
        """Ids of images uploaded before ``cutoff`` (GridFS's ``uploadDate``)."""
        cursor = self._files.find({"uploadDate": {"$lt": cutoff}}, {"_id": 1}).limit(limit)
        return [str(doc["_id"]) async for doc in cursor]
