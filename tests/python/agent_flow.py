"""The agent flow driven by the official MCP Python SDK (a client tokenwarden did not write).

Usage: agent_flow.py URL ADMIN_TOKEN [MODE]. MODE is the SDK's connect mode: "auto" (default:
negotiates 2026-07-28, stateless) or "legacy" (the initialize handshake and a session). Exits
non-zero with a message on the first failure.
"""

import asyncio
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


MODE = sys.argv[3] if len(sys.argv) > 3 else "auto"


def connect(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), raise_exceptions=True, mode=MODE)


async def tool_names(client: Client) -> list[str]:
    return sorted(tool.name for tool in (await client.list_tools()).tools)


async def call(client: Client, name: str, arguments: dict) -> tuple[bool, dict]:
    result = await client.call_tool(name, arguments)
    return bool(result.is_error), result.structured_content or {}


def check(condition: bool, message: str) -> None:
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


async def main(url: str, admin_token: str) -> None:
    async with connect(url, admin_token) as admin:
        check(len(await tool_names(admin)) == 15, "the admin sees all 15 tools")
        failed, me = await call(admin, "whoami", {})
        check(not failed and me["admin"] is True, f"whoami as admin: {me}")
        failed, orchestrator = await call(
            admin,
            "create_token",
            {
                "name": "orchestrator",
                "parent": "none",
                "tools": ["create_token", "list_tokens", "revoke_token", "whoami"],
                "buckets": ["a", "b"],
            },
        )
        check(not failed, f"create orchestrator: {orchestrator}")

    async with connect(url, orchestrator["token"]) as agent:
        names = await tool_names(agent)
        check(names == ["create_token", "list_tokens", "revoke_token", "whoami"], f"orchestrator tools: {names}")
        failed, child = await call(agent, "create_token", {"name": "sub", "buckets": ["a"], "tools": ["whoami"]})
        check(not failed and child["parent_id"] == orchestrator["id"], f"mint child: {child}")
        failed, refused = await call(agent, "create_token", {"name": "x", "buckets": ["c"], "admin": True})
        check(failed and refused["error"]["code"] == "scope_exceeds_parent", f"escalation: {refused}")
        check("buckets" in refused["error"]["message"] and "admin" in refused["error"]["message"], str(refused))

        async with connect(url, child["token"]) as sub_agent:
            check(await tool_names(sub_agent) == ["whoami"], "the child sees only whoami")
            failed, me = await call(sub_agent, "whoami", {})
            check(not failed and me["buckets"] == ["a"], f"child whoami: {me}")

        failed, revoked = await call(agent, "revoke_token", {"id": child["id"]})
        check(not failed and revoked["revoked"] is True, f"revoke child: {revoked}")

    try:
        async with connect(url, child["token"]) as sub_agent:
            await call(sub_agent, "whoami", {})
        check(False, "a revoked child must not connect")
    except SystemExit:
        raise
    except BaseException as error:  # the SDK reports the 401 as an exception
        print(f"revoked child refused: {type(error).__name__}")
    print(f"python sdk agent flow ({MODE}): ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
