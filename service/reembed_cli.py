"""``sasreid reembed``: switch a stored gallery to a new checkpoint.

Every stored tracklet is re-embedded from its kept frames (servers started with ``--keep-frames``
keep them) with the same preprocessing and frame sampling as enrollment, then all descriptors and
the store's fingerprint are replaced in one transaction (``Store.replace_descriptors``): a crash or
an error leaves the gallery exactly as it was. Nothing is written unless every tracklet could be
re-embedded; a tracklet without kept frames (enrolled without ``--keep-frames``, or bulk-imported
as a descriptor) makes the command stop and explain what to do instead.

Stop the server first: a tracklet enrolled during the re-embedding makes the final switch fail
(nothing is changed then; run the command again). A running gallery is switched without a restart
by a ``reembed`` job instead (``service.jobs.reembed_job``).
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="the NEW checkpoint directory")
    parser.add_argument("--store", required=True, help="sqlite:///PATH or redis://HOST:PORT/DB")
    parser.add_argument("--redis-prefix", default="sasreid:", help="key prefix of a Redis store")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=8, help="tracklets per model call")


def _fail(message: str) -> int:
    print(f"sasreid reembed: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from tqdm import tqdm

    from index.store import InvalidRecord, StoreError, open_store
    from model import CheckpointError
    from service.core.errors import ApiError
    from service.encoders import TorchEncoder
    from service.reembedding import FRAMES_NOT_KEPT_HELP, FrameEmbedder
    from service.runtime import redact_url

    if args.batch_size < 1:
        return _fail("--batch-size must be >= 1")
    try:
        encoder = TorchEncoder(args.checkpoint, device=args.device)
    except (CheckpointError, RuntimeError, OSError) as exc:
        return _fail(f"cannot load the checkpoint: {exc}")
    try:
        store = open_store(args.store, redis_prefix=args.redis_prefix)
    except (StoreError, ValueError, OSError) as exc:
        return _fail(f"cannot open the store {redact_url(args.store)}: {exc}")
    url = redact_url(args.store)
    with store:
        info = store.info()
        total = store.count_tracklets()
        if info.fingerprint == encoder.fingerprint:
            print(f"{url} already holds descriptors of checkpoint {encoder.fingerprint}; nothing to do")
            return 0
        print(
            f"re-embedding {total} tracklets of {url} from checkpoint {info.fingerprint} to "
            f"{encoder.fingerprint} ({encoder.dim}-d)",
            file=sys.stderr,
        )
        missing: list[str] = []
        embedder = FrameEmbedder(encoder, args.batch_size)
        added = 0
        try:
            for record in tqdm(store.iter_records(), total=total, unit="tracklet", desc="reembed"):
                tracklet_id = record.tracklet_id
                frames = store.get_frames(tracklet_id)
                if frames is None:
                    missing.append(tracklet_id)
                    if len(missing) == 1 and not added:
                        # The first tracklet already has none: almost surely none was kept.
                        break
                    continue
                if missing:
                    continue  # the outcome is decided; only count what is missing
                embedder.add(tracklet_id, frames)
                added += 1
            if missing:
                shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
                return _fail(f"cannot re-embed {url}: {shown}: {FRAMES_NOT_KEPT_HELP}")
            replaced = store.replace_descriptors(encoder.fingerprint, embedder.take())
        except InvalidRecord as exc:
            return _fail(
                f"the store changed while re-embedding ({exc}); stop the server and run the command again "
                "(nothing was changed)"
            )
        except StoreError as exc:
            return _fail(f"store error, nothing was changed: {exc}")
        except ApiError as exc:
            return _fail(f"a kept frame cannot be decoded, nothing was changed: {exc.message}")
    print(
        f"re-embedded {replaced} tracklets; {url} now holds checkpoint {encoder.fingerprint}. "
        f"Serve it with: sasreid serve --checkpoint {args.checkpoint} --store {url}"
    )
    return 0
