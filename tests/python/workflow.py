#!/usr/bin/env python3
"""Drive nhi-mcp through a whole rotation workflow with the MCP Python SDK (mcp 2.3.0).

A real third-party client, not our own: it checks that what rmcp puts on the wire
(handshake, tool schemas, structured content, tool errors) is what another SDK accepts.

    workflow.py --binary PATH --data-dir DIR --config FILE --approver-key FILE [--http URL]
                [--header 'Name: value'] [--mode auto|legacy]

Over stdio it launches `PATH --data-dir DIR serve`; with --http it connects to URL
(Streamable HTTP) and expects the caller to have started the server on the same DIR.
Approval goes through the CLI (`PATH --data-dir DIR --config FILE approve ID --approver ...
--key FILE`), as a human would: FILE's `[[approvers]]` must name the approver with the key's
public half. Prints ONE JSON object on stdout; on any unexpected result it prints
`workflow.py: FAIL: ...` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

APPROVER = "alice@example.com"
REASON = "python sdk workflow test"
TIMEOUT_S = 30  # per request; the whole run gets 4x that


class Fail(Exception):
    """An unexpected result: the message says what was expected and what came."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Fail(msg)


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content).strip()


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """Call a tool that must succeed and return its structuredContent (a JSON object)."""
    result = await client.call_tool(tool, args)
    check(not result.is_error, f"{tool}({json.dumps(args)}) returned isError: {text_of(result)}")
    sc = result.structured_content
    check(isinstance(sc, dict), f"{tool} returned no structuredContent object: {sc!r} / {text_of(result)}")
    return sc


async def approve(args: argparse.Namespace, proposal_id: str) -> str:
    """Approve through the CLI, as the human approver does; its stdout is the token alone."""
    cmd = [
        args.binary, "--data-dir", args.data_dir, "--config", args.config,
        "approve", proposal_id, "--approver", APPROVER, "--key", args.approver_key,
    ]
    done = await anyio.run_process(cmd, check=False)
    check(
        done.returncode == 0,
        f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode(errors='replace').strip()}",
    )
    token = done.stdout.decode().strip()
    check(token != "" and "\n" not in token, f"approve printed no single-line token: {token!r}")
    return token


async def workflow(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"transport": "http" if args.http else "stdio"}
    out["protocol_version"] = client.protocol_version

    # a. every tool, across pages
    tools: list[str] = []
    cursor = None
    while True:
        page = await client.list_tools(cursor=cursor)
        tools += [t.name for t in page.tools]
        cursor = page.next_cursor
        if not cursor:
            break
    out["tools"] = tools

    # b. identities are paged: the first page is full and hands out a cursor that works
    page1 = await call(client, "list_identities", {"limit": 5})
    ids1 = page1.get("identities")
    check(isinstance(ids1, list), f"list_identities: no 'identities' list in {page1}")
    out["page1"] = len(ids1)
    out["next_cursor"] = page1.get("next_cursor")
    check(len(ids1) == 5, f"list_identities limit 5 gave {len(ids1)} identities")
    check(bool(out["next_cursor"]), f"list_identities limit 5 gave no next_cursor: {page1}")
    page2 = await call(client, "list_identities", {"limit": 5, "cursor": out["next_cursor"]})
    ids2 = page2.get("identities")
    check(isinstance(ids2, list) and len(ids2) > 0, f"list_identities page 2 is empty: {page2}")
    overlap = {i.get("id") for i in ids1} & {i.get("id") for i in ids2}
    check(not overlap, f"pages 1 and 2 share identities {sorted(overlap)}")
    out["page2"] = len(ids2)

    # c. an NHI7 (long-lived secret) finding on an identity that has a credential
    fpage = await call(client, "list_findings", {"limit": 50})
    findings = fpage.get("findings")
    check(isinstance(findings, list), f"list_findings: no 'findings' list in {fpage}")
    out["findings"] = len(findings)
    pick = next((f for f in findings if f.get("owasp_id") == "NHI7" and f.get("credential_id")), None)
    check(
        pick is not None,
        f"no NHI7 finding with a credential_id among {len(findings)}: "
        f"{sorted({str(f.get('owasp_id')) for f in findings})}",
    )
    identity_id, credential_id = pick["identity_id"], pick["credential_id"]
    out["identity_id"], out["credential_id"] = identity_id, credential_id

    # d.
    ident = await call(client, "get_identity", {"identity_id": identity_id})
    got = ident.get("identity") or {}
    check(got.get("id") == identity_id, f"get_identity({identity_id}) answered {ident}")
    check(
        any(c.get("id") == credential_id for c in got.get("credentials", [])),
        f"get_identity({identity_id}) does not list credential {credential_id}: {got.get('credentials')}",
    )

    # e. the agent can only propose
    prop = await call(
        client,
        "propose_rotation",
        {"identity_id": identity_id, "credential_id": credential_id, "grace_period": "0s", "reason": REASON},
    )
    proposal = prop.get("proposal") or {}
    proposal_id = proposal.get("id")
    check(bool(proposal_id), f"propose_rotation gave no proposal.id: {prop}")
    check(prop.get("created") is True, f"propose_rotation returned an older proposal: {prop}")
    check(proposal.get("status") == "pending_approval", f"new proposal is not pending_approval: {prop}")
    out["proposal_id"] = proposal_id

    # f. a human approves out of band
    token = await approve(args, proposal_id)

    # g.
    applied = await call(client, "apply_proposal", {"proposal_id": proposal_id, "approval_token": token})
    ap = applied.get("proposal") or {}
    check(ap.get("status") == "applied", f"apply_proposal did not apply: {applied}")
    check(bool(ap.get("sink_ref")), f"applied proposal has no sink_ref: {applied}")
    out["status"], out["sink_ref"] = ap["status"], ap["sink_ref"]

    # h.
    again = await call(client, "get_proposal", {"proposal_id": proposal_id})
    check((again.get("proposal") or {}).get("status") == "applied", f"get_proposal after apply: {again}")

    # i. a token is single-use: replay is a tool error the model can read, not a protocol error
    replay = await client.call_tool("apply_proposal", {"proposal_id": proposal_id, "approval_token": token})
    check(replay.is_error, f"replayed approval token was accepted: {replay.structured_content or text_of(replay)}")
    out["replay_error"] = text_of(replay)
    check(out["replay_error"] != "", "replay error result has no text")
    return out


def make_client(args: argparse.Namespace) -> Client:
    if args.http:
        headers = dict(h.split(":", 1) for h in args.header)
        headers = {k.strip(): v.strip() for k, v in headers.items()}
        # timeout=None on reads: the SDK's own read timeout bounds each request
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(TIMEOUT_S, read=None))
        server: Any = streamable_http_client(args.http, http_client=http)
    else:
        server = StdioServerParameters(
            command=args.binary,
            args=["--data-dir", args.data_dir, "--config", args.config, "serve"],
            env=dict(args.env),
        )
    return Client(server, mode=args.mode, read_timeout_seconds=TIMEOUT_S)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with anyio.fail_after(4 * TIMEOUT_S):
        async with make_client(args) as client:
            return await workflow(client, args)


def first_leaf(exc: BaseException) -> BaseException:
    """anyio task groups wrap errors in ExceptionGroups: report the first real one."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True, help="path to the nhi-mcp binary")
    p.add_argument("--data-dir", required=True, help="the server's --data-dir (already seeded)")
    p.add_argument("--config", required=True, help="the server's --config, naming the approver")
    p.add_argument("--approver-key", required=True, help=f"the private key of approver {APPROVER}")
    p.add_argument("--http", metavar="URL", help="connect to a running server at URL instead of stdio")
    p.add_argument("--header", action="append", default=[], help="'Name: value' sent with every HTTP request")
    p.add_argument(
        "--env", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
        help="NAME=VALUE for the stdio server process",
    )
    p.add_argument("--mode", default="auto", help="SDK negotiation: auto (2026-07-28 first), legacy (2025-11-25)")
    args = p.parse_args()
    try:
        out = anyio.run(main_async, args)
    except BaseException as e:  # noqa: BLE001 - report every failure the same way
        leaf = first_leaf(e)
        if isinstance(leaf, (KeyboardInterrupt, SystemExit)):
            raise
        kind = "" if isinstance(leaf, Fail) else f"{type(leaf).__name__}: "
        print(f"workflow.py: FAIL ({'http' if args.http else 'stdio'}): {kind}{leaf}", file=sys.stderr)
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
