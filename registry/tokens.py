"""JWT bearer tokens of the Docker registry token protocol: signing keys, minting, verifying.

A token says who (``sub``) may do what (``access``: repository names and actions), for
which registry (``aud``, the service name), from which issuer (``iss``), until when
(``exp``). The signing key is found the way distribution finds it: the ``x5c``
certificate chain in the header when there is one, else the ``kid``, which is libtrust's
fingerprint of the public key (what distribution and docker_auth compute). So tokens
minted here are accepted by distribution configured with a certificate of the same key,
and tokens minted by such issuers are accepted here.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import itertools
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

MAX_TOKEN = 16 * 1024
MAX_CHAIN = 4
LEEWAY = 30  # seconds of clock skew tolerated between the issuer and this registry
ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"})
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class TokenError(Exception):
    """A token that must not be honoured; the message is safe to show (it holds no secret)."""


class KeyConfigError(ValueError):
    pass


def key_id(key: PublicKey) -> str:
    """libtrust's key ID: base32 of the first 240 bits of SHA-256 of the DER public key."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def _algorithms_for(key: PublicKey) -> list[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
    return [_EC_ALGORITHMS.get(key.curve.name, "")]


@dataclass(frozen=True)
class Grant:
    type: str  # "repository" or "registry"
    name: str
    actions: tuple[str, ...]

    def scope(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


class SigningKey:
    """The token server's private key (RSA of 2048 bits or more, or EC P-256/P-384)."""

    def __init__(self, path: str) -> None:
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise KeyConfigError(f"token_key {path}: not a usable PEM private key ({exc})") from None
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < 2048:
                raise KeyConfigError(f"token_key {path}: RSA keys need at least 2048 bits")
            self.algorithm = "RS256"
        elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in ("secp256r1", "secp384r1"):
            self.algorithm = _EC_ALGORITHMS[key.curve.name]
        else:
            raise KeyConfigError(f"token_key {path}: use an RSA or an EC P-256/P-384 key")
        self.key: PrivateKey = key
        self.public_key: PublicKey = key.public_key()
        self.kid = key_id(self.public_key)

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.key, algorithm=self.algorithm, headers={"kid": self.kid})

    def mint(
        self, issuer: str, audience: str, subject: str, grants: list[Grant], lifetime: float
    ) -> tuple[str, int]:
        """An access token and the time it was issued."""
        now = int(time.time())
        claims = {
            "iss": issuer,
            "sub": subject,
            "aud": audience,
            "exp": now + int(lifetime),
            "nbf": now - LEEWAY,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": [{"type": g.type, "name": g.name, "actions": list(g.actions)} for g in grants],
        }
        return self.sign(claims), now


@dataclass
class TrustedKeys:
    """Public keys that may sign tokens: from certificates and public keys in PEM files."""

    keys: dict[str, PublicKey]
    certificates: list[x509.Certificate]

    @classmethod
    def load(cls, paths: list[str], extra: list[PublicKey] | None = None) -> TrustedKeys:
        keys: dict[str, PublicKey] = {key_id(k): k for k in extra or []}
        certificates: list[x509.Certificate] = []
        for path in paths:
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise KeyConfigError(f"token_trust {path}: {exc}") from None
            found = 0
            public: object  # any key type the file holds; only RSA and EC are kept
            for block in _pem_blocks(data):
                if b"CERTIFICATE" in block.split(b"\n", 1)[0]:
                    certificate = x509.load_pem_x509_certificate(block)
                    certificates.append(certificate)
                    public = certificate.public_key()
                else:
                    public = serialization.load_pem_public_key(block)
                if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
                    raise KeyConfigError(f"token_trust {path}: only RSA and EC keys can sign tokens")
                keys[key_id(public)] = public
                found += 1
            if not found:
                raise KeyConfigError(f"token_trust {path}: no PEM certificate or public key in it")
        return cls(keys, certificates)

    def signing_key(self, header: dict[str, Any]) -> list[PublicKey]:
        """The keys the header's x5c or kid points at; every trusted key when it names none we know."""
        chain = header.get("x5c")
        if chain is not None:
            return [self._verify_chain(chain)]
        kid = header.get("kid")
        if isinstance(kid, str) and kid in self.keys:
            return [self.keys[kid]]
        return list(self.keys.values())

    def _verify_chain(self, chain: Any) -> PublicKey:
        if not isinstance(chain, list) or not 0 < len(chain) <= MAX_CHAIN:
            raise TokenError("x5c must be a list of 1 to 4 certificates")
        try:
            certificates = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in chain]
        except (TypeError, ValueError, binascii.Error):
            raise TokenError("x5c holds an unreadable certificate") from None
        now = datetime.datetime.now(datetime.UTC)
        for certificate in certificates:
            if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
                raise TokenError("a certificate of the token's x5c chain is not valid now")
        leaf = certificates[0].public_key()
        if not isinstance(leaf, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise TokenError("the token's certificate has an unsupported key type")
        if key_id(leaf) in self.keys:
            return leaf
        for child, parent in itertools.pairwise(certificates):
            _check_issued_by(child, parent)
        top = certificates[-1]
        for root in self.certificates:
            try:
                _check_issued_by(top, root)
                return leaf
            except TokenError:
                continue
        raise TokenError("the token's certificate chain does not lead to a trusted certificate")


def _check_issued_by(child: x509.Certificate, parent: x509.Certificate) -> None:
    """``parent`` signed ``child``, and is a certificate authority valid now."""
    try:
        child.verify_directly_issued_by(parent)
        constraints = parent.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        raise TokenError("the token's certificate chain does not verify") from None
    if not constraints.ca:
        raise TokenError("a certificate that is not a CA signed the token's certificate")
    now = datetime.datetime.now(datetime.UTC)
    if not parent.not_valid_before_utc <= now <= parent.not_valid_after_utc:
        raise TokenError("a certificate of the token's chain is not valid now")


def _pem_blocks(data: bytes) -> list[bytes]:
    blocks, current = [], []
    for line in data.splitlines(keepends=True):
        if line.startswith(b"-----BEGIN "):
            current = [line]
        elif current:
            current.append(line)
            if line.startswith(b"-----END "):
                blocks.append(b"".join(current))
                current = []
    return blocks


@dataclass(frozen=True)
class Claims:
    subject: str
    grants: dict[tuple[str, str], frozenset[str]]  # (type, name) -> actions
    expires: float


class TokenVerifier:
    def __init__(self, trusted: TrustedKeys, issuer: str, audience: str) -> None:
        self.trusted = trusted
        self.issuer = issuer
        self.audience = audience

    def verify(self, token: str) -> Claims:
        if len(token) > MAX_TOKEN:
            raise TokenError("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in ASYMMETRIC:  # never "none", never a shared secret
            raise TokenError(f"token algorithm {str(algorithm)[:20]!r} is not accepted")
        claims = None
        for key in self.trusted.signing_key(header):
            if algorithm not in _algorithms_for(key):
                continue
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=[algorithm],
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=LEEWAY,
                    options={"require": ["exp", "iss", "aud"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise TokenError("token expired") from None
            except jwt.PyJWTError as exc:
                raise TokenError(f"token rejected: {exc}") from None
        if claims is None:
            raise TokenError("token not signed by a trusted key")
        return Claims(str(claims.get("sub") or ""), parse_access(claims.get("access")), float(claims["exp"]))


def parse_access(access: Any) -> dict[tuple[str, str], frozenset[str]]:
    if access is None:
        return {}
    if not isinstance(access, list):
        raise TokenError("access claim must be a list")
    grants: dict[tuple[str, str], frozenset[str]] = {}
    for entry in access:
        if not isinstance(entry, dict):
            raise TokenError("access entries must be objects")
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise TokenError("access entries need type, name and actions")
        if not all(isinstance(action, str) for action in actions):
            raise TokenError("actions must be strings")
        key = (kind, name)
        grants[key] = grants.get(key, frozenset()) | frozenset(actions)
    return grants
