"""Policy as code: the consortium's rules as a validated, hashable TOML file.

Servers, key holders and agents all load the same file; its digest goes into every audit log.

>>> from policies import builtin_policy_path, load_policy
>>> policy = load_policy(builtin_policy_path("healthcare"))
>>> policy.privacy.mode, policy.rounds.quorum, policy.audit.retention_days
('fused-only', 3, 2190)
"""

from policies.errors import (
    InsecurePolicyWarning,
    PolicyError,
    PolicyFileError,
    PolicySyntaxError,
    PolicyValidationError,
)
from policies.fusion import Fusion
from policies.loader import BUILTIN_POLICIES, builtin_policy_path, load_policy, parse_policy
from policies.render import render_toml
from policies.schema import CKKS, HE_STANDARD_MAX_BITS, Admission, Audit, Limits, Policy, Privacy, Rounds, Scores

__all__ = [
    "BUILTIN_POLICIES",
    "CKKS",
    "HE_STANDARD_MAX_BITS",
    "Admission",
    "Audit",
    "Fusion",
    "InsecurePolicyWarning",
    "Limits",
    "Policy",
    "PolicyError",
    "PolicyFileError",
    "PolicySyntaxError",
    "PolicyValidationError",
    "Privacy",
    "Rounds",
    "Scores",
    "builtin_policy_path",
    "load_policy",
    "parse_policy",
    "render_toml",
]
