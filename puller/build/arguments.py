"""``pier build``'s flags: kept apart from the builder, so building the parser imports nothing heavy."""

from __future__ import annotations

import argparse


def add_arguments(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("context", help="the build context: a directory (COPY reads only what is inside)")
    sub.add_argument("-f", "--file", help="the Dockerfile (default: CONTEXT/Dockerfile)")
    sub.add_argument("-t", "--tag", action="append", default=[], help="name the image (repeatable)")
    sub.add_argument("--build-arg", action="append", default=[], metavar="KEY[=VALUE]", help="an ARG's value")
    sub.add_argument("--target", help="build up to this stage (only the stages it needs)")
    sub.add_argument("--platform", help="os/arch: only this machine's platform can be built")
    sub.add_argument(
        "--network", choices=["host", "none"], default="host", help="RUN's network (default host)"
    )
    sub.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="id=ID,src=FILE|env=VAR",
        help="a secret for RUN --mount=type=secret (never in a layer, the history or the cache key)",
    )
    sub.add_argument(
        "--no-cache", action="store_true", help="run every step (the results still fill the cache)"
    )
    sub.add_argument("--format", choices=["oci", "docker"], default="oci", help="image format (default oci)")
    sub.add_argument(
        "--compression", choices=["gzip", "zstd", "none"], default="gzip", help="layer compression"
    )
    sub.add_argument("--push", action="store_true", help="push the image to each -t's registry")
    sub.add_argument("--cache-to", metavar="REF", help="export this build's cache to a registry")
    sub.add_argument(
        "--cache-from", action="append", default=[], metavar="REF", help="use a cache exported there"
    )
    sub.add_argument("--pull", action="store_true", help="pull FROM images even when they are local")
    sub.add_argument("--runtime", help="OCI runtime for RUN (default: chosen by the cgroup layout)")
    sub.add_argument("--iidfile", help="write the image digest to this file")
    sub.add_argument("-q", "--quiet", action="store_true", help="print only the image digest")
    sub.add_argument("--insecure", action="store_true", help="plain HTTP to registries")
    sub.add_argument("--ca-cert", help="a CA certificate to trust besides the system's")
