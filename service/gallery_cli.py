"""``sasreid gallery migrate``: copy a stored gallery's descriptors into a Milvus collection.

Switching a deployment from a FAISS index to ``--index milvus`` needs no migration for
correctness (a server reconciles Milvus with the store at start and writes what is missing), but
that first start then uploads every vector before ``/readyz`` turns 200. This command does the
upload beforehand, while the FAISS servers keep serving:

* the collection is the one ``sasreid serve --index milvus`` opens for the store's checkpoint
  fingerprint (``index.milvus_index.collection_name``), unless ``--collection`` names another;
* only ids the collection lacks are written (``--rewrite`` writes all), always as upserts, so an
  interrupted run is resumed by running it again; ids the store no longer has are deleted;
* at the end the collection's ids are compared with the store's by count and SHA-256 digest, and a
  sample of vectors byte for byte; any difference exits 1.

Tracklets enrolled or deleted while it runs are reconciled by the servers' start-up anyway.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

_EXIT_MISMATCH = 1
_EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    migrate = actions.add_parser(
        "migrate",
        help="copy the gallery's descriptors into a Milvus collection",
        description="Copy every stored descriptor into the Milvus collection `sasreid serve --index milvus` "
        "uses, then verify counts, an id digest and a sample of vectors.",
    )
    migrate.add_argument(
        "--store", required=True, help="sqlite:///PATH or redis://HOST:PORT/DB (the system of record)"
    )
    migrate.add_argument(
        "--redis-prefix", default="sasreid:", help="key prefix of a Redis store (SASREID_REDIS_PREFIX)"
    )
    migrate.add_argument(
        "--to-milvus",
        required=True,
        metavar="URI",
        help="http://HOST:19530 (Milvus server) or a local *.db file (milvus-lite)",
    )
    migrate.add_argument(
        "--collection",
        default=None,
        help="collection name; default: the one the server uses for the store's checkpoint",
    )
    migrate.add_argument("--batch", type=int, default=1000, help="records read and upserted per round trip")
    migrate.add_argument(
        "--rewrite", action="store_true", help="upsert every record, not only those Milvus lacks"
    )
    migrate.add_argument(
        "--verify-vectors",
        type=int,
        default=1000,
        metavar="N",
        help="vectors compared byte for byte at the end (0: none)",
    )


def _fail(message: str, code: int = _EXIT_USAGE) -> int:
    print(f"sasreid gallery migrate: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.action == "migrate":
        return migrate(args)
    return _fail(f"unknown action {args.action!r}")


def migrate(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from index.gallery import id_digest
    from index.milvus_index import MilvusIndex, collection_name
    from index.store import StoreError, open_store
    from index.types import GalleryEntry, IndexOptions, check_descriptors
    from service.runtime import redact_url

    if isinstance(args.batch, bool) or args.batch < 1:
        return _fail(f"--batch must be >= 1, got {args.batch}")
    if args.verify_vectors < 0:
        return _fail(f"--verify-vectors must be >= 0, got {args.verify_vectors}")
    if not args.to_milvus.strip():
        return _fail("--to-milvus is empty: give http://HOST:19530 or a *.db file")
    shown = redact_url(args.store)
    try:
        store = open_store(args.store, redis_prefix=args.redis_prefix)
    except (StoreError, ValueError, OSError) as exc:
        return _fail(f"cannot open the store {shown}: {exc}")
    index: Any = None
    try:
        info = store.info()
        if info.fingerprint is None or info.dim is None:
            print(f"the store {shown} holds no tracklets: nothing to migrate")
            return 0
        collection = args.collection or collection_name(info.fingerprint)
        try:
            index = MilvusIndex(info.dim, IndexOptions(), uri=args.to_milvus, collection=collection)
        except ValueError as exc:
            return _fail(str(exc))
        except Exception as exc:  # pymilvus raises its own types for an unreachable server
            return _fail(f"cannot open Milvus at {args.to_milvus}: {type(exc).__name__}: {exc}")

        stored_ids = store.int_ids()
        rng = np.random.default_rng(0)
        sample = set(
            rng.choice(stored_ids, size=min(args.verify_vectors, len(stored_ids)), replace=False).tolist()
        )
        expected: dict[int, bytes] = {}
        present = set() if args.rewrite else set(index.ids().tolist())
        todo = (
            len(stored_ids) if args.rewrite else len(np.setdiff1d(stored_ids, np.fromiter(present, np.int64)))
        )
        print(
            f"store {shown}: {len(stored_ids)} tracklets of checkpoint {info.fingerprint} ({info.dim}-d); "
            f"Milvus {args.to_milvus} collection {collection!r}: {len(present) if not args.rewrite else 'all'} present, "
            f"{todo} to upsert",
            flush=True,
        )
        upserted = 0
        with tqdm(total=todo, unit="tracklet", file=sys.stderr, disable=todo == 0) as bar:
            pending: list[Any] = []

            def flush() -> None:
                nonlocal upserted, pending
                if pending:
                    vectors = check_descriptors(
                        np.stack([r.descriptor for r in pending]), info.dim, "stored descriptors"
                    )
                    index.add([GalleryEntry.from_record(r) for r in pending], vectors)
                    upserted += len(pending)
                    bar.update(len(pending))
                    pending = []

            for record in store.iter_records(batch=args.batch):
                if record.int_id in sample:
                    expected[int(record.int_id)] = record.descriptor.astype("<f4").tobytes()
                if record.int_id in present:
                    continue
                pending.append(record)
                if len(pending) >= args.batch:
                    flush()
            flush()

        # Ids the store no longer has (deleted since an earlier run, or while this one ran).
        stored_ids = store.int_ids()
        extra = np.setdiff1d(index.ids(), stored_ids)
        if len(extra):
            index.remove(extra)
        return _verify(index, stored_ids, expected, upserted, len(extra), id_digest)
    except StoreError as exc:
        return _fail(f"the store {shown} failed: {exc}")
    finally:
        if index is not None:
            index.close()
        store.close()


def _verify(
    index: Any, stored_ids: Any, expected: dict[int, bytes], upserted: int, removed: int, id_digest: Any
) -> int:
    import numpy as np

    count, digest = id_digest(stored_ids)
    milvus_count, milvus_digest = id_digest(index.ids())
    if (count, digest) != (milvus_count, milvus_digest):
        return _fail(
            f"after the copy Milvus holds {milvus_count} ids (sha256 {milvus_digest[:16]}...) but the store "
            f"{count} (sha256 {digest[:16]}...): was the gallery written to meanwhile? Run the command again",
            _EXIT_MISMATCH,
        )
    # Sampled records deleted from the store since they were read are not in Milvus any more.
    ids = np.array(sorted(i for i in expected if i in set(stored_ids.tolist())), dtype=np.int64)
    found, vectors = index.lookup(ids)
    differ = [
        int(i)
        for i, v in zip(found.tolist(), vectors, strict=True)
        if v.astype("<f4").tobytes() != expected[i]
    ]
    if differ or len(found) != len(ids):
        return _fail(
            f"{len(differ)} of {len(ids)} sampled vectors differ between Milvus and the store (e.g. int ids "
            f"{differ[:5]}); run again with --rewrite",
            _EXIT_MISMATCH,
        )
    print(
        f"done: {upserted} upserted, {removed} removed; Milvus and the store both hold {count} tracklets "
        f"(sha256 of the ids {digest[:16]}...); {len(ids)} sampled vectors are identical"
    )
    return 0
