"""What a running server holds: encoder, store, FAISS gallery, embedding worker, metrics.

Start-up happens in two steps so the server can answer ``/healthz`` and ``/readyz`` (503) while
the slow part runs:

1. ``open_runtime`` (synchronous, fails fast with ``StartupError``): load the checkpoint, open the
   store, refuse a store whose descriptors were made by another checkpoint;
2. ``Runtime.restore_gallery`` (run in the background by the app): rebuild the FAISS gallery from
   the store (or load a snapshot that agrees with it); the runtime is ready afterwards.

Consistency between store and index: every write takes ``write_lock``, writes the store first and
updates the index only after the store acknowledged, so the index never holds what the store does
not. A store error whose outcome is unknown (connection lost during a write) marks the gallery
dirty; it is rebuilt from the store as soon as the store answers again.

Several server processes (replicas) may share one store: every write also appends to the store's
change feed, and each replica applies the others' writes from it within ``sync_interval`` seconds
(``service.gallery_sync``; the feed position starts at the head read before the gallery is loaded,
so nothing written meanwhile is missed). With ``--index milvus`` the vectors live in Milvus, shared
by the replicas, and survive a restart: at start the gallery reconciles Milvus with the store
(counts and a digest of the ids; only differences are written) instead of re-adding every vector.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from starlette.concurrency import run_in_threadpool

from index.gallery import Gallery
from index.milvus_index import collection_name
from index.snapshot import build_gallery, save_snapshot
from index.store import Store, StoreError, open_store
from index.types import IndexOptions
from index.vector_index import index_class
from service.batching import MicroBatcher
from service.core.config import Settings
from service.core.errors import ModelSwitchError
from service.core.paths import inside
from service.encoders import Encoder, make_encoder
from service.gallery_sync import GallerySync
from service.images import FrameLimits, decode_tracklet, install_pil_guard
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

Phase = Literal["starting", "ready", "failed"]


class StartupError(RuntimeError):
    """The server cannot start; the message tells the user what to do."""


# Query parameters redis-py (and other URL-configured clients) read credentials from.
_SECRET_PARAMS = re.compile(r"(?i)(^|[&;])((?:password|passwd|pass|pwd|secret|token|auth)=)[^&;#]*")


def redact_url(url: str) -> str:
    """A store URL safe to log or return: credentials are replaced by ``***``.

    Both places a URL can carry them are covered: the userinfo (``redis://user:pw@host``,
    ``redis://:pw@host``, or a bare token ``redis://token@host``, which keeps only the user name
    when there is a colon) and query parameters such as ``?password=`` that redis-py accepts.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    query = _SECRET_PARAMS.sub(r"\1\2***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing secret: the URL exactly as given
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# Blob naming the checkpoint a re-embedding job switched the store to, so that every replica can
# load it: JSON {"fingerprint": ..., "model": NAME under --model-dir}.
ACTIVE_MODEL_BLOB = "model/active"
# A replaced encoder's batcher and index are closed this long after the switch: requests that
# captured them before the switch finish on them.
_RETIRE_AFTER_S = 60.0


@dataclass(frozen=True)
class ServingModel:
    """The encoder, its micro-batcher and the index of its descriptors. A request reads
    ``Runtime.model`` once and uses that one object throughout (decode with its input spec, embed
    with its batcher, search its gallery), so a checkpoint switch between two of its steps cannot
    make it compare descriptors of two checkpoints."""

    encoder: Encoder
    batcher: MicroBatcher
    gallery: Gallery | None = None

    @property
    def fingerprint(self) -> str:
        return self.encoder.fingerprint


@dataclass
class Runtime:
    settings: Settings
    model: ServingModel
    store: Store
    metrics: ServiceMetrics
    phase: Phase = "starting"
    error: str | None = None
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    _dirty: threading.Event = field(default_factory=threading.Event)
    # Position in the store's change feed up to which the gallery is known to be current.
    feed_position: int | None = None
    _sync: GallerySync | None = field(default=None, repr=False)
    _switch_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def encoder(self) -> Encoder:
        return self.model.encoder

    @property
    def batcher(self) -> MicroBatcher:
        return self.model.batcher

    @property
    def gallery(self) -> Gallery | None:
        return self.model.gallery

    @gallery.setter
    def gallery(self, gallery: Gallery | None) -> None:
        self.model = replace(self.model, gallery=gallery)

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and self.gallery is not None

    def __post_init__(self) -> None:
        # Bounds how many requests decode frames at once (decoding is CPU- and memory-heavy); the
        # others wait on the event loop without holding a worker thread.
        self._decode_slots = asyncio.Semaphore(self.settings.max_concurrent_decodes)

    @property
    def frame_limits(self) -> FrameLimits:
        s = self.settings
        return FrameLimits(s.max_frame_bytes, s.max_pixels, s.max_request_pixels)

    async def decode(self, frames: Sequence[tuple[str, bytes]], model: ServingModel | None = None) -> np.ndarray:
        """Validate and decode uploaded frames into ``model``'s input (default: the current one), in
        a worker thread, once a decode slot is free."""
        encoder = (model or self.model).encoder
        return await self.decoding(decode_tracklet, frames, self.frame_limits, encoder.input_spec)

    async def decoding(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a worker thread once a decode slot is free: uploads and
        thumbnails share the ``max_concurrent_decodes`` slots, so a page full of thumbnails cannot
        take more decoding memory than uploads may."""
        async with self._decode_slots:
            return await run_in_threadpool(fn, *args, **kwargs)

    @property
    def store_url(self) -> str:
        return redact_url(self.store.url)

    @property
    def index_options(self) -> IndexOptions:
        return IndexOptions()

    def _new_gallery(self, encoder: Encoder | None = None) -> Gallery:
        encoder = encoder or self.encoder
        params: dict[str, object] = {}
        if self.settings.index == "milvus":
            # One collection per checkpoint: a re-embedded gallery is filled into a fresh one.
            params = {"uri": self.settings.milvus_uri, "collection": collection_name(encoder.fingerprint)}
        return Gallery(
            encoder.dim,
            kind=self.settings.index,
            use_gpu=None if self.settings.device == "cuda" else False,
            graph_k=self.settings.rerank_graph_k,
            options=self.index_options,
            index_params=params,
        )

    # ---- gallery ---------------------------------------------------------------------------
    def restore_gallery(self) -> None:
        """Build the index from the store (or a matching snapshot); then the runtime is ready."""
        start = time.perf_counter()
        try:
            # Read before loading: changes made while loading are then applied again (a no-op).
            head = self.store.change_head()
            if index_class(self.settings.index).durable:
                gallery = self._new_gallery()
                added, removed = gallery.reconcile(self.store)
                if added or removed:
                    log.warning("index reconciled with the store: %d tracklets added, %d removed", added, removed)
            else:
                gallery = build_gallery(
                    self.store,
                    self.encoder.dim,
                    self.settings.index,
                    use_gpu=None if self.settings.device == "cuda" else False,
                    graph_k=self.settings.rerank_graph_k,
                    options=self.index_options,
                    snapshot_dir=self.settings.snapshot_dir,
                )
        except Exception as exc:
            self.phase = "failed"
            self.error = f"could not restore the gallery index from {self.store_url}: {exc}"
            self.metrics.ready.set(0)
            raise StartupError(self.error) from exc
        self.gallery = gallery
        self.feed_position = head
        self.metrics.sync_position.set(head)
        self._bind_metrics()
        self.phase = "ready"
        self.metrics.ready.set(1)
        log.info("gallery ready: %d tracklets indexed in %.1fs", len(gallery), time.perf_counter() - start)
        if self.settings.sync_interval > 0 and self._sync is None:
            self._sync = GallerySync(self, self.settings.sync_interval)
            self._sync.start()

    def _bind_metrics(self) -> None:
        # Read through self.gallery at scrape time: resync() and a model switch swap the index.
        self.metrics.bind_gallery(
            lambda: float(len(self.gallery)) if self.gallery is not None else 0.0,
            lambda: float(len(self.gallery.identities())) if self.gallery is not None else 0.0,
            dim=self.encoder.dim,
        )

    # ---- checkpoint switch (re-embedding jobs, service.jobs.reembed_job) ----------------------
    def follow_store_model(self, encoder: Encoder | None = None) -> bool:
        """Switch to the checkpoint the store was re-embedded with, when it changed; True if it did.

        The new model (``encoder``, when the caller already loaded it, else the one the store's
        ``ACTIVE_MODEL_BLOB`` names under ``--model-dir``) gets its index built from the store while
        requests go on with the current model, whose index stays consistent with its own encoder;
        then ``model`` is swapped in one assignment. Writes made with the old encoder meanwhile are
        refused by the store (fingerprint mismatch, answered 503 ``model_switching``).
        Raises ``ModelSwitchError`` when this server cannot follow; it is then no longer ready
        (``/readyz`` 503 with the reason), since it could neither enroll nor serve current answers.
        """
        with self._switch_lock:
            fingerprint = self.store.info().fingerprint
            if fingerprint is None or fingerprint == self.encoder.fingerprint or self.gallery is None:
                return False
            start = time.perf_counter()
            try:
                if encoder is None or encoder.fingerprint != fingerprint:
                    encoder = load_active_model(self.store, self.settings, fingerprint)
            except ModelSwitchError as exc:
                self.phase, self.error = "failed", str(exc)
                self.metrics.ready.set(0)
                raise
            head = self.store.change_head()  # before loading: later changes are applied again
            gallery = self._new_gallery(encoder)
            if gallery.durable:
                gallery.reconcile(self.store)
            else:
                gallery.rebuild_from(self.store)
            with self.write_lock:
                old = self.model
                self.model = ServingModel(encoder, new_batcher(encoder, self.settings, self.metrics), gallery)
                self.feed_position = head
            self._bind_metrics()
            retire = threading.Timer(_RETIRE_AFTER_S, _retire, args=(old,))
            retire.daemon = True
            retire.start()
        log.info("switched to checkpoint %s (%d-d): %d tracklets indexed in %.1fs",
                 fingerprint, encoder.dim, len(gallery), time.perf_counter() - start)
        return True

    def mark_dirty(self, reason: str) -> None:
        """The index may disagree with the store (a write's outcome is unknown): rebuild it soon."""
        if not self._dirty.is_set():
            log.warning("gallery index marked for rebuild: %s", reason)
        self._dirty.set()

    @property
    def dirty(self) -> bool:
        return self._dirty.is_set()

    def resync(self) -> bool:
        """Rebuild the index from the store if it is marked dirty and the store answers.

        Writes wait during the rebuild; searches keep using the old index until the swap.
        Returns True when a rebuild happened.
        """
        if not self._dirty.is_set() or not self.ready or not self.store.ping():
            return False
        if self.store.info().fingerprint not in (None, self.encoder.fingerprint):
            # Re-embedded meanwhile: this model's index cannot be rebuilt from the store's new
            # descriptors; the switch builds the new model's index from the store instead.
            return self.follow_store_model()
        with self.write_lock:
            self._dirty.clear()
            try:
                head = self.store.change_head()
                if self.gallery is not None and self.gallery.durable:
                    # The durable index is shared state: reconcile it in place (no second client
                    # clearing it while this one still answers searches).
                    self.gallery.reconcile(self.store)
                    fresh = self.gallery
                else:
                    fresh = self._new_gallery()
                    fresh.rebuild_from(self.store)
            except StoreError as exc:
                self._dirty.set()
                log.warning("gallery rebuild postponed: %s", exc)
                return False
            self.gallery = fresh
            self.feed_position = head
        log.info("gallery index rebuilt from the store: %d tracklets", len(fresh))
        return True

    # ---- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        if self._sync is not None:
            self._sync.stop()
            self._sync = None
        self.batcher.close()
        if self.ready and self.settings.snapshot_dir is not None and not self.dirty:
            assert self.gallery is not None
            try:
                with self.write_lock:
                    save_snapshot(self.gallery, self.store, self.settings.snapshot_dir)
            except (ValueError, OSError, StoreError) as exc:
                log.warning("gallery snapshot not written at shutdown: %s", exc)
        if self.gallery is not None:
            self.gallery.close()
        self.store.close()
        self.metrics.ready.set(0)


def open_runtime(settings: Settings, metrics: ServiceMetrics | None = None) -> Runtime:
    """Load the model, open the store and check they belong together (see module docstring)."""
    from model import CheckpointError

    install_pil_guard(settings.max_pixels)
    try:
        encoder = make_encoder(settings)
    except CheckpointError as exc:
        raise StartupError(f"cannot load the checkpoint: {exc}") from exc
    except (OSError, RuntimeError, ValueError) as exc:
        raise StartupError(
            f"cannot create the {settings.backend} encoder for {settings.model_source} on {settings.device}: {exc}"
        ) from exc
    url = settings.store_url
    try:
        store = open_store(url, redis_prefix=settings.redis_prefix)
    except (StoreError, ValueError, OSError) as exc:
        raise StartupError(f"cannot open the store {redact_url(url)}: {exc}") from exc
    try:
        info = store.info()
        checkpoint = settings.model_source
        if info.fingerprint is not None and info.fingerprint != encoder.fingerprint and settings.model_dir is not None:
            # Re-embedded by a job while this server was down (or restarted with its old
            # configuration): serve what the replicas serve, if the model directory has it.
            try:
                encoder = load_active_model(store, settings, info.fingerprint)
                log.warning("the store %s was re-embedded with checkpoint %s: serving it from the model directory "
                            "instead of %s (point --checkpoint at it)", redact_url(url), info.fingerprint, checkpoint)
            except ModelSwitchError as exc:
                log.warning("%s", exc)
        if info.fingerprint is not None and info.fingerprint != encoder.fingerprint:
            raise StartupError(
                f"the store {redact_url(url)} holds descriptors made with checkpoint {info.fingerprint}, "
                f"but {checkpoint} has fingerprint {encoder.fingerprint}. Re-embed the gallery with "
                f"the new checkpoint first: `sasreid reembed --checkpoint {checkpoint} --store {redact_url(url)}` "
                "(needs frames kept with --keep-frames), or serve the checkpoint the gallery was built with."
            )
        if info.dim is not None and info.dim != encoder.dim:
            raise StartupError(
                f"the store {redact_url(url)} holds {info.dim}-d descriptors but {checkpoint} makes "
                f"{encoder.dim}-d ones; run `sasreid reembed --checkpoint {checkpoint} --store {redact_url(url)}`"
            )
    except StoreError as exc:
        store.close()
        raise StartupError(f"cannot read the store {redact_url(url)}: {exc}") from exc
    except StartupError:
        store.close()
        raise
    metrics = metrics if metrics is not None else ServiceMetrics()
    batcher = new_batcher(encoder, settings, metrics)
    return Runtime(settings=settings, model=ServingModel(encoder, batcher), store=store, metrics=metrics)


def load_active_model(store: Store, settings: Settings, fingerprint: str) -> Encoder:
    """The model a re-embedding job switched ``store`` to (``ACTIVE_MODEL_BLOB``), loaded from
    ``settings.model_dir``; ``ModelSwitchError`` (saying what to do) when it cannot be."""
    from model import CheckpointError

    restart = f"restart this server with the checkpoint of fingerprint {fingerprint}"
    blob = store.get_blob(ACTIVE_MODEL_BLOB)
    try:
        active = json.loads(blob) if blob is not None else {}
    except ValueError:
        active = {}
    if not isinstance(active, dict) or active.get("fingerprint") != fingerprint:
        raise ModelSwitchError(
            f"the store now holds descriptors of checkpoint {fingerprint} (re-embedded by `sasreid reembed`, "
            f"which names no model to load): {restart}"
        )
    name = active.get("model")
    try:
        encoder = load_model(settings, model_path(settings, name))
    except (CheckpointError, OSError, RuntimeError, ValueError) as exc:
        raise ModelSwitchError(
            f"the store was re-embedded with {name!r} (checkpoint {fingerprint}), which this server "
            f"cannot load: {exc}; give it the same --model-dir as the server that ran the job, or {restart}"
        ) from exc
    if encoder.fingerprint != fingerprint:
        raise ModelSwitchError(
            f"{name!r} in this server's model directory has fingerprint {encoder.fingerprint}, but the store "
            f"was re-embedded with {fingerprint}: {restart}"
        )
    return encoder


def _retire(model: ServingModel) -> None:
    model.batcher.close()
    if model.gallery is not None:
        model.gallery.close()


def new_batcher(encoder: Encoder, settings: Settings, metrics: ServiceMetrics) -> MicroBatcher:
    return MicroBatcher(
        encoder.encode,
        max_batch=settings.max_batch,
        max_wait_ms=settings.max_wait_ms,
        observer=metrics.observe_batch,
    )


def model_path(settings: Settings, name: object) -> Path:
    """The model ``name`` inside ``settings.model_dir``: a checkpoint directory for the torch
    backend, an exported ``.onnx`` file for onnx. ``ValueError`` (the message names the problem)
    when it is not one, or would leave the directory."""
    if settings.model_dir is None:
        raise ValueError("this server has no model directory: start it with --model-dir DIR (SASREID_MODEL_DIR)")
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError("the model must be a name relative to the model directory")
    path = inside(settings.model_dir, name)
    if path is None or path == settings.model_dir.resolve():
        raise ValueError(f"{name!r} is outside the model directory")
    if settings.backend == "onnx":
        if not path.is_file():
            raise FileNotFoundError(f"{name!r} is not an exported model (.onnx file) in the model directory")
    elif not (path / "config.json").is_file():
        raise FileNotFoundError(f"{name!r} is not a checkpoint directory (config.json) in the model directory")
    return path


def load_model(settings: Settings, path: Path) -> Encoder:
    """An encoder of this server's backend and device for the model at ``path``."""
    field = "model" if settings.backend == "onnx" else "checkpoint"
    return make_encoder(settings.model_copy(update={field: path}))
