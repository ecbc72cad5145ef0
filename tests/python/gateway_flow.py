"""The gateway driven by the official MCP Python SDK: a read-only token scoped to bucket `fs`
reads a file through tokenwarden but cannot write, and never sees the memory bucket.

Usage: gateway_flow.py URL ADMIN_TOKEN FILE_TO_READ. Exits non-zero on the first failure.
"""

import asyncio
import os
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def connect(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), raise_exceptions=True)


def check(condition: bool, message: str) -> None:
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


async def main(url: str, admin_token: str, path: str) -> None:
    async with connect(url, admin_token) as admin:
        result = await admin.call_tool(
            "create_token",
            {"name": "py-reader", "buckets": ["fs"], "read_only": True, "parent": "none"},
        )
        check(not result.is_error, f"create reader: {result}")
        secret = result.structured_content["token"]

    async with connect(url, secret) as reader:
        names = sorted(tool.name for tool in (await reader.list_tools()).tools)
        check("fs__read_text_file" in names, f"reader sees fs__read_text_file: {names}")
        check("fs__write_file" not in names, f"reader must not see fs__write_file: {names}")
        check(not any(n.startswith("mem__") for n in names), f"reader must not see mem__: {names}")
        read = await reader.call_tool("fs__read_text_file", {"path": path})
        check(not read.is_error, f"read: {read}")
        check("hello from a file" in read.content[0].text, f"read content: {read}")
        target = os.path.join(os.path.dirname(path), "py-write.txt")
        write = await reader.call_tool("fs__write_file", {"path": target, "content": "x"})
        check(bool(write.is_error), f"write must be refused: {write}")
        check(write.structured_content["error"]["code"] == "forbidden", f"write: {write}")
        check(not os.path.exists(target), "a refused write reached the filesystem server")
    print("python sdk gateway flow: ok")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
