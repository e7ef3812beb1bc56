"""The CNCF ModelPack format (modelpack/model-spec, specs-go/v1): media types, roles, the model config.

A model is an OCI image manifest whose ``artifactType`` names it a model, whose config is
the model's metadata, and whose layers are its files, one each, typed by role (weights,
weight configs, docs, code, datasets) and named by the ``org.cncf.model.filepath``
annotation. Weights go ``raw``: they do not compress, and a raw blob *is* the file.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_TYPE = "application/vnd.cncf.model.config.v1+json"
LEGACY_ARTIFACT_TYPE = "application/vnd.cnai.model.manifest.v1+json"  # the spec before CNCF
LEGACY_CONFIG_TYPE = "application/vnd.cnai.model.config.v1+json"

FILEPATH = "org.cncf.model.filepath"
FILE_METADATA = "org.cncf.model.file.metadata+json"
LEGACY_FILEPATH = "org.cnai.model.filepath"
LEGACY_FILE_METADATA = "org.cnai.model.file.metadata+json"
TITLE = "org.opencontainers.image.title"

ROLES = ("weight", "weight.config", "doc", "code", "dataset")
PACKINGS = ("raw", "tar", "tar+gzip", "tar+zstd")
_LAYER_TYPE = re.compile(
    r"application/vnd\.(?:cncf|cnai)\.model\.([a-z.]+)\.v1\.(raw|tar|tar\+gzip|tar\+zstd)"
)

WEIGHT_SUFFIXES = frozenset(
    [
        ".safetensors",
        ".bin",
        ".gguf",
        ".ggml",
        ".pt",
        ".pth",
        ".ckpt",
        ".onnx",
        ".h5",
        ".keras",
        ".pb",
        ".tflite",
        ".msgpack",
        ".npz",
        ".ot",
        ".engine",
        ".trt",
        ".mlmodel",
        ".params",
        ".nemo",
        ".pdparams",
    ]
)
WEIGHT_CONFIG_NAMES = frozenset(
    [
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
        "adapter_config.json",
        "quantize_config.json",
        "params.json",
    ]
)
WEIGHT_CONFIG_SUFFIXES = frozenset([".tiktoken", ".model", ".spm", ".vocab", ".merges"])
DOC_NAMES = frozenset(
    ["readme", "license", "licence", "notice", "copying", "authors", "changelog", "model_card", "modelcard"]
)
DOC_SUFFIXES = frozenset([".md", ".rst", ".txt", ".pdf", ".html"])
CODE_SUFFIXES = frozenset(
    [
        ".py",
        ".ipynb",
        ".sh",
        ".js",
        ".ts",
        ".go",
        ".rs",
        ".c",
        ".cc",
        ".cpp",
        ".h",
        ".cu",
        ".java",
        ".r",
        ".jl",
        ".lua",
    ]
)
DATASET_SUFFIXES = frozenset(
    [
        ".csv",
        ".tsv",
        ".parquet",
        ".arrow",
        ".jsonl",
        ".ndjson",
        ".tfrecord",
        ".records",
        ".npy",
        ".h5ad",
        ".feather",
        ".avro",
        ".orc",
        ".wav",
        ".flac",
        ".mp3",
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".tiff",
        ".zip",
    ]
)
DATASET_DIRS = frozenset({"data", "dataset", "datasets", "train", "test", "validation", "eval"})


def layer_media_type(role: str, packing: str = "raw") -> str:
    if role not in ROLES or packing not in PACKINGS:
        raise ValueError(f"no ModelPack layer type for {role!r} packed {packing!r}")
    return f"application/vnd.cncf.model.{role}.v1.{packing}"


def parse_layer_type(media_type: str) -> tuple[str, str] | None:
    """(role, packing) of a ModelPack layer type, the older ``cnai`` spelling included."""
    match = _LAYER_TYPE.fullmatch(media_type)
    if match is None or match.group(1) not in ROLES:
        return None
    return match.group(1), match.group(2)


def is_model(manifest: dict) -> bool:
    artifact_type = manifest.get("artifactType")
    config_type = (manifest.get("config") or {}).get("mediaType")
    return artifact_type in (ARTIFACT_TYPE, LEGACY_ARTIFACT_TYPE) or config_type in (
        CONFIG_TYPE,
        LEGACY_CONFIG_TYPE,
    )


def classify(path: str) -> str:
    """The role of a file of a model directory, by its name: what a reader of the layer list expects."""
    pure = PurePosixPath(path.lower())
    name, suffix = pure.name, pure.suffix
    if suffix in WEIGHT_SUFFIXES:
        return "weight"
    if name in WEIGHT_CONFIG_NAMES or name.startswith("tokenizer") or suffix in WEIGHT_CONFIG_SUFFIXES:
        return "weight.config"
    if pure.stem in DOC_NAMES or suffix in (".md", ".rst"):
        return "doc"
    if suffix in CODE_SUFFIXES:
        return "code"
    if suffix in DATASET_SUFFIXES or any(part in DATASET_DIRS for part in pure.parts[:-1]):
        return "dataset"
    if suffix in DOC_SUFFIXES:
        return "doc"
    if suffix in (".json", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".jinja"):
        return "weight.config"
    return "doc"


# The fields of the config's ``descriptor`` and ``config`` objects that pier sets from flags or
# from ``modelpack.json``: the spec's names, with the flag that sets each.
DESCRIPTOR_FIELDS = (
    "name",
    "version",
    "family",
    "vendor",
    "title",
    "description",
    "revision",
    "docURL",
    "sourceURL",
)
LIST_FIELDS = ("authors", "licenses")
CONFIG_FIELDS = ("architecture", "format", "paramSize", "precision", "quantization")
PARAM_SIZE = re.compile(r"\d+(?:\.\d)?[QqTtBbMmKk]")
METADATA_FILE = "modelpack.json"


class ModelConfigError(ValueError):
    pass


@dataclass
class ModelMetadata:
    """What the model config records of a model besides its files."""

    descriptor: dict
    config: dict

    @classmethod
    def from_sources(cls, file_values: dict, flags: dict[str, str | None]) -> ModelMetadata:
        """``modelpack.json``'s values (flat, or the spec's ``descriptor``/``config``), flags over them."""
        flat: dict = {}
        for key in ("descriptor", "config"):
            if isinstance(file_values.get(key), dict):
                flat.update(file_values[key])
        flat.update({k: v for k, v in file_values.items() if k not in ("descriptor", "config", "modelfs")})
        flat.update({k: v for k, v in flags.items() if v is not None})
        known = set(DESCRIPTOR_FIELDS) | set(LIST_FIELDS) | set(CONFIG_FIELDS) | {"createdAt", "capabilities"}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ModelConfigError(
                f"unknown model metadata field {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        descriptor = {k: flat[k] for k in DESCRIPTOR_FIELDS if flat.get(k)}
        for key in LIST_FIELDS:
            value = flat.get(key)
            if isinstance(value, str):
                value = [item.strip() for item in value.split(",") if item.strip()]
            if value:
                if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                    raise ModelConfigError(f"{key} must be a list of strings")
                descriptor[key] = value
        for key, value in descriptor.items():
            if key not in LIST_FIELDS and not isinstance(value, str):
                raise ModelConfigError(f"{key} must be a string")
        created = flat.get("createdAt")
        if created:  # else the pusher sets the files' newest time: stable across re-pushes
            descriptor["createdAt"] = _rfc3339(created)
        config = {k: flat[k] for k in CONFIG_FIELDS if flat.get(k)}
        for key, value in config.items():
            if not isinstance(value, str):
                raise ModelConfigError(f"{key} must be a string")
        if "paramSize" in config and not PARAM_SIZE.fullmatch(config["paramSize"]):
            raise ModelConfigError(
                f"paramSize {config['paramSize']!r}: a count and one of Q, T, B, M, K, as in 8b or 6.7B"
            )
        if isinstance(flat.get("capabilities"), dict):
            config["capabilities"] = flat["capabilities"]
        return cls(descriptor, config)

    def document(self, diff_ids: list[str]) -> bytes:
        """The config blob: ``descriptor``, ``modelfs`` (the diff ID of every layer, in order), ``config``."""
        body = {
            "descriptor": self.descriptor,
            "modelfs": {"type": "layers", "diffIds": diff_ids},
            "config": self.config,
        }
        return json.dumps(body, indent=2, sort_keys=False).encode() + b"\n"


def _rfc3339(value: object) -> str:
    if not isinstance(value, str):
        raise ModelConfigError("createdAt must be an RFC 3339 date and time")
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ModelConfigError(f"createdAt {value!r} is not an RFC 3339 date and time") from None
    return value


def file_metadata(name: str, mode: int, size: int, mtime: float, typeflag: str = "0") -> str:
    """The ``org.cncf.model.file.metadata+json`` value: Go's FileMetadata as modctl writes it."""
    when = datetime.datetime.fromtimestamp(mtime, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    value = {
        "name": name,
        "mode": mode,
        "uid": 0,
        "gid": 0,
        "size": size,
        "mtime": when,
        "typeflag": ord(typeflag),
    }
    return json.dumps(value, separators=(",", ":"))


def layer_path(descriptor: dict) -> str | None:
    """The path a layer names for its file: the current key, the older one, then the OCI title."""
    annotations = descriptor.get("annotations") or {}
    for key in (FILEPATH, LEGACY_FILEPATH, TITLE):
        value = annotations.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def layer_mode(descriptor: dict) -> int | None:
    """The permission bits the file metadata annotation records, if it is there and sane."""
    annotations = descriptor.get("annotations") or {}
    text = annotations.get(FILE_METADATA) or annotations.get(LEGACY_FILE_METADATA)
    if not isinstance(text, str):
        return None
    try:
        mode = json.loads(text).get("mode")
    except (ValueError, AttributeError):
        return None
    return mode & 0o777 if isinstance(mode, int) and not isinstance(mode, bool) else None
