"""``pier build``: images from a Dockerfile, each RUN under the OCI runtime, with a layer cache."""
