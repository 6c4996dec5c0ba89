"""Policy as code: the consortium's rules as a validated, hashable TOML file.

Servers, key holders and agents all load the same file; its digest goes into every audit log.
"""

from policies.errors import (
    InsecurePolicyWarning,
    PolicyError,
    PolicyFileError,
    PolicySyntaxError,
    PolicyValidationError,
)
from policies.loader import BUILTIN_POLICIES, builtin_policy_path, load_policy, parse_policy
from policies.schema import Policy

__all__ = [
    "BUILTIN_POLICIES",
    "InsecurePolicyWarning",
    "Policy",
    "PolicyError",
    "PolicyFileError",
    "PolicySyntaxError",
    "PolicyValidationError",
    "builtin_policy_path",
    "load_policy",
    "parse_policy",
]
