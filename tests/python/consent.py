"""The person at tokenwarden's OAuth consent page, without a browser: a cookie-keeping HTTP client
that reads the form, pastes an approver token and approves (tests/python/oauth_flow.py imports
it; tests/oauth_clients.rs also runs it as the "browser" that mcp-remote opens).

As a program: consent.py AUTHORIZATION_URL, with the approver's secret in TW_APPROVER. It
approves with the page's defaults and then requests the redirect's Location, as a browser
would, so the client's loopback callback receives the code. Exits non-zero on a failure.
"""

import asyncio
import os
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2


class Failed(Exception):
    """A check failed (raised, not exited: some checks run inside a client's auth flow)."""


class ConsentRefused(Exception):
    """The consent page re-rendered with #error instead of redirecting (e.g. a revoked approver)."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


class FormReader(HTMLParser):
    """The consent form's fields (as a browser would submit them), the ids on the page, and the
    text of the #error element."""

    def __init__(self) -> None:
        super().__init__()
        self.in_form = False
        self.form: dict[str, str] = {}
        self.fields: dict[str, str] = {}
        self.checkboxes: dict[str, bool] = {}
        self.ids: set[str] = set()
        self.error_parts: list[str] = []
        self.error_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if "id" in a:
            self.ids.add(a["id"])
        if self.error_depth:
            self.error_depth += 1
        elif a.get("id") == "error":
            self.error_depth = 1
        if tag == "form" and a.get("id") == "consent":
            self.in_form = True
            self.form = a
        elif tag == "input" and self.in_form and "name" in a:
            if a.get("type") == "checkbox":
                self.checkboxes[a["name"]] = "checked" in a
            else:
                self.fields[a["name"]] = a.get("value", "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if self.error_depth:
            self.error_depth -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.in_form = False
        if self.error_depth:
            self.error_depth -= 1

    def handle_data(self, data: str) -> None:
        if self.error_depth:
            self.error_parts.append(data)

    @property
    def error(self) -> str:
        return " ".join("".join(self.error_parts).split())


def read_page(response: httpx2.Response) -> FormReader:
    reader = FormReader()
    reader.feed(response.text)
    return reader


@dataclass
class Consent:
    """What the person saw and where the approval sent them."""

    page: FormReader
    location: str
    params: dict[str, list[str]]
    wrong_approver_error: str | None
    # What the confirmation page listed as new, when the approval added to a grant.
    added: str | None = None


async def approve(
    authorization_url: str,
    approver: str,
    *,
    client_name: str | None = None,
    tools: str | None = None,
    buckets: str | None = None,
    try_wrong_approver_first: bool = False,
    confirm: str | None = None,
) -> Consent:
    """Loads the consent page, checks what every consent page must show and send, fills it and
    approves. `tools`/`buckets` replace the prefilled fields when given. When the approver
    already approved this client, the page asks whether to add to that grant: `confirm` ("add"
    or "separate") answers it (without it, that page fails the check). Raises ConsentRefused
    when the page answers the approval with #error."""
    query = parse_qs(urlsplit(authorization_url).query)
    requested_scope = query.get("scope", [""])[0].split()
    redirect_uri = query["redirect_uri"][0]
    async with httpx2.AsyncClient(follow_redirects=False, timeout=30) as browser:
        page = await browser.get(authorization_url)
        check(page.status_code == 200, f"consent page: {page.status_code} {page.text[:300]}")
        check(page.headers.get("content-type", "").startswith("text/html"), str(page.headers))
        csp = page.headers.get("content-security-policy", "")
        check("frame-ancestors 'none'" in csp, f"the consent page forbids framing: {csp!r}")
        check(page.headers.get("x-frame-options", "").upper() == "DENY", str(page.headers))
        check("no-store" in page.headers.get("cache-control", ""), str(page.headers))
        check(
            any(name.startswith("tw_oauth_csrf_") for name in browser.cookies),
            f"the page sets its request's CSRF cookie: {browser.cookies}",
        )
        if client_name is not None:
            check(client_name in page.text, f"the page names the client {client_name!r}")
        redirect_host = urlsplit(redirect_uri).hostname or ""
        check(redirect_host in page.text, f"the page names the redirect host {redirect_host}")
        form = read_page(page)
        check(form.form.get("method", "").lower() == "post", f"one POST form #consent: {form.form}")
        for name in ("request", "csrf", "approver_token", "buckets", "tools", "lifetime_seconds"):
            check(name in form.fields, f"the consent form has {name}: {sorted(form.fields)}")
        check(form.fields["approver_token"] == "", "the approver field starts empty")
        check(
            form.checkboxes.get("read_only") == ("read_only" in requested_scope),
            f"read_only is prefilled from the scope {requested_scope}: {form.checkboxes}",
        )
        action = urljoin(authorization_url, form.form.get("action", ""))

        def submit(page: FormReader, secret: str) -> dict[str, str]:
            data = dict(page.fields)
            data["approver_token"] = secret
            if tools is not None:
                data["tools"] = tools
            if buckets is not None:
                data["buckets"] = buckets
            data.update({name: "1" for name, checked in page.checkboxes.items() if checked})
            data["decision"] = "approve"
            return data

        wrong_error = None
        if try_wrong_approver_first:
            # A mistyped approver re-renders the page with a message; the request stays usable.
            wrong = await browser.post(action, data=submit(form, "mcp_" + "x" * 36))
            check(wrong.status_code == 200, f"wrong approver: {wrong.status_code} {wrong.text[:300]}")
            form = read_page(wrong)
            check("error" in form.ids and form.error, "a wrong approver shows a message in #error")
            wrong_error = form.error

        answer = await browser.post(action, data=submit(form, approver))
        added = None
        if answer.status_code == 200 and "added_scope" in read_page(answer).ids:
            check(confirm is not None, f"unexpected confirmation page: {answer.text[:300]}")
            confirmation = read_page(answer)
            added = answer.text.split('id="added_scope"', 1)[1].split("</ul>", 1)[0]
            data = dict(confirmation.fields)
            data["confirm"] = confirm
            answer = await browser.post(action, data=data)
        if answer.status_code == 200:
            refused = read_page(answer)
            check("error" in refused.ids, f"an approval answered 200 shows #error: {answer.text[:300]}")
            raise ConsentRefused(refused.error)
        check(answer.status_code == 303, f"approve: {answer.status_code} {answer.text[:300]}")
        location = answer.headers["location"]
        check(location.startswith(redirect_uri + "?"), f"redirect to the registered URI: {location}")
        params = parse_qs(urlsplit(location).query)
        check(params.get("state") == query.get("state"), f"the state comes back: {location}")
        check("code" in params and "error" not in params, f"a code: {location}")
        return Consent(
            page=form, location=location, params=params, wrong_approver_error=wrong_error, added=added
        )


async def browse(authorization_url: str) -> None:
    consent = await approve(authorization_url, os.environ["TW_APPROVER"])
    async with httpx2.AsyncClient(timeout=30) as browser:
        landed = await browser.get(consent.location)
    print(f"consent approved; the callback answered {landed.status_code}")


if __name__ == "__main__":
    try:
        asyncio.run(browse(sys.argv[1]))
    except (Failed, ConsentRefused) as error:
        print(f"FAIL: {type(error).__name__}: {error}", file=sys.stderr)
        sys.exit(1)
