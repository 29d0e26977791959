"""Response: policy decisions, the online scorer, audit trail and review queue."""

from distillguard.policy.decision import ACTIONS, Decision
from distillguard.policy.engine import PolicyEngine

__all__ = ["ACTIONS", "Decision", "PolicyEngine"]
