"""The pure core of tiergate: wire schemas, policy, windows, statistics and the decision fold.

Imports only the standard library and pydantic; reads no clock, no randomness, does no I/O.
"""

from .decisions import Decision, TierRecord
from .fold import Event, Result, Stepped, fold, initial_decisions, initial_state, step, tier_records
from .policy import Policy, PolicyError, load_policy
from .resolved import Rules
from .rules import RulesError, rules_from_mapping
from .state import KeyState, State, StateSchemaError
from .ticks import due_ticks
from .wire import Action, EventError, Outcome, Override, Tick, event_from_dict

__all__ = [
    "Action",
    "Decision",
    "Event",
    "EventError",
    "KeyState",
    "Outcome",
    "Override",
    "Policy",
    "PolicyError",
    "Result",
    "Rules",
    "RulesError",
    "State",
    "StateSchemaError",
    "Stepped",
    "Tick",
    "TierRecord",
    "due_ticks",
    "event_from_dict",
    "fold",
    "initial_decisions",
    "initial_state",
    "load_policy",
    "rules_from_mapping",
    "step",
    "tier_records",
]
