""":class:`KeyHolderClient`: how the server (fused-only) fetches the public context and asks
the key holder to decrypt one fused reward ciphertext, over mutual TLS."""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

import httpx
from pydantic import ValidationError

from crypto.ckks import PublicContext, SealedVector, load_public_context
from crypto.envelope import Envelope
from crypto.errors import ParameterError
from server.errors import KeyHolderError
from wire.messages import (
    DecryptAgentRequest,
    DecryptAgentResponse,
    DecryptFusedRequest,
    DecryptFusedResponse,
    ErrorBody,
)


class KeyHolderClient:
    """Synchronous client; ``ssl_context`` is the server's client context (its certificate).

    KeyHolderError carries the key holder's refusal (``HTTP 403 not_public_round: ...``).
    """

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext, *, timeout_s: float = 60.0) -> None:
        if not base_url.startswith("https://"):
            raise KeyHolderError(f"{base_url}: the key holder is reached over https only")
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, verify=ssl_context, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KeyHolderClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise KeyHolderError(f"{self.base_url}{path}: key holder unreachable: {exc!r}") from None
        if response.status_code != 200:
            try:
                error = ErrorBody.model_validate_json(response.content)
                detail = f"{error.code}: {error.message}"
            except ValidationError:
                detail = response.text[:200]
            raise KeyHolderError(f"{self.base_url}{path}: HTTP {response.status_code} {detail}")
        return response

    def public_context(self) -> PublicContext:
        """The key holder's public context (refused if it carries a secret key)."""
        response = self._call("GET", "/v1/context")
        try:
            context = load_public_context(response.content)
        except ParameterError as exc:
            raise KeyHolderError(f"{self.base_url}/v1/context: {exc}") from None
        claimed = response.headers.get("X-Context-SHA256")
        if claimed is not None and claimed != hashlib.sha256(response.content).hexdigest():
            raise KeyHolderError(f"{self.base_url}/v1/context: digest header does not match the body")
        return context

    def decrypt_fused(self, sealed: SealedVector, *, round_id: str) -> DecryptFusedResponse:
        """Decrypt one fused reward vector; the key holder rounds it, counts and logs it."""
        request = DecryptFusedRequest(round_id=round_id, sealed=sealed.to_dict())
        response = self._call("POST", "/v1/decrypt-fused", json=request.model_dump())
        try:
            return DecryptFusedResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise KeyHolderError(f"{self.base_url}/v1/decrypt-fused: malformed reply: {exc}") from None

    def decrypt_agent(self, envelope: Envelope, *, key_binding: dict[str, Any]) -> DecryptAgentResponse:
        """One agent's vector of a PUBLIC round (calibrate/router); the key holder checks the agent's signature."""
        request = DecryptAgentRequest(envelope=envelope.to_dict(), key_binding=key_binding)
        response = self._call("POST", "/v1/decrypt-agent", json=request.model_dump())
        try:
            return DecryptAgentResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise KeyHolderError(f"{self.base_url}/v1/decrypt-agent: malformed reply: {exc}") from None
