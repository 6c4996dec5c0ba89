"""Wire messages of the key holder's per-agent endpoint (``POST /v1/decrypt-agent``).

Kept beside the key holder rather than in :mod:`wire.messages` because only the server's
key-holder client and the key holder speak them; same strictness (unknown fields are a 422).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from wire.messages import WireModel


class DecryptAgentRequest(WireModel):
    envelope: dict[str, Any] = Field(description="the agent's signed envelope (crypto.envelope.Envelope.to_dict())")
    key_binding: dict[str, Any] = Field(description="the agent's key binding from its enrolment "
                                                    "(crypto.key_binding.bind_signing_key)")


class DecryptAgentResponse(WireModel):
    agent: str
    round_id: str = Field(description="the round id the agent signed (a calibrate- or router- round)")
    values: list[float] = Field(description="the agent's scores, rounded by the key owner")
    agent_decryptions: int = Field(description="per-agent envelopes this key holder has decrypted in total")
    audit_index: int
