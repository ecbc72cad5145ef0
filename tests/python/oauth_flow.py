"""A claude.ai-style connector flow driven by the official MCP Python SDK's OAuth client.

Usage: oauth_flow.py URL ADMIN_TOKEN MODE SECRETS_FILE [CLIENT_METADATA_URL]. URL is the server's
/mcp endpoint; MODE is the SDK's connect mode ("auto" or "legacy"); SECRETS_FILE receives, as a
JSON list, every secret the flow saw (approver, codes, access and refresh tokens), for the caller
to look for in the server's log. With CLIENT_METADATA_URL the SDK names itself by that client
metadata document (its client_id) instead of registering (tests/oauth_cimd.rs). The script plays both the connector (the SDK's
`OAuthClientProvider`, which discovers, registers, exchanges and refreshes by itself) and the
person at the consent page (a cookie-keeping HTTP client that reads the form, pastes an approver
token and approves). Exits non-zero with a message on the first failure.
"""

import asyncio
import json
import sys
import time
from urllib.parse import parse_qs, urlsplit

import httpx2
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from consent import ConsentRefused, Failed, approve, check

MODE = sys.argv[3]
CLIENT_METADATA_URL = sys.argv[5] if len(sys.argv) > 5 else None
CLIENT_NAME = "tokenwarden python sdk test"
# Never listened on: the person's "browser" reads the code from the redirect's Location.
REDIRECT_URI = "http://127.0.0.1:47813/callback"
# Approving mints a child through create_token, so the approver must be allowed to call it.
APPROVER_TOOLS = ["create_token", "get_token", "list_buckets", "list_tokens", "whoami"]
GRANTED_TOOLS = ["get_token", "whoami"]


class MemoryStorage:
    """The SDK's TokenStorage protocol, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def find(error: BaseException, kind: type) -> BaseException | None:
    """`error` or the first exception of `kind` it carries (in a group, a cause or a context)."""
    if isinstance(error, kind):
        return error
    inner = list(getattr(error, "exceptions", [])) + [error.__cause__, error.__context__]
    for nested in inner:
        if nested is not None and nested is not error:
            found = find(nested, kind)
            if found is not None:
                return found
    return None


class Person:
    """The SDK's redirect and callback handlers: the person approving at the consent page."""

    def __init__(self, approver_secret: str) -> None:
        self.approver_secret = approver_secret
        self.result: AuthorizationCodeResult | None = None
        self.codes: list[str] = []
        self.visits = 0
        self.requested_scope: list[str] = []
        # Set for the visit a scope step-up causes: the person adds what the page prefills.
        self.step_up = False
        self.added: str | None = None

    async def redirect_handler(self, authorization_url: str) -> None:
        self.visits += 1
        self.result = None
        query = parse_qs(urlsplit(authorization_url).query)
        check(query.get("code_challenge_method") == ["S256"], f"the SDK asks for S256: {query}")
        check(query.get("redirect_uri") == [REDIRECT_URI], f"redirect_uri: {query}")
        self.requested_scope = query.get("scope", [""])[0].split()
        if self.step_up:
            # The SDK asks for what it was granted and what the 403 named; the person approves
            # the prefilled fields and adds them to the connector's grant.
            self.step_up = False
            consent = await approve(
                authorization_url, self.approver_secret, client_name=CLIENT_NAME, confirm="add"
            )
            self.added = consent.added
        else:
            consent = await approve(
                authorization_url,
                self.approver_secret,
                client_name=CLIENT_NAME,
                tools=" ".join(GRANTED_TOOLS),
                buckets="docs",
                try_wrong_approver_first=self.visits == 1,
            )
        if consent.wrong_approver_error:
            print(f"a wrong approver reads: {consent.wrong_approver_error}")
        params = consent.params
        self.codes.append(params["code"][0])
        self.result = AuthorizationCodeResult(
            code=params["code"][0], state=params["state"][0], iss=params.get("iss", [None])[0]
        )

    async def callback_handler(self) -> AuthorizationCodeResult:
        check(self.result is not None, "the redirect handler got a code")
        return self.result


def bearer_client(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), raise_exceptions=True, mode=MODE)


async def call(client: Client, name: str, arguments: dict) -> tuple[bool, dict]:
    result = await client.call_tool(name, arguments)
    return bool(result.is_error), result.structured_content or {}


async def admin_call(url: str, admin: str, name: str, arguments: dict) -> dict:
    async with bearer_client(url, admin) as client:
        failed, value = await call(client, name, arguments)
    check(not failed, f"admin {name}({arguments}): {value}")
    return value


async def works(url: str, token: str) -> bool:
    """Whether `token` can call whoami (a refused secret fails the connection: an exception)."""
    try:
        async with bearer_client(url, token) as client:
            failed, _ = await call(client, "whoami", {})
            return not failed
    except Exception:
        return False


async def main(url: str, admin: str, secrets_file: str) -> None:
    approver = await admin_call(
        url,
        admin,
        "create_token",
        {"name": "approver", "parent": "none", "tools": APPROVER_TOOLS, "buckets": ["docs", "notes"]},
    )
    person = Person(approver["token"])
    storage = MemoryStorage()
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name=CLIENT_NAME,
            redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=person.redirect_handler,
        callback_handler=person.callback_handler,
        client_metadata_url=CLIENT_METADATA_URL,
    )
    seen: list[str] = []

    async def record(response: httpx2.Response) -> None:
        seen.append(f"{response.request.method} {response.request.url.path} {response.status_code}")

    http = httpx2.AsyncClient(auth=provider, timeout=30, event_hooks={"response": [record]})
    # No DELETE at the end: after the revocation it would meet a 401 and start another consent.
    transport = streamable_http_client(url, http_client=http, terminate_on_close=False)
    revoked_approver = False
    try:
        async with Client(transport, raise_exceptions=True, mode=MODE) as connector:
            # Discovery from the 401, registration, consent, token: all inside the first request.
            names = sorted(tool.name for tool in (await connector.list_tools()).tools)
            check(names == GRANTED_TOOLS, f"the connector sees the tools granted on the consent page: {names}")
            print("requests:", ", ".join(seen))
            # The first discovery request is the document the 401's resource_metadata names (the
            # SDK's fallback without it would be the path-suffixed .../oauth-protected-resource/mcp).
            wanted = [
                "POST /mcp 401",
                "GET /.well-known/oauth-protected-resource 200",
                "GET /.well-known/oauth-authorization-server 200",
                "POST /oauth/register 201",
                "POST /oauth/token 200",
            ]
            if CLIENT_METADATA_URL is not None:
                # Named by its document: nothing registered.
                wanted.remove("POST /oauth/register 201")
            check(seen[: len(wanted)] == wanted, f"the SDK's requests begin with {wanted}: {seen}")
            check(person.visits == 1, "one consent")
            client_info = storage.client_info
            first = storage.tokens
            if CLIENT_METADATA_URL is not None:
                check(client_info.client_id == CLIENT_METADATA_URL, f"client_id: {client_info.client_id}")
            check(client_info is not None and first is not None, "the SDK stored a client and tokens")
            check(first.refresh_token is not None, "a refresh token was issued")
            check(first.expires_in is not None and 0 < first.expires_in <= 3600, f"expires_in: {first.expires_in}")

            failed, me = await call(connector, "whoami", {})
            check(not failed, f"whoami with the issued token: {me}")
            check(me["parent_id"] == approver["id"], f"the issued token is a child of the approver: {me}")
            check(me["buckets"] == ["docs"], f"buckets narrowed on the consent page: {me}")
            check(me["read_only"] == ("read_only" in person.requested_scope), f"read_only: {me}")
            record_text = json.dumps(me["metadata"])
            check(client_info.client_id in record_text, f"metadata names the client id: {me['metadata']}")
            check(CLIENT_NAME in record_text, f"metadata names the client: {me['metadata']}")

            listed = await admin_call(url, admin, "list_tokens", {"parent_id": approver["id"]})
            check([r["id"] for r in listed["records"]] == [me["id"]], f"list_tokens shows the child: {listed}")
            as_admin = await admin_call(url, admin, "get_token", {"id": me["id"]})
            check(as_admin["parent_id"] == approver["id"] and as_admin["metadata"] == me["metadata"], str(as_admin))

            # Refresh: the SDK refreshes a token it believes expired before the next request.
            provider.context.token_expiry_time = time.time() - 1
            seen.clear()
            failed, again = await call(connector, "whoami", {})
            check(not failed, f"whoami after the refresh: {again}")
            check(seen[0] == "POST /oauth/token 200", f"the SDK refreshed first: {seen}")
            second = storage.tokens
            check(second.access_token != first.access_token, "the refresh issued a new access token")
            check(second.refresh_token not in (None, first.refresh_token), "the refresh token was rotated")
            check(again["parent_id"] == approver["id"], f"the refreshed token is a child of the approver: {again}")
            print(f"the access token from before the refresh still works: {await works(url, first.access_token)}")

            # Scope step-up: a tool the grant lacks but the approver holds answers 403
            # insufficient_scope; the SDK sends the person back to the consent page with that scope,
            # the person adds it to the grant, and the SDK retries with the new token.
            seen.clear()
            person.step_up = True
            failed, stepped = await call(connector, "list_tokens", {})
            check(not failed, f"list_tokens after the step-up: {stepped}")
            check("POST /mcp 403" in seen, f"the call met a 403 first: {seen}")
            check("tool:list_tokens" in person.requested_scope, f"the SDK asked for it: {person.requested_scope}")
            check(person.added is not None and "tool list_tokens" in person.added, f"new: {person.added}")
            check(person.visits == 2, f"a second consent: {person.visits}")
            third = storage.tokens
            check(third.access_token != second.access_token, "the step-up issued a new access token")
            check(not await works(url, second.access_token), "the token the step-up replaced stops")
            failed, me3 = await call(connector, "whoami", {})
            check(not failed and me3["parent_id"] == approver["id"], f"still a child of the approver: {me3}")
            print("requests of the step-up:", ", ".join(seen))

            # Revoking the approver cuts the connector off on its next request: the SDK meets a 401,
            # goes back to the consent page, and the revoked approver cannot approve again.
            revoked = await admin_call(url, admin, "revoke_token", {"id": approver["id"]})
            check(revoked["revoked"] is True and revoked["revoked_descendants"] >= 1, f"revoke: {revoked}")
            seen.clear()
            revoked_approver = True
            await call(connector, "whoami", {})
        check(False, f"a call after the approver's revocation succeeded: {seen}")
    except Exception as error:
        # The SDK met a 401, went back to the consent page, and the person's approval was refused
        # there; the transport surfaces that as its task group's error.
        refusal = find(error, ConsentRefused)
        if not revoked_approver or refusal is None:
            raise
    print(f"after revocation the consent page says: {refusal}")
    check(seen[:1] == ["POST /mcp 401"], f"the next request met a 401: {seen}")
    check(person.visits == 3, f"the SDK went back to the consent page: {person.visits}")

    # The same secret over plain HTTP: a 401 that points at the resource metadata.
    async with httpx2.AsyncClient(timeout=30) as raw:
        response = await raw.post(
            url,
            headers={
                "Authorization": f"Bearer {storage.tokens.access_token}",
                "Accept": "application/json, text/event-stream",
                "Content-Type": "application/json",
            },
            content=json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "raw", "version": "1"},
                    },
                }
            ),
        )
        challenge = response.headers.get("www-authenticate", "")
        check(response.status_code == 401, f"the revoked child's secret: {response.status_code}")
        check("resource_metadata=" in challenge, f"the 401 names the resource metadata: {challenge}")
    seen_secrets = [approver["token"], *person.codes]
    seen_secrets += [first.access_token, first.refresh_token, second.access_token, second.refresh_token]
    seen_secrets += [third.access_token, third.refresh_token]
    with open(secrets_file, "w") as out:
        json.dump(seen_secrets, out)
    how = "cimd" if CLIENT_METADATA_URL else MODE
    print(f"python sdk oauth flow ({how}): ok")


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[4]))
    except BaseException as error:
        failed = find(error, Failed)
        if failed is None:
            raise
        print(f"FAIL: {failed}", file=sys.stderr)
        sys.exit(1)
