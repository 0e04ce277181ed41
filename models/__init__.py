"""The pure core of tiergate: wire schemas, policy, windows, statistics and the evaluator fold.

Imports only the standard library and pydantic; reads no clock, no randomness, does no I/O.
"""

from .decisions import Decision, TierRecord
from .evaluator import KeyState, Result, State, Step, fold, initial_decisions, initial_state, step, tier_records
from .policy import Policy, PolicyError, canonical_json, load_policy
from .wire import Action, EventError, Outcome, Override, Tick, event_from_dict

__all__ = [
    "Action",
    "Decision",
    "EventError",
    "KeyState",
    "Outcome",
    "Override",
    "Policy",
    "PolicyError",
    "Result",
    "State",
    "Step",
    "Tick",
    "TierRecord",
    "canonical_json",
    "event_from_dict",
    "fold",
    "initial_decisions",
    "initial_state",
    "load_policy",
    "step",
    "tier_records",
]
