"""``sasreid serve``: run the retrieval API.

Flags override ``SASREID_*`` environment variables (see ``service.core.config``). The model is
loaded and the store checked before the port is bound, so a wrong checkpoint, an unreachable store,
a fingerprint mismatch or missing API keys end the command at once with a message and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from pydantic import ValidationError

_FLAGS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("--checkpoint",), {"help": "checkpoint directory (SASREID_CHECKPOINT)"}),
    (("--store",), {"help": "sqlite:///PATH or redis://HOST:PORT/DB (SASREID_STORE); default an SQLite file in --data-dir"}),
    (("--data-dir",), {"help": "directory of the default SQLite store (SASREID_DATA_DIR, default ./sasreid-data)"}),
    (("--device",), {"choices": ["cpu", "cuda"], "help": "encoder device (SASREID_DEVICE, default cpu)"}),
    (("--backend",), {"choices": ["torch", "onnx"], "help": "encoder backend (SASREID_BACKEND, default torch)"}),
    (("--model",), {"help": "exported ONNX model for --backend onnx (SASREID_MODEL; make it with `sasreid export`)"}),
    (("--host",), {"help": "bind address (SASREID_HOST, default 127.0.0.1)"}),
    (("--port",), {"type": int, "help": "port (SASREID_PORT, default 8000)"}),
    # choices and help are filled from the index registry in add_arguments
    (("--index",), {"help": "vector index kind: {kinds} (SASREID_INDEX, default flat)"}),
    (("--milvus-uri",), {"help": "Milvus for --index milvus: a local *.db file or http://host:19530 (SASREID_MILVUS_URI)"}),
    (("--max-batch",), {"type": int, "help": "tracklets per model call; 1 disables micro-batching (SASREID_MAX_BATCH)"}),
    (("--max-wait-ms",), {"type": float, "help": "micro-batch fill time (SASREID_MAX_WAIT_MS)"}),
    (("--snapshot-dir",), {"help": "FAISS snapshot directory for fast restarts (SASREID_SNAPSHOT_DIR)"}),
    (("--import-dir",), {"help": "directory of the JSON-lines files import jobs read (SASREID_IMPORT_DIR; unset: no import jobs)"}),
    (("--model-dir",), {"help": "directory of the checkpoints re-embedding jobs switch the gallery to "
                         "(SASREID_MODEL_DIR; unset: no re-embedding jobs)"}),
    (("--sync-interval",), {"type": float, "help": "seconds between polls of the store's change feed so replicas on one store see each other's writes; 0 = off (SASREID_SYNC_INTERVAL, default 0.25)"}),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from index.vector_index import index_kinds

    kinds = index_kinds()
    for names, kwargs in _FLAGS:
        if names == ("--index",):
            kwargs = {**kwargs, "choices": kinds, "help": kwargs["help"].format(kinds=", ".join(kinds))}
        parser.add_argument(*names, default=None, **kwargs)
    parser.add_argument(
        "--keep-frames",
        action="store_const",
        const=True,
        default=None,
        help="keep uploaded frames so `sasreid reembed` can re-embed the gallery later (SASREID_KEEP_FRAMES)",
    )
    parser.add_argument(
        "--no-auth",
        dest="auth",
        action="store_const",
        const=False,
        default=None,
        help="disable API keys (SASREID_AUTH=off); otherwise SASREID_WRITE_KEYS/SASREID_READ_KEYS are required",
    )
    parser.add_argument(
        "--no-ui",
        dest="ui",
        action="store_const",
        const=False,
        default=None,
        help="do not serve the web console at /ui (SASREID_UI=off); the API is unchanged",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = [n[0].lstrip("-").replace("-", "_") for n, _ in _FLAGS] + ["keep_frames", "auth", "ui"]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _fail(message: str) -> int:
    print(f"sasreid serve: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from service.api.timeouts import header_timeout_protocol
    from service.app import create_app
    from service.core.config import ConfigError, Settings
    from service.runtime import StartupError, open_runtime

    try:
        settings = Settings(**_overrides(args))
        settings.check_serviceable()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        return _fail(f"invalid settings: {problems}")
    except ConfigError as exc:
        return _fail(str(exc))
    try:
        runtime = open_runtime(settings)
    except StartupError as exc:
        return _fail(str(exc))

    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, runtime=runtime, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        # Slow clients: a request head must arrive in time (the body's limits are in the app).
        http=header_timeout_protocol(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_timeout_s,
    )
    server = uvicorn.Server(config)
    console = f", console at http://{settings.host}:{settings.port}/ui" if settings.ui else ""
    print(
        f"sasreid serve: http://{settings.host}:{settings.port} (docs at /docs{console}); model "
        f"{settings.model_source} [{runtime.encoder.fingerprint}, {runtime.encoder.backend}/{runtime.encoder.device}]; "
        f"store {runtime.store_url}; index {settings.index}; auth {'on' if settings.auth else 'OFF'}",
        file=sys.stderr,
        flush=True,
    )
    server.run()
    if fatal:
        return _fail(fatal[0])
    if not server.started:
        return _fail(f"the server did not start on {settings.host}:{settings.port} (see the log above)")
    return 0
