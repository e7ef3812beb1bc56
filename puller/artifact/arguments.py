"""The flags of ``pier model`` and ``pier artifact``: argparse only, so ``pier --help`` stays quick."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Options = Callable[[argparse.ArgumentParser], None]


def _transfer(sub: argparse.ArgumentParser, registry_options: Options) -> None:
    registry_options(sub)
    sub.add_argument("--parallel", type=int, default=4, help="files moved at once (default 4)")
    sub.add_argument("-q", "--quiet", action="store_true", help="print only the digest")


def add_model_arguments(sub: argparse.ArgumentParser, name: str, registry_options: Options) -> None:
    """One ``pier model`` subcommand's arguments, by its name."""
    if name == "push":
        sub.add_argument("reference", help="where to push, e.g. localhost:5000/models/llama:v1")
        sub.add_argument("directory", help="the model directory (every file in it, but --exclude'd ones)")
        sub.add_argument(
            "--exclude",
            action="append",
            default=[],
            metavar="PATTERN",
            help="leave out matching files (repeatable)",
        )
        sub.add_argument(
            "--group",
            action="append",
            default=[],
            metavar="SUBDIR",
            help="pack this subdirectory as one tar layer (for many small files; repeatable)",
        )
        metadata = sub.add_argument_group(
            "model metadata (ModelPack config; also read from DIR/modelpack.json)"
        )
        for flag, dest, text in (
            ("--name", "name", "model name, e.g. llama3-8b-instruct"),
            ("--model-version", "model_version", "model version"),
            ("--family", "family", "model family, e.g. llama3"),
            ("--vendor", "vendor", "who distributes it"),
            ("--title", "title", "human-readable title"),
            ("--description", "description", "human-readable description"),
            ("--revision", "revision", "source control revision"),
            ("--authors", "authors", "comma-separated"),
            ("--licenses", "licenses", "comma-separated SPDX expressions"),
            ("--architecture", "architecture", "e.g. transformer"),
            ("--model-format", "model_format", "e.g. safetensors, gguf, onnx"),
            ("--param-size", "param_size", "parameter count, e.g. 8b or 6.7B"),
            ("--precision", "precision", "e.g. bf16, fp16, int8"),
            ("--quantization", "quantization", "e.g. awq, gptq, q4_k_m"),
            ("--created", "created", "RFC 3339 time (default: the newest file's time)"),
        ):
            metadata.add_argument(flag, dest=dest, help=text)
        _transfer(sub, registry_options)
    elif name == "pull":
        sub.add_argument("reference")
        sub.add_argument(
            "directory", nargs="?", help="write the files here (default: into the local store, for --mount)"
        )
        sub.add_argument(
            "--include",
            action="append",
            default=[],
            metavar="PATTERN",
            help="only matching files (repeatable)",
        )
        _transfer(sub, registry_options)
    elif name == "ls":
        sub.add_argument("-q", "--quiet", action="store_true", help="print only REPOSITORY:TAG")
    elif name == "inspect":
        sub.add_argument("reference")
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.add_argument("--remote", action="store_true", help="read it from its registry even if local")
        registry_options(sub)


def add_artifact_arguments(sub: argparse.ArgumentParser, name: str, registry_options: Options) -> None:
    if name == "push":
        sub.add_argument("reference")
        sub.add_argument("files", nargs="*", metavar="FILE[:MEDIATYPE]", help="files, by relative path")
        sub.add_argument("--artifact-type", help="the manifest's artifactType (required without --config)")
        sub.add_argument(
            "--media-type", default="application/octet-stream", help="of files given without one"
        )
        sub.add_argument(
            "--config", metavar="FILE[:MEDIATYPE]", help="a config blob (default: the empty one)"
        )
        sub.add_argument(
            "--annotation", "-a", action="append", default=[], metavar="KEY=VALUE", help="on the manifest"
        )
        sub.add_argument("--subject", metavar="TAG|REF", help="the manifest this one refers to (a referrer)")
        _transfer(sub, registry_options)
    elif name == "pull":
        sub.add_argument("reference")
        sub.add_argument("directory", help="write the files here")
        sub.add_argument(
            "--include", action="append", default=[], metavar="PATTERN", help="only matching files"
        )
        _transfer(sub, registry_options)
