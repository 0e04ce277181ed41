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

from tiergate.models.wire import parse_ts
from tiergate.streams.adk import tier_gate
from tiergate.streams.sdk import Gate, HttpEventSink, HttpTierTransport, Reporter, TierMapClient

from .test_sdk import LiveServer, post, server

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

    sink = HttpEventSink(server.url)
    reporter = Reporter(sink, agent="adk-agent", clock=lambda: parse_ts("2026-11-02T10:00:00Z"))
    async with TierMapClient(HttpTierTransport(server.url)) as tiers:
        await tiers.wait_for(lambda c: c.status().loaded, 5)
        callback = tier_gate(
            Gate(tiers, reporter),
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
    await sink.close()
    return json.loads(answer)  # type: ignore[no-any-return]


async def promote(server: LiveServer, n: int) -> None:
    await post(
        server,
        json.dumps(
            {
                "type": "override",
                "event_id": f"up{n}",
                "ts": "2026-11-02T09:00:00Z",
                "action_type": "refund_up_to_50",
                "op": "promote",
                "actor": "ops",
                "reason": "adk test",
            }
        ).encode(),
    )


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
