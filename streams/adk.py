"""Google ADK integration: a `before_tool_callback` that gates an agent's tool calls by tier.

    from google.adk.agents import LlmAgent
    from tiergate.streams.adk import tier_gate

    agent = LlmAgent(..., tools=[issue_refund],
                     before_tool_callback=tier_gate(gate, {"issue_refund": "refund_up_to_50"},
                                                    internal=lambda args: args["account"].startswith("staff-")))

For a tool mapped to an action type the callback asks the gate (which records the action at its tier):
- Crawl: the tool does not run; the model gets `{"status": "suggested", …}` — a suggestion awaiting a
  human, with the call's arguments and the receipt the reviewer reports the verdict with.
- Walk: the tool runs only on internal targets (`internal(args)`); otherwise `{"status": "refused", …}`.
- Run: the tool runs.
Tools not in the mapping are not gated. The receipt is kept in the session state under
`tiergate:receipt:<tool name>` so that later steps can report the outcome. (The `adk` extra.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .sdk import ActionGate, Mode

ToolCallback = Callable[[Any, dict[str, Any], Any], Awaitable[dict[str, Any] | None]]


def tier_gate(
    gate: ActionGate, action_types: Mapping[str, str], internal: Callable[[dict[str, Any]], bool] = lambda args: False
) -> ToolCallback:
    """A before_tool_callback that lets each mapped tool act only as far as its action type's tier allows."""

    async def before_tool(tool: Any, args: dict[str, Any], tool_context: Any) -> dict[str, Any] | None:
        action_type = action_types.get(tool.name)
        if action_type is None:
            return None
        decision = await gate.decide(action_type, attributes={"tool": tool.name})
        receipt = str(decision.receipt)
        tool_context.state[f"tiergate:receipt:{tool.name}"] = receipt
        if decision.mode is Mode.SUGGEST:
            return {
                "status": "suggested",
                "awaiting_human": True,
                "tool": tool.name,
                "args": args,
                "receipt": receipt,
                "note": f"{action_type} is at crawl: a human decides whether this happens",
            }
        if decision.mode is Mode.ACT_INTERNAL and not internal(args):
            return {
                "status": "refused",
                "tool": tool.name,
                "receipt": receipt,
                "note": f"{action_type} is at walk: it may act on internal staff only",
            }
        return None  # the tool runs

    return before_tool
