"""``/v2/{name}/referrers/{digest}``: the manifests whose subject is a digest, as an OCI index."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..http import json_response
from ..manifests import OCI_INDEX
from ..references import Digest
from .services import Services


async def list_referrers(services: Services, request: Request, name: str, digest: str) -> Response:
    subject = Digest.parse(digest)
    artifact_type = request.query_params.get("artifactType")
    index = await services.store.referrers(name, subject, artifact_type)
    headers = {"oci-filters-applied": "artifactType"} if artifact_type else None
    return json_response(index, headers=headers, media_type=OCI_INDEX)
