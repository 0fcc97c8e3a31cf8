"""The :class:`Store`: one content-addressed model store on one fsspec location.

It ties the object database, chunking, snapshots and the known-chunk cache together and is the
only thing above ``store/`` that callers use. It knows nothing of registries or model names beyond
what a snapshot records.

URI grammar (``modelkeep://`` names a version's files wherever the store is)::

    modelkeep://<protocol>/<store path>/@<snapshot id>[/<file path>]

for example ``modelkeep://s3/bucket/models/@9f2c…e1/model.safetensors`` or
``modelkeep://file/home/me/proj/.modelkeep/store/@9f2c…e1``.

An encrypted store (docs/encryption.md) is recorded in its descriptor; its key is looked for, when
first needed, in ``MODELKEEP_KEY``, in the ``key_file`` store option, then in the keys a caller
supplies (the key-provider hook). ``key_file`` is modelkeep's option, never passed to fsspec, and
also marks the store as one that must be encrypted: a new store is created encrypted, and an
existing unencrypted one is refused rather than written in the clear.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkeep.errors import (
    STORE,
    ConfigError,
    Hint,
    IntegrityError,
    InvalidInputError,
    ModelkeepError,
    NotFoundError,
    StoreError,
    StoreKeyError,
)
from modelkeep.store.cache import KnownChunks
from modelkeep.store.codec import Kind
from modelkeep.store.hashing import content_id, is_id
from modelkeep.store.location import (
    location_from_locator,
    parse_location,
)
from modelkeep.store.objects import MAX_DESCRIPTOR, ObjectDB
from modelkeep.store.snapshot import parse
from modelkeep.store.uri import (
    MAX_URI,
    SCHEME,
    SHORT_ID_MIN,
    utc_now,
)

# Writing (ingest, garbage collection, the journal, file states) and checking (verify, tensor
# maps) are imported by the methods that do them: a command that only reads the registry and a
# snapshot does not load them.
if TYPE_CHECKING:
    from modelkeep.store.crypto import Candidate, ObjectCipher
    from modelkeep.store.filestate import FileStates
    from modelkeep.store.gc import GcMark, GcReport
    from modelkeep.store.ingest import (
        IngestStats,
        SourceFile,
    )
    from modelkeep.store.journal import JournalEntry
    from modelkeep.store.location import (
        Location,
    )
    from modelkeep.store.materialize import Place, SnapshotFile
    from modelkeep.store.readcache import Fetched
    from modelkeep.store.runs import RunArtifacts
    from modelkeep.store.safetensors import Tensor
    from modelkeep.store.snapshot import FileEntry, Snapshot
    from modelkeep.store.sync import SyncReport
    from modelkeep.store.verify import VerifyReport

STORE_FORMAT = 1
_HEX = re.compile(r"^[0-9a-f]+$")

Progress = Callable[[int], None]
# Keys offered for a store by something above the store layer: (32-byte key, where it came from).
KeySource = Callable[[], Iterable[tuple[bytes, str]]]
KEY_ENV = "MODELKEEP_KEY"
_STORE_ID = re.compile(r"^[0-9a-f]{32}$")


# Chunks are coded by what they hold unless the store says otherwise (docs/format.md §3.1).
DEFAULT_CODEC = "auto"
CODEC_POLICIES = ("auto", "zstd", "none")


def _codec_policy(value: object, url: str) -> str:
    if value not in CODEC_POLICIES:
        raise ConfigError(f"store {url}: codec {value!r} is not one of "
                          f"{', '.join(CODEC_POLICIES)}",
                          hint="set the store option codec to auto (the default), zstd or none")
    return str(value)


@dataclass
class RepairReport:
    """What :meth:`Store.repair` did with each damaged chunk."""

    quarantined: list[str] = field(default_factory=list)  # moved aside to quarantine/
    rewritten: list[str] = field(default_factory=list)  # replaced by a verified copy
    missing: list[str] = field(default_factory=list)  # no source held its bytes

    def to_json(self) -> dict[str, object]:
        return {"quarantined": self.quarantined, "rewritten": self.rewritten,
                "missing": self.missing}


@dataclass(frozen=True)
class KeyStatus:
    """Whether a store is encrypted, and the ids (never the bytes) of the keys that open it."""

    url: str
    exists: bool
    encrypted: bool
    scheme: str | None = None
    store_id: str | None = None
    key_id: str | None = None  # the id of the key this process opened it with
    key_source: str | None = None
    key_ids: tuple[str, ...] = ()  # every key the store has a key object for
    key_error: str | None = None  # why no offered key opens it (no key, wrong key)

    def to_json(self) -> dict[str, object]:
        return {"store": self.url, "exists": self.exists, "encrypted": self.encrypted,
                "scheme": self.scheme, "store_id": self.store_id, "key_id": self.key_id,
                "key_source": self.key_source, "key_ids": list(self.key_ids),
                "key_error": self.key_error}


class Store:
    """A model store at one location."""

    def __init__(
        self, location: Location, *, use_cache: bool | None = None, keys: KeySource | None = None
    ) -> None:
        options = dict(location.options)
        key_file = options.pop("key_file", None)
        self.key_file = str(key_file) if key_file else None
        self.codec = _codec_policy(options.pop("codec", DEFAULT_CODEC), location.url)
        # Whether fetches of this store's versions go through the shared read cache, which holds
        # plaintext (docs/loading.md): ``read_cache = false`` keeps an encrypted store's out.
        self.read_cache = str(options.pop("read_cache", True)).lower() not in ("false", "0", "no")
        self.location = location = replace(location, options=options)
        self.db = ObjectDB(location, codec=self.codec)
        if use_cache is None:
            use_cache = not location.is_local and location.protocol != "memory"
        self.known = KnownChunks(self._cache_key()) if use_cache else None
        self._known_by_run: dict[int, KnownChunks] = {}
        self._descriptor_ok = False
        self._keys = keys
        self._given: list[Candidate] = []  # keys handed to init_encrypted / rotate_key
        self._only_given = False
        self._key_source: str | None = None
        self.db.set_cipher_loader(self._load_cipher)

    def _cache_key(self) -> str:
        # The locator leaves out the endpoint, so two services with a bucket of the same name
        # would share entries; the options (endpoint, account) tell them apart. Hashed, because
        # they may hold secrets.
        opts = json.dumps(dict(self.location.options), sort_keys=True, default=str)
        return f"{self.location.locator}#{content_id(opts.encode())[:16]}"

    @classmethod
    def open(
        cls, url: str, options: dict[str, Any] | None = None, *, keys: KeySource | None = None
    ) -> Store:
        return cls(parse_location(url, options), keys=keys)

    @classmethod
    def from_locator(
        cls, locator: str, options: dict[str, Any] | None = None, *, keys: KeySource | None = None
    ) -> Store:
        return cls(location_from_locator(locator, options), keys=keys)

    @property
    def url(self) -> str:
        return self.location.url

    def uri(self, snapshot_id: str, path: str | None = None) -> str:
        uri = f"{SCHEME}://{self.location.locator}/@{snapshot_id}"
        if path:
            uri += "/" + path
        if len(uri) > MAX_URI and path is None:
            raise StoreError(
                f"store location is too long for a version URI ({len(uri)} > {MAX_URI} chars)",
                hint="use a shorter store path",
            )
        return uri

    def runs_uri(self, prefix: str = "") -> str:
        """The artifact location for MLflow runs under *prefix* (docs/format.md §6)."""
        uri = f"{SCHEME}://{self.location.locator}/@runs"
        return f"{uri}/{prefix.strip('/')}" if prefix.strip("/") else uri

    def runs(self, prefix: str = "") -> RunArtifacts:
        """The run artifacts stored under *prefix*."""
        from modelkeep.store.runs import RunArtifacts

        return RunArtifacts(self, prefix)

    # -- descriptor ------------------------------------------------------------------------

    def descriptor(self) -> dict[str, Any] | None:
        """The store descriptor (docs/format.md §2.1), or None where no store exists yet."""
        return self._descriptor()

    def _check_not_a_file(self) -> None:
        if self.location.is_local and os.path.exists(self.location.root) and not os.path.isdir(
                self.location.root):
            raise StoreError(f"store {self.url} is a file, not a folder",
                             hint=Hint("give {store} (or `store` in modelkeep.toml) a folder",
                                       store=STORE))

    def _descriptor(self) -> dict[str, Any] | None:
        self._check_not_a_file()
        try:
            raw = self.db.read_blob(self.db.descriptor_path(), "store descriptor",
                                    MAX_DESCRIPTOR)
        except NotFoundError:
            return None
        try:
            data: dict[str, Any] = json.loads(bytes(raw))  # small: read, never mapped
            fmt = int(data["format"])
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(
                f"store descriptor at {self.url} is malformed",
                hint="the location does not hold a modelkeep store",
            ) from None
        if fmt != STORE_FORMAT:
            raise StoreError(
                f"store at {self.url} has format {fmt}; this modelkeep reads {STORE_FORMAT}",
                hint="upgrade modelkeep",
            )
        return data

    def ensure_initialized(self, *, before_create: Callable[[], None] | None = None) -> None:
        """Create the store if its location holds none (*before_create* is called first)."""
        if self._descriptor_ok:
            return
        if self._descriptor() is None:
            if before_create is not None:
                before_create()
            if self.key_file is not None:
                # The settings ask for an encrypted store: never create it in the clear.
                self.init_encrypted(self._key_file_candidate().key)
                return
            if self.location.is_local:
                os.makedirs(self.location.root, exist_ok=True)
            blob = json.dumps(
                {"format": STORE_FORMAT, "type": "modelkeep.store", "hash": "blake3",
                 "created": utc_now()}, sort_keys=True
            ).encode()
            self.db.put_raw_once(self.db.descriptor_path(), blob)
            self._descriptor()
            self.db.set_cipher_loader(self._load_cipher)
        elif self.key_file is not None:
            self.db.cipher  # noqa: B018 -- refuses an unencrypted store that should be encrypted
        self._descriptor_ok = True

    # -- encryption ------------------------------------------------------------------------

    @staticmethod
    def _encryption(desc: dict[str, Any] | None, url: str) -> dict[str, str] | None:
        enc = desc.get("encryption") if desc is not None else None
        if enc is None:
            return None
        from modelkeep.store.crypto import SCHEME

        if (not isinstance(enc, dict) or enc.get("scheme") != SCHEME
                or not _STORE_ID.match(str(enc.get("store_id", "")))):
            raise IntegrityError(
                f"store descriptor at {url} names an unknown encryption scheme",
                hint=f"this modelkeep reads {SCHEME!r}; upgrade modelkeep",
            )
        return {"scheme": enc["scheme"], "store_id": enc["store_id"]}

    def _key_file_candidate(self) -> Candidate:
        from modelkeep.store.crypto import Candidate, parse_key

        assert self.key_file is not None
        path = os.path.expanduser(self.key_file)
        try:
            with open(path, "rb") as f:
                data = f.read(4096)
        except OSError as exc:
            raise ConfigError(
                f"cannot read the key file {self.key_file!r} of store {self.url}: "
                f"{exc.strerror or type(exc).__name__}",
                hint=self._missing_key_hint(),
            ) from None
        return Candidate(parse_key(data, f"key file {self.key_file!r}"), f"key file "
                         f"{self.key_file!r}")

    def _missing_key_hint(self) -> str:
        where = (f"the store expects its key in that file (key_file in the store's options in "
                 f"modelkeep.toml) or in {KEY_ENV}")
        try:
            exists = self._descriptor() is not None
        except ModelkeepError:
            exists = True  # unreadable is not absent: never suggest replacing its key
        if not exists:
            return f"{where}: create it with `modelkeep key generate {self.key_file}`"
        # A new key cannot open a store encrypted under another: say where its own key goes.
        return (f"{where}: put back the key the store was created or last rotated with; a new "
                "key will not open this store")

    def key_candidates(self) -> list[Candidate]:
        """Every key offered for this store, in the order they are tried."""
        from modelkeep.store.crypto import candidates_from, parse_key

        offered: list[tuple[bytes, str]] = [(c.key, c.source) for c in self._given]
        if self._only_given:
            return candidates_from(offered)
        env = os.environ.get(KEY_ENV)
        if env:
            offered.append((parse_key(env, KEY_ENV), KEY_ENV))
        if self.key_file is not None:
            cand = self._key_file_candidate()
            offered.append((cand.key, cand.source))
        if self._keys is not None:
            for key, source in self._keys():
                if not isinstance(key, bytes | bytearray) or len(key) != 32:
                    raise ConfigError(f"{source} gave a key that is not 32 bytes",
                                      hint="a key provider must return 32-byte keys")
                offered.append((bytes(key), source))
        return candidates_from(offered)

    def _load_cipher(self) -> ObjectCipher | None:
        desc = self._descriptor()
        enc = self._encryption(desc, self.url)
        if enc is None:
            if desc is not None and self.key_file is not None:
                raise StoreError(
                    f"store {self.url} is not encrypted, but its settings name a key_file",
                    hint="remove key_file from its options, or create a new store with "
                    "`modelkeep init --encrypt`",
                )
            return None
        candidates = self.key_candidates()
        if not candidates:
            raise StoreKeyError(f"store {self.url} is encrypted and no key was given")
        for cand in candidates:
            cipher = self._open_with(cand, enc["store_id"])
            if cipher is not None:
                self._key_source = cand.source
                return cipher
        tried = ", ".join(f"{c.source} (key id {c.id})" for c in candidates)
        raise StoreKeyError(
            f"wrong key for store {self.url}: it has no key object for {tried}",
            hint="give the key the store was created or last rotated with; "
            "`modelkeep key status` lists the key ids it accepts",
        )

    def _open_with(self, cand: Candidate, store_id: str) -> ObjectCipher | None:
        """The cipher *cand* opens, or None when the store has no key object for it."""
        from modelkeep.store.crypto import ObjectCipher, unwrap_keys, wrap_path

        what = f"key object keys/{cand.id}.json of store {self.url}"
        try:
            blob = self.db.read_blob(wrap_path(self.db.root, cand.id), what)
        except NotFoundError:
            return None
        dek, id_key = unwrap_keys(bytes(blob), cand.key, store_id, what)
        return ObjectCipher(dek, id_key, cand.id)

    def _key_ids(self) -> tuple[str, ...]:
        from modelkeep.store.crypto import KEYS_DIR

        return tuple(n[:-5] for n in self.db.list_raw(KEYS_DIR)
                     if n.endswith(".json") and _STORE_ID.match(n[:-5]))

    def init_encrypted(self, kek: bytes) -> KeyStatus:
        """Create this store encrypted, its data and id keys wrapped by *kek*.

        Write order: the key object, then the descriptor (both conditional creates), so a crash
        leaves either nothing a reader sees or a complete encrypted store. Refuses a store that
        exists unencrypted (its objects would stay readable, and its ids unkeyed)."""
        from modelkeep.store.crypto import SCHEME, Candidate, kek_id, new_key, wrap_keys, wrap_path

        given = Candidate(kek, "the given key")
        desc = self._descriptor()
        if desc is not None:
            enc = self._encryption(desc, self.url)
            if enc is None:
                held = any(True for _ in self.db.iter_ids(Kind.CHUNK)) or any(
                    True for _ in self.db.iter_ids(Kind.SNAPSHOT))
                what = "already holds unencrypted objects" if held else "was created unencrypted"
                raise StoreError(
                    f"cannot encrypt store {self.url}: it {what}",
                    hint="encryption is chosen when a store is created: create one at a new "
                    "location (`modelkeep init --encrypt`) and register the versions there",
                )
            assert enc is not None
            if self._open_with(given, enc["store_id"]) is None:
                raise StoreKeyError(f"wrong key for store {self.url}: it is already encrypted "
                                    "under another key")
            self._given.insert(0, given)
            self.db.set_cipher_loader(self._load_cipher)
            self._descriptor_ok = True
            return self.key_status()
        for kind in (Kind.CHUNK, Kind.SNAPSHOT):
            if any(True for _ in self.db.iter_ids(kind)):
                raise StoreError(f"cannot encrypt store {self.url}: it already holds "
                                 "unencrypted objects", hint="choose an empty location")
        if self.location.is_local:
            os.makedirs(self.location.root, exist_ok=True)
        import secrets

        store_id = secrets.token_hex(16)
        path = wrap_path(self.db.root, kek_id(kek))
        if not self.db.put_raw_once(path, wrap_keys(kek, store_id, new_key(), new_key(),
                                                    utc_now())):
            # A key object for this key without a descriptor: an init that crashed (or runs
            # now) made it. Adopt its store id, so the descriptor matches the key object.
            store_id = self._orphan_store_id(path, kek)
        blob = json.dumps(
            {"format": STORE_FORMAT, "type": "modelkeep.store", "hash": "blake3",
             "created": utc_now(),
             "encryption": {"scheme": SCHEME, "store_id": store_id}},
            sort_keys=True,
        ).encode()
        if not self.db.put_raw_once(self.db.descriptor_path(), blob):
            # Another writer created the store first; open it like any existing store.
            return self.init_encrypted(kek)
        self._given.insert(0, given)
        self.db.set_cipher_loader(self._load_cipher)
        self._descriptor_ok = True
        return self.key_status()

    def _orphan_store_id(self, path: str, kek: bytes) -> str:
        from modelkeep.store.crypto import unwrap_keys

        what = f"key object {path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]} of store {self.url}"
        blob = bytes(self.db.read_blob(path, what))
        try:
            store_id = str(json.loads(blob)["store_id"])
        except (ValueError, KeyError, TypeError):
            store_id = ""
        if not _STORE_ID.match(store_id):
            raise IntegrityError(f"{what} is malformed", hint="remove it and init again")
        unwrap_keys(blob, kek, store_id, what)  # it must be this key's, and intact
        return store_id

    def key_status(self) -> KeyStatus:
        """Whether the store is encrypted, which key ids open it, and whether an offered key
        does (``key_id``; else ``key_error`` says why). Needs no key."""
        desc = self._descriptor()
        enc = self._encryption(desc, self.url)
        if enc is None:
            return KeyStatus(self.url, desc is not None, False)
        try:
            cipher = self.db.cipher
        except StoreKeyError as exc:
            return KeyStatus(self.url, True, True, enc["scheme"], enc["store_id"],
                             key_ids=self._key_ids(), key_error=exc.message)
        assert cipher is not None
        return KeyStatus(self.url, True, True, enc["scheme"], enc["store_id"], cipher.kek_id,
                         self._key_source, self._key_ids())

    def rotate_key(self, new_kek: bytes) -> KeyStatus:
        """Wrap the data and id keys under *new_kek* and remove the current key's key object.

        Only the small key object changes: no chunk or snapshot is read or written. The new key
        object is written (and read back with the new key) before the old one is removed, so a
        crash in between leaves a store both keys open; running the rotation again finishes it."""
        from modelkeep.store.crypto import Candidate, kek_id, unwrap_keys, wrap_keys, wrap_path

        enc = self._encryption(self._descriptor(), self.url)
        if enc is None:
            raise StoreError(f"store {self.url} is not encrypted; there is no key to rotate",
                             hint="create an encrypted store with `modelkeep init --encrypt`")
        cipher = self.db.cipher
        assert cipher is not None
        old_id, new_id = cipher.kek_id, kek_id(new_kek)
        if new_id == old_id:
            raise InvalidInputError("the new key is the store's current key",
                                    hint="generate a new key with `modelkeep key generate FILE`")
        dek, id_key = cipher.keys()
        new_path = wrap_path(self.db.root, new_id)
        self.db.put_raw_once(new_path, wrap_keys(new_kek, enc["store_id"], dek, id_key, utc_now()))
        # Whether this call wrote it or an interrupted rotation did, it must open with the new
        # key to the same keys before the old way in is removed.
        what = f"key object keys/{new_id}.json of store {self.url}"
        if unwrap_keys(bytes(self.db.read_blob(new_path, what)), new_kek, enc["store_id"],
                       what) != (dek, id_key):
            raise IntegrityError(f"{what} holds other keys than the store's",
                                 hint="remove it and rotate again")
        self.db.remove_raw(wrap_path(self.db.root, old_id))
        # From now on this store object opens with the new key only, as any later process will.
        self._given = [Candidate(new_kek, "the new key")]
        self._keys = None
        self._only_given = True
        self.db.set_cipher_loader(self._load_cipher)
        return self.key_status()

    # -- writing ---------------------------------------------------------------------------

    def ingest(
        self, sources: list[SourceFile], progress: Progress | None = None, *,
        parent: Snapshot | None = None, before_upload: Callable[[], None] | None = None,
    ) -> tuple[tuple[FileEntry, ...], IngestStats]:
        """Store the chunks of *sources*; returns their file entries and what was added. A
        tensor chunk that differs from the same chunk of *parent* may be stored as a delta.
        *before_upload* is called once before the first write (the store's descriptor, or a
        chunk; not at all when every chunk is stored already: ``stats.checked`` says whether it
        was); what it raises ends the ingest with nothing written."""
        from modelkeep.store.ingest import Ingestor, Once, ParentBases

        first_write = Once(before_upload) if before_upload is not None else None
        self.ensure_initialized(before_create=first_write)
        # Read before any chunk is looked at: see the commit check in save_snapshot.
        mark = self.gc_mark()
        ingestor = Ingestor(self.db, known=self.known_for(mark), bases=ParentBases(parent, self.db),
                            damaged=self.db.damaged_ids(), file_states=self.file_states(mark),
                            before_upload=first_write)
        entries, stats = ingestor.ingest(sources, progress)
        stats.gc_mark = mark
        stats.checked = first_write is not None and first_write.done
        return entries, stats

    def save_snapshot(self, snapshot: Snapshot, *, since: GcMark | None = None) -> str:
        """Write the snapshot object (after its chunks; before any registry entry).

        *since* is the garbage-collection mark read before the chunks were looked at (the
        ``gc_mark`` of :meth:`ingest`'s stats, or :meth:`gc_mark`); if a collection ran since,
        every chunk is checked and hidden ones are restored, and if one is gone the snapshot
        is removed again and :class:`~modelkeep.store.gc.ChunksCollectedError` raised.
        """
        from modelkeep.store.gc import ChunksCollectedError

        self.ensure_initialized()
        payload = snapshot.encode()
        sid = self.db.object_id(payload)
        created = self.db.put(Kind.SNAPSHOT, sid, payload)
        try:
            self.settle([cid for f in snapshot.files for cid, _n in f.chunks], since)
        except ChunksCollectedError:
            if created:
                self.delete_snapshot(sid)
            raise
        return sid

    def snapshot_id(self, snapshot: Snapshot) -> str:
        """The id *snapshot* has in this store (keyed in an encrypted store, so it can differ
        from :attr:`Snapshot.id`)."""
        return self.db.object_id(snapshot.encode())

    # -- garbage collection ----------------------------------------------------------------

    def gc_mark(self) -> GcMark:
        """The store's garbage-collection state, for a writer about to look at chunks."""
        from modelkeep.store import gc as gc_mod

        return gc_mod.read_mark(self.db)

    def settle(self, chunk_ids: list[str], since: GcMark | None) -> None:
        """The commit check of a writer that has just written a snapshot or manifest using
        *chunk_ids* (see :func:`modelkeep.store.gc.settle`)."""
        from modelkeep.store import gc as gc_mod

        gc_mod.settle(self.db, chunk_ids, since)

    def known_for(self, mark: GcMark) -> KnownChunks | None:
        """The known-chunk cache for the current collection epoch; none while a collection is
        running (it may be hiding what the cache says exists)."""
        if self.known is None or not mark.settled:
            return None
        if mark.run == 0:
            return self.known
        known = self._known_by_run.get(mark.run)
        if known is None:
            known = KnownChunks(f"{self._cache_key()}#gc{mark.run}", self.known.path)
            known.retire_others(self._cache_key())
            self._known_by_run = {mark.run: known}
        return known

    def file_states(self, mark: GcMark) -> FileStates | None:
        """The cache of files this store holds unchanged (:mod:`.filestate`); none while a
        collection runs, or when ``MODELKEEP_FILE_STATES=off``."""
        from modelkeep.store.filestate import FileStates, enabled

        if not mark.settled or not enabled():
            return None
        # The id of no bytes tells the id scheme apart (an encrypted store's ids are keyed).
        return FileStates(f"{self._cache_key()}#{self.db.object_id(b'')[:16]}")

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a snapshot object; one already gone is not an error. Its chunks stay until a
        garbage collection finds nothing else uses them. The caller makes sure no registered
        version points at it any more: the store cannot know."""
        self.db.delete_path(self.db.path(Kind.SNAPSHOT, snapshot_id))

    def gc(
        self,
        grace: timedelta = timedelta(hours=1),
        dry_run: bool = False,
        progress: Progress | None = None,
        ignore_snapshots: Collection[str] = (),
    ) -> GcReport:
        """Sweep chunks that no snapshot and no run manifest references and that are older than
        *grace*, in two phases (hidden by one run, deleted by a later one), safe while other
        processes write (docs/format.md §13). In a dry run, *ignore_snapshots* count as
        deleted."""
        from modelkeep.store import gc as gc_mod

        return gc_mod.collect(self, grace, dry_run=dry_run, progress=progress,
                              ignore_snapshots=ignore_snapshots)

    def reclaimable(self, chunk_ids: Collection[str]) -> tuple[int, int]:
        """``(chunks, bytes)`` of *chunk_ids* that no snapshot or run manifest uses any more:
        what a garbage collection would reclaim of them (:func:`modelkeep.store.gc.reclaimable`)."""
        from modelkeep.store import gc as gc_mod

        return gc_mod.reclaimable(self, chunk_ids)

    def sync_to(
        self,
        dest: Store,
        snapshot_ids: list[str],
        *,
        dry_run: bool = False,
        workers: int | None = None,
        progress: Progress | None = None,
    ) -> SyncReport:
        """Copy snapshots and the chunks *dest* lacks (see :mod:`modelkeep.store.sync`)."""
        from modelkeep.store.sync import sync

        return sync(self, dest, snapshot_ids, dry_run=dry_run, workers=workers,
                    progress=progress)

    def forget_known(self) -> None:
        """Drop this machine's known-chunk cache entries for this store, every epoch."""
        if self.known is not None:
            self.known.forget_store()
            self.known.retire_others(self._cache_key())

    def journal_append(self, name: str, op: str, data: Mapping[str, Any], *,
                       author: str) -> JournalEntry:
        """Record a catalogue change of model *name* (before the registry makes it)."""
        from modelkeep.store import journal as journal_mod

        self.ensure_initialized()
        return journal_mod.write(self.db, name, op, data, author=author)

    # -- reading ---------------------------------------------------------------------------

    def journal(self) -> tuple[list[JournalEntry], list[tuple[str, str]]]:
        """Every journal entry in replay order, and ``(id, reason)`` of unusable ones."""
        from modelkeep.store import journal as journal_mod

        return journal_mod.read_all(self.db)

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        return parse(
            self.db.get(Kind.SNAPSHOT, snapshot_id, f"snapshot {snapshot_id[:12]}"),
            f"snapshot {snapshot_id[:12]}",
        )

    def resolve_snapshot_id(self, prefix: str) -> str:
        """The full id of the one snapshot whose id starts with *prefix* (at least
        :data:`SHORT_ID_MIN` hex digits; a full id is returned as it is, unchecked). Looks in
        one fan-out directory of ``snapshots/``; none or several matches is an error."""
        if len(prefix) == 64 and is_id(prefix):
            return prefix
        if not SHORT_ID_MIN <= len(prefix) < 64 or not _HEX.match(prefix):
            raise InvalidInputError(
                f"invalid snapshot id {prefix!r}",
                hint=f"give the full id or a prefix of at least {SHORT_ID_MIN} hex digits")
        found = self.db.ids_with_prefix(Kind.SNAPSHOT, prefix)
        if not found:
            raise NotFoundError(f"no snapshot id starting with {prefix} in store {self.url}",
                                hint="check the id with `modelkeep log NAME`")
        if len(found) > 1:
            raise InvalidInputError(
                f"snapshot id prefix {prefix} is ambiguous: {len(found)} snapshots in store "
                f"{self.url} start with it", hint="give more hex digits of the id")
        return found[0]

    def delta_bases(self) -> dict[str, str]:
        """{chunk id: base id} of every chunk stored as a parent delta (one listing of
        ``deltas/``): a base is needed as long as a chunk coded against it is kept."""
        return {cid: base for cid, base, _when in self.db.delta_edges()}

    def snapshot_ids(self) -> Iterator[str]:
        return self.db.iter_ids(Kind.SNAPSHOT)

    def has_snapshot(self, snapshot_id: str) -> bool:
        """Whether the store holds snapshot *snapshot_id* (one existence check, no read)."""
        return self.db.exists(Kind.SNAPSHOT, snapshot_id)

    def has_chunk(self, chunk_id: str) -> bool:
        """Whether the store holds chunk *chunk_id* (one existence check, no read)."""
        return self.db.exists(Kind.CHUNK, chunk_id)

    def object_id(self, data: bytes | bytearray | memoryview) -> str:
        """The id *data* has in this store (keyed in an encrypted store)."""
        return self.db.object_id(data)

    @property
    def encrypted(self) -> bool:
        """Whether objects are sealed and ids keyed (loads the store's key on first use)."""
        return self.db.cipher is not None

    def open_entry(self, entry: FileEntry) -> SnapshotFile:
        """A seekable, read-only stream of one file of a snapshot, fetching only what is read."""
        from modelkeep.store.materialize import SnapshotFile

        return SnapshotFile(self.db, entry)

    def tensor_map(self, entry: FileEntry, *, digests: bool = False) -> tuple[Tensor, ...] | None:
        """The tensors of a safetensors file of a snapshot (None for any other file), read from
        its stored header when the snapshot does not list them; with *digests*, each tensor that
        shares its chunk carries the id of its own bytes (see :mod:`.tensormap`)."""
        from modelkeep.store import tensormap

        return tensormap.tensors(self.db, entry, digests=digests)

    # -- signatures (their format and trust are modelkeep.signing's) ------------------------

    def put_signature(self, snapshot_id: str, key_id: str, blob: bytes) -> bool:
        """Store a signature of a snapshot by a key (write-once); False if it was there."""
        return self.db.put_signature(snapshot_id, key_id, blob)

    def signature_keys(self, snapshot_id: str) -> list[str]:
        """The key ids with a signature object for the snapshot."""
        return self.db.signature_keys(snapshot_id)

    def read_signature(self, snapshot_id: str, key_id: str) -> bytes:
        """The signature object of a snapshot by a key."""
        return bytes(self.db.read_signature(snapshot_id, key_id))

    def materialize(
        self,
        snapshot: Snapshot,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
        place: Place | None = None,
    ) -> Path:
        from modelkeep.store.materialize import materialize

        return materialize(self.db, snapshot, dest, overwrite=overwrite, progress=progress,
                           place=place)

    def open_file(self, snapshot: Snapshot, path: str) -> SnapshotFile:
        entry = snapshot.file(path.strip("/"))
        if entry is None:
            raise NotFoundError(
                f"no file {path!r} in this version",
                hint="list its files with `modelkeep show REF`",
            )
        from modelkeep.store.materialize import SnapshotFile

        return SnapshotFile(self.db, entry)

    def verify(
        self, snapshot_ids: list[str] | None = None, progress: Progress | None = None
    ) -> VerifyReport:
        """Verify the given snapshots (default: every snapshot in the store) and their chunks.

        A location that holds no store is an error, never an empty "ok": a mistyped path must not
        make a check pass."""
        from modelkeep.store.verify import Problem, verify_snapshots

        if self._descriptor() is None:
            raise NotFoundError(f"there is no modelkeep store at {self.url}",
                                hint=Hint("check {store}; `modelkeep init` creates a store",
                                          store=STORE))
        ids = list(self.snapshot_ids()) if snapshot_ids is None else snapshot_ids
        loaded: list[tuple[str, Snapshot]] = []
        report_extra: list[Problem] = []

        def load(sid: str) -> tuple[str, Snapshot | None, str | None]:
            try:
                return sid, self.load_snapshot(sid), None
            except (IntegrityError, NotFoundError) as exc:
                return sid, None, exc.message

        with ThreadPoolExecutor(8) as pool:
            for sid, snap, reason in pool.map(load, ids):
                if snap is None:
                    report_extra.append(Problem(sid, None, None, None, sid, reason or "unreadable"))
                else:
                    loaded.append((sid, snap))
        report = verify_snapshots(self.db, loaded, progress=progress)
        report.snapshots += len(report_extra)
        report.problems[:0] = report_extra
        damaged = report.damaged_chunks()
        if damaged:
            self._record_damaged(damaged)
        return report

    def _record_damaged(self, damaged: Collection[str]) -> None:
        """Mark what a verify found damaged, so that no register reuses it, and drop it from
        this machine's known chunks. A store this process may not write to is only reported."""
        self.forget_known()
        for cid in damaged:
            try:
                self.db.mark_damaged(cid)
            except (StoreError, PermissionError):
                return

    def repair(self, damaged: Collection[str], *, sources: list[SourceFile] | None = None,
               replica: Store | None = None) -> RepairReport:
        """Replace damaged chunks: each is moved aside to ``quarantine/`` (never overwritten in
        place, never deleted), then written anew from *replica* (a store with the same chunk
        ids; every chunk read from it is verified) or from *sources* (files holding the original
        bytes, cut as a register cuts them). Without either, the names are only freed: the next
        register of the original files writes the chunks again instead of reusing bad ones."""
        self.ensure_initialized()
        report = RepairReport()
        for cid in sorted(set(damaged)):
            if self.db.quarantine(cid):
                report.quarantined.append(cid)
        self.forget_known()  # this machine's cache said they exist
        wanted = set(damaged)
        if replica is not None:
            from modelkeep.store.sync import check_compatible

            check_compatible(replica, self)
            for cid in sorted(wanted):
                try:
                    data = replica.db.get(Kind.CHUNK, cid)
                except (NotFoundError, IntegrityError):
                    continue  # not there, or damaged too: perhaps the folder has it
                self.db.put(Kind.CHUNK, cid, data)
                report.rewritten.append(cid)
            wanted -= set(report.rewritten)
        if sources and wanted:
            from modelkeep.store.ingest import rewrite_chunks

            written = rewrite_chunks(self.db, sources, wanted)
            report.rewritten += sorted(written)
            wanted -= written
        for cid in report.rewritten:
            self.db.clear_damaged(cid)
        report.missing = sorted(wanted)
        return report

    def stored_bytes(self, kind: Kind = Kind.CHUNK) -> int:
        """Bytes the store holds for *kind* (headers included): the figure dedup is judged by."""
        if kind is Kind.CHUNK:
            return sum(self.chunk_sizes().values())
        return sum(self.db.size(kind, oid) for oid in self.db.iter_ids(kind))

    def fetch_cached(self, snapshot: Snapshot, *, progress: Progress | None = None,
                     ref: str | None = None) -> Fetched:
        """*snapshot*'s read-only folder in this machine's shared read cache
        (:mod:`modelkeep.store.readcache`), built from this store what the cache lacks."""
        from modelkeep.store.readcache import ReadCache

        return ReadCache().fetch(self.db, snapshot, private=self.encrypted, progress=progress,
                                 ref=ref)

    def chunk_sizes(self) -> dict[str, int]:
        """{chunk id: stored size, header included} of every chunk in ``chunks/``, from one
        listing: what each costs once coded."""
        return {cid: size for cid, size, _when in self.db.ids_with_times(f"{self.db.root}/chunks")}
