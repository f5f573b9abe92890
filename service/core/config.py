"""Service settings: environment variables prefixed ``SASREID_``, overridden by ``sasreid serve`` flags.

Every field below is read from ``SASREID_<FIELD NAME IN UPPER CASE>`` (for example
``SASREID_MAX_FRAMES_PER_TRACKLET=32``); ``sasreid serve`` flags are passed as constructor
arguments and so take precedence. Lists of keys are comma-separated.

Input limits are sized for person crops: far-distance crops are tens of pixels high and even
close-range ground crops rarely exceed 1000x500, so the defaults (2 MB and 16 megapixels per
frame, 64 frames per tracklet, 64 MB per request) leave ample headroom. Memory per request stays
near one decoded frame: frames are decoded one at a time (JPEGs at reduced scale when far above the
model's input size) and shrunk at once, ``max_request_pixels`` bounds the decoding work of one
request, and at most ``max_concurrent_decodes`` requests decode at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from index.rerank import RerankParams
from index.vector_index import index_kinds

# The validated defaults (k1 = 3, k2 = 1, lambda = 0.3). They need the neighbour graph maintained on
# enroll/delete to equal the one rebuilt at start, bit for bit (it once kept stale row maxima after a
# delete): tests/index/test_rerank.py and the restart in tests/service/test_e2e.py check it.
_RERANK = RerankParams()

Backend = Literal["torch", "onnx"]
Device = Literal["cpu", "cuda"]

DEFAULT_DATA_DIR = Path("sasreid-data")
DEFAULT_SQLITE_NAME = "gallery.sqlite"


class ConfigError(ValueError):
    """Settings that cannot work together; the message says what to change."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SASREID_", extra="forbid", validate_default=True)

    # ---- model and gallery -------------------------------------------------------------------
    checkpoint: Path | None = Field(None, description="checkpoint directory (config.json + model.safetensors)")
    backend: Backend = Field("torch", description="embedding backend")
    model: Path | None = Field(None, description="exported ONNX model (sasreid export) for backend onnx")
    device: Device = Field("cpu", description="device the encoder runs on")
    store: str | None = Field(
        None, description="store URL: sqlite:///PATH or redis://HOST:PORT/DB; default an SQLite file in data_dir"
    )
    redis_prefix: str = Field("sasreid:", description="key prefix of a Redis store")
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="where the default SQLite store lives")
    index: str = Field("flat", description="vector index kind (index.vector_index.INDEX_KINDS)")
    milvus_uri: str | None = Field(
        None, description="Milvus for --index milvus: a local *.db file (milvus-lite) or http://host:19530"
    )
    keep_frames: bool = Field(
        False, description="keep uploaded frames in the store so `sasreid reembed` can re-embed them later"
    )
    snapshot_dir: Path | None = Field(
        None, description="directory for FAISS snapshots (faster restarts); None rebuilds from the store"
    )
    graph_k: int = Field(
        30,
        ge=0,
        le=1000,
        description="neighbours per gallery item in the re-ranking graph; 0 disables re-ranking (building "
        "the graph costs O(N^2): minutes at start-up for a 100k gallery on 2 CPU cores)",
    )
    search_candidates: int = Field(200, ge=1, le=100_000, description="tracklets taken from the index per query")
    sync_interval: float = Field(
        0.25,
        ge=0.0,
        le=3600.0,
        description="seconds between polls of the store's change feed, through which servers sharing one store "
        "(replicas) see each other's writes; 0 turns the polling off (a single server per store)",
    )

    # ---- jobs (service.jobs) ------------------------------------------------------------------
    import_dir: Path | None = Field(
        None,
        description="directory import jobs (POST /v1/jobs, kind import) read their JSON-lines files from; "
        "None refuses import jobs. Sources are paths relative to it and cannot leave it",
    )
    model_dir: Path | None = Field(
        None,
        description="directory of the checkpoints (torch backend) or exported .onnx models (onnx backend) "
        "that re-embedding jobs (POST /v1/jobs, kind reembed) switch the gallery to, named relative to it; "
        "every replica needs the same directory to follow a switch live. None refuses re-embedding jobs",
    )
    job_lease_s: float = Field(
        30.0, ge=0.5, le=3600.0,
        description="a running job's lease: a server that died holding one leaves the job to whoever polls "
        "after the lease ran out (this server restarted, or a replica)",
    )
    job_poll_s: float = Field(1.0, gt=0.0, le=60.0, description="seconds between looks for a job to run")
    job_chunk_records: int = Field(1000, ge=1, le=100_000, description="records an import or re-embedding job handles per step")
    max_pending_jobs: int = Field(100, ge=1, le=1000, description="jobs queued or running at once")
    job_retention_s: float = Field(
        7 * 86400.0, ge=0.0,
        description="a finished job (succeeded or failed) is deleted this many seconds after it finished, "
        "so the store does not grow without bound; 0 keeps finished jobs forever",
    )

    # ---- server ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    ui: bool = Field(
        True, description="serve the investigators' web console at /ui (SASREID_UI=off or --no-ui turns it off)"
    )

    # ---- auth --------------------------------------------------------------------------------
    auth: bool = Field(True, description="API-key auth; only SASREID_AUTH=off (or --no-auth) disables it")
    read_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    write_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    # ---- input limits ------------------------------------------------------------------------
    max_frames_per_tracklet: int = Field(64, ge=1, le=10_000)
    max_frame_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)
    max_pixels: int = Field(4096 * 4096, ge=64 * 64, description="width*height limit per frame")
    max_request_pixels: int = Field(
        128 * 1024 * 1024,
        ge=64 * 64,
        description="decoded pixels per request, all frames together (JPEGs far above the model's input "
        "size count at their reduced decoding scale); checked from the headers before decoding",
    )
    max_concurrent_decodes: int = Field(
        2, ge=1, le=64, description="requests decoding frames at once; the others wait their turn"
    )
    max_batch_records: int = Field(20_000, ge=1, description="records per POST /tracklets/batch request")
    # Upper bounds match the API schema's (service.schemas.MAX_TOP_K / MAX_RERANK_K).
    max_top_k: int = Field(1000, ge=1, le=10_000)
    max_metadata_bytes: int = Field(64 * 1024, ge=256)

    # ---- slow clients (see service.api.timeouts) ----------------------------------------------
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a request head (request line and headers) must arrive within this"
    )
    keep_alive_timeout_s: int = Field(5, ge=1, le=3600, description="idle kept-alive connections are closed after this")
    body_idle_timeout_s: float = Field(15.0, gt=0, le=3600, description="longest gap between two chunks of a body")
    body_timeout_s: float = Field(120.0, gt=0, le=86400, description="a whole request body must arrive within this")

    # ---- micro-batching ----------------------------------------------------------------------
    max_batch: int = Field(8, ge=1, description="tracklets per model call; 1 disables micro-batching")
    max_wait_ms: float = Field(5.0, ge=0.0, le=1000.0, description="how long a batch waits to fill up")

    # ---- re-ranking defaults (index.rerank.RerankParams(), see _RERANK) ------------------------------
    rerank_k1: int = Field(_RERANK.k1, ge=1, le=1000)
    rerank_k2: int = Field(_RERANK.k2, ge=1, le=1000)
    rerank_lambda: float = Field(_RERANK.lambda_value, ge=0.0, le=1.0)

    @field_validator("read_keys", "write_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("index")
    @classmethod
    def _known_index(cls, value: str) -> str:
        kinds = index_kinds()
        if value not in kinds:
            raise ValueError(f"unknown index kind {value!r}; valid kinds: {', '.join(kinds)}")
        return value

    @field_validator("store", "milvus_uri", "snapshot_dir", "import_dir", "model_dir", mode="before")
    @classmethod
    def _empty_store_is_default(cls, value: object) -> object:
        # An empty value means unset: a compose override can then clear what the base file sets
        # (docker-compose.milvus.yml clears SASREID_SNAPSHOT_DIR).
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.graph_k and self.rerank_k1 > self.graph_k:
            raise ValueError(f"rerank_k1={self.rerank_k1} must not exceed graph_k={self.graph_k}")
        if self.graph_k and self.rerank_k2 > self.graph_k + 1:
            raise ValueError(f"rerank_k2={self.rerank_k2} must not exceed graph_k + 1 = {self.graph_k + 1}")
        if self.index == "milvus" and not self.milvus_uri:
            raise ValueError("index milvus needs milvus_uri (--milvus-uri / SASREID_MILVUS_URI): a *.db file or http://host:19530")
        if self.index == "milvus" and self.snapshot_dir is not None:
            raise ValueError("snapshot_dir is for the FAISS index kinds; the milvus index keeps its own state")
        if self.max_frame_bytes > self.max_request_bytes:
            raise ValueError("max_frame_bytes must not exceed max_request_bytes")
        return self

    # ---- derived -----------------------------------------------------------------------------
    @property
    def rerank_graph_k(self) -> int | None:
        """The gallery's neighbour-graph size, None when re-ranking is disabled."""
        return self.graph_k or None

    @property
    def store_url(self) -> str:
        return self.store if self.store is not None else f"sqlite:///{self.default_sqlite_path}"

    @property
    def default_sqlite_path(self) -> Path:
        return self.data_dir / DEFAULT_SQLITE_NAME

    @property
    def model_source(self) -> Path | None:
        """What the encoder is loaded from: the ONNX file for backend onnx, else the checkpoint."""
        return self.model if self.backend == "onnx" else self.checkpoint

    def read_key_values(self) -> list[bytes]:
        return [k.get_secret_value().encode() for k in self.read_keys]

    def write_key_values(self) -> list[bytes]:
        return [k.get_secret_value().encode() for k in self.write_keys]

    def check_serviceable(self) -> None:
        """Raise ``ConfigError`` for settings a server must not start with."""
        if self.backend == "onnx" and self.model is None:
            raise ConfigError("backend onnx needs an exported model: pass --model model.onnx or set SASREID_MODEL")
        if self.backend == "torch" and self.checkpoint is None:
            raise ConfigError("no checkpoint: pass --checkpoint DIR or set SASREID_CHECKPOINT")
        if self.auth and not self.read_keys and not self.write_keys:
            raise ConfigError(
                "auth is on but no API keys are configured: set SASREID_WRITE_KEYS (and optionally "
                "SASREID_READ_KEYS) to comma-separated keys, or disable auth explicitly with "
                "SASREID_AUTH=off / --no-auth"
            )
