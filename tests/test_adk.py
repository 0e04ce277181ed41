"""The ADK integration in a real ADK Runner, driven by a scripted model that emits the tool calls."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import InMemoryRunner
from google.genai import types

from tiergate.streams.adk import tier_gate
from tiergate.streams.sdk import ActionGate, HttpEventSink, HttpTierTransport, Reporter, TierMapClient

from .live_server import TEN, LiveServer, post, promote_override, server

__all__ = ["server"]


class ScriptedLlm(BaseLlm):
    """Calls `issue_refund` with the scripted arguments, then answers with the tool's response as text."""

    model: str = "scripted"
    account: str = "customer-1"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        last = llm_request.contents[-1].parts[0] if llm_request.contents else None
        if last is not None and last.function_response is not None:
            text = json.dumps(last.function_response.response)
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text=text)]))
            return
        call = types.FunctionCall(name="issue_refund", args={"account": self.account, "amount": 20})
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(function_call=call)]))


async def run_agent(server: LiveServer, account: str, issued: list[dict[str, Any]]) -> dict[str, Any]:
    """One user request through a real Runner; returns the tool response the model saw."""

    def issue_refund(account: str, amount: float) -> dict[str, Any]:
        """Refund `amount` to `account`."""
        issued.append({"account": account, "amount": amount})
        return {"status": "refunded", "account": account}

    tiers = TierMapClient(HttpTierTransport(server.url))
    reporter = Reporter(HttpEventSink(server.url), agent="adk-agent", clock=lambda: TEN)
    async with ActionGate(tiers, reporter) as gate:
        await tiers.wait_until_ready(5)
        callback = tier_gate(
            gate,
            {"issue_refund": "refund_up_to_50"},
            internal=lambda args: str(args["account"]).startswith("staff-"),
        )
        agent = LlmAgent(
            name="refunds", model=ScriptedLlm(account=account), tools=[issue_refund], before_tool_callback=callback
        )
        runner = InMemoryRunner(agent=agent, app_name="tiergate-test")
        session = await runner.session_service.create_session(app_name="tiergate-test", user_id="u")
        message = types.Content(role="user", parts=[types.Part(text="refund me please")])
        answer = ""
        async for event in runner.run_async(user_id="u", session_id=session.id, new_message=message):
            if event.content and event.content.parts and event.content.parts[0].text:
                answer = event.content.parts[0].text
    return json.loads(answer)  # type: ignore[no-any-return]


async def promote(server: LiveServer, n: int) -> None:
    await post(server, promote_override(f"up{n}"))


async def test_crawl_suggests_walk_acts_internally_run_acts_and_each_action_is_recorded(server: LiveServer) -> None:
    """At crawl the tool does not run (a suggestion awaits a human); at walk it runs for staff only; at run it
    runs for customers. Each call is recorded as an action at the tier it ran at."""
    issued: list[dict[str, Any]] = []
    crawl = await run_agent(server, "customer-1", issued)
    assert crawl["status"] == "suggested" and crawl["awaiting_human"] and issued == []
    await promote(server, 1)
    refused = await run_agent(server, "customer-1", issued)
    assert refused["status"] == "refused" and issued == []
    staff = await run_agent(server, "staff-7", issued)
    assert staff["status"] == "refunded" and issued == [{"account": "staff-7", "amount": 20}]
    await promote(server, 2)
    customer = await run_agent(server, "customer-1", issued)
    assert customer["status"] == "refunded" and issued[-1]["account"] == "customer-1"
    actions = [json.loads(raw) for _, raw in server.evaluator.store.events() if b'"type":"action"' in raw]
    assert [a["tier"] for a in actions] == ["crawl", "walk", "walk", "run"]
    assert all(a["agent"] == "adk-agent" and a["attributes"]["tool"] == "issue_refund" for a in actions)
