#!/usr/bin/env python3
"""List the same IAM users through nhi-mcp and through AWS Labs' IAM MCP server, side by side.

    iam_side_by_side.py --moto URL --nhi-mcp PATH --awslabs PATH --users N --path /sbsXYZ/
                        [--bench ROUNDS] [--timeout SECONDS] [--moto-python PATH]

Runs with the MCP Python SDK's venv (target/peers/venv/bin/python); both servers are driven by
the same SDK client over stdio, against the same moto server (tests/peers/moto):

1. seeds N IAM users under PATH with boto3 (tests/python/seed_iam.py, run by moto's venv
   Python: --moto-python, default $NHI_TEST_MOTO_PYTHON, else target/peers/moto/bin/python).
   User i is `sbs-<tag>-<i>`, tag = PATH's segments joined by '-' (/sbsXYZ/ -> sbs-sbsXYZ-7),
   tagged owner=team-<i % 7>. Idempotent: existing users are kept.
2. starts `nhi-mcp --config CFG --data-dir DIR serve` on a temporary config with one aws_iam
   provider whose endpoint_url is the moto URL;
3. starts the AWS Labs server with AWS_ENDPOINT_URL = the moto URL (read-only: no --allow-write);
4. lists all of the seeded users through each: nhi-mcp `list_identities` with
   text = "sbs-<tag>-" (following next_cursor), AWS Labs `list_users` with path_prefix = PATH;
5. compares the two SETS of user names (restricted to the seeded name prefix) and prints ONE JSON
   line {"nhi_mcp": n, "awslabs": n, "same": bool, "only_nhi": [...], "only_awslabs": [...], ...};
   exit 1 when they differ;
6. with --bench R: after that first listing (the warm-up; nhi-mcp's first listing also fills its
   inventory cache, so it is reported apart), times R rounds of "list all N users" through each
   server, alternating which goes first, and prints a second JSON line with the medians.

Any failure (a binary missing, a server that does not start, a tool error, a timeout) is ONE
line `iam_side_by_side.py: FAIL: ...` on stderr and exit 1. Servers' stderr goes to log files in
the temporary directory, whose path the failure message names (it is kept on failure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TextIO

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parents[2]
SEED = Path(__file__).resolve().with_name("seed_iam.py")
NHI_PAGE = 500  # list_identities limit per call
# Dummy credentials: moto wants SigV4-signed requests and checks no signature.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never probe instance metadata for anything
}


class Fail(Exception):
    """An unexpected result: the message says what was expected and what came."""


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise Fail(msg)


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content).strip()


def executable(path: str, what: str) -> str:
    """PATH itself if it is an executable file (or a command on $PATH); else a one-line Fail."""
    found = path if os.path.isfile(path) and os.access(path, os.X_OK) else shutil.which(path)
    check(found is not None, f"{what} not found or not executable: {path}")
    return os.path.abspath(found)  # type: ignore[arg-type]


def path_tag(iam_path: str) -> str:
    """/sbsXYZ/ -> sbsXYZ; /a/b/ -> a-b. Only characters valid in an IAM user name."""
    check(
        iam_path.startswith("/") and iam_path.endswith("/") and len(iam_path) > 2,
        f"--path must look like /name/ (got {iam_path!r})",
    )
    tag = "-".join(s for s in iam_path.split("/") if s)
    check(re.fullmatch(r"[A-Za-z0-9_+=,.@-]+", tag) is not None, f"--path {iam_path!r}: use [A-Za-z0-9_+=,.@-] only")
    return tag


# --- seeding -----------------------------------------------------------------------------------


def seed(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    cmd = [
        args.moto_python, str(SEED),
        "--endpoint", args.moto, "--path", args.path, "--prefix", prefix, "--users", str(args.users),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(120, args.users // 5))
    except subprocess.TimeoutExpired:
        raise Fail(f"seeding {args.users} users timed out") from None
    check(done.returncode == 0, f"seeding failed: {done.stderr.strip() or done.stdout.strip()}")
    return json.loads(done.stdout)


# --- the two servers ---------------------------------------------------------------------------


def nhi_client(args: argparse.Namespace, work: Path, errlog: TextIO) -> Client:
    """nhi-mcp over stdio, on a fresh data dir and a config with one aws_iam provider."""
    data_dir = work / "nhi-data"
    data_dir.mkdir()
    cfg = work / "nhi-mcp.toml"
    cfg.write_text(
        "[[providers]]\n"
        'name = "aws"\n'
        'kind = "aws_iam"\n'
        'region = "us-east-1"\n'
        f"endpoint_url = {json.dumps(args.moto)}\n"  # a JSON string is a valid TOML basic string
    )
    env = {
        **AWS_ENV,
        # No host AWS profile may leak in: point the SDK's files at nothing.
        "AWS_CONFIG_FILE": str(work / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
        "NHI_MCP_LOG": "warn",
    }
    params = StdioServerParameters(
        command=args.nhi_mcp, args=["--config", str(cfg), "--data-dir", str(data_dir), "serve"], env=env
    )
    return Client(stdio_client(params, errlog=errlog), read_timeout_seconds=args.timeout)


def awslabs_client(args: argparse.Namespace, work: Path, errlog: TextIO) -> Client:
    """AWS Labs' IAM MCP server over stdio, read-only (its default), pointed at moto.

    boto3 takes its region from AWS_DEFAULT_REGION (AWS_REGION alone gives NoRegionError here).
    """
    env = {
        **AWS_ENV,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": args.moto,
        "AWS_CONFIG_FILE": str(work / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws-credentials"),
    }
    params = StdioServerParameters(command=args.awslabs, args=[], env=env)
    return Client(stdio_client(params, errlog=errlog), read_timeout_seconds=args.timeout)


async def connect(stack: AsyncExitStack, who: str, client: Client, log: Path) -> Client:
    """Start the server and do the MCP handshake; a failure names the server and its last words."""
    try:
        return await stack.enter_async_context(client)
    except Exception as e:  # noqa: BLE001 - one message naming which server did not come up
        leaf = first_leaf(e)
        tail = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()][-1:]
        said = f"; its stderr ends: {tail[0][:300]}" if tail else ""
        raise Fail(f"{who} did not start (MCP handshake failed: {type(leaf).__name__}: {leaf}){said}") from e


async def call(client: Client, who: str, tool: str, arguments: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Call a tool that must succeed; return its structuredContent (a JSON object)."""
    with anyio.fail_after(timeout):
        result = await client.call_tool(tool, arguments)
    check(not result.is_error, f"{who} {tool}({json.dumps(arguments)}) returned isError: {text_of(result)[:500]}")
    sc = result.structured_content
    check(isinstance(sc, dict), f"{who} {tool} returned no structuredContent object: {text_of(result)[:500]}")
    return sc


async def list_nhi(client: Client, args: argparse.Namespace, prefix: str) -> tuple[set[str], int]:
    """User names of aws:user/<name> identities whose name starts with PREFIX; and the page count."""
    names: set[str] = set()
    base = {"provider": "aws", "text": prefix, "limit": NHI_PAGE}
    cursor: str | None = None
    pages = 0
    while True:
        page = await call(client, "nhi-mcp", "list_identities", {**base, **({"cursor": cursor} if cursor else {})}, args.timeout)
        pages += 1
        idents = page.get("identities")
        check(isinstance(idents, list), f"nhi-mcp list_identities: no 'identities' list in {str(page)[:300]}")
        for ident in idents:
            iid = str(ident.get("id", ""))
            if iid.startswith("aws:user/"):
                name = iid.rsplit("/", 1)[1]  # aws:user/<UserName>; a path, if ever in the id, drops off
                if name.startswith(prefix):
                    names.add(name)
        cursor = page.get("next_cursor")
        if not cursor:
            return names, pages
        check(pages < 10_000, "nhi-mcp list_identities: more than 10000 pages, cursor loop?")


async def list_awslabs(client: Client, args: argparse.Namespace, prefix: str, needs_ctx: bool) -> tuple[set[str], bool]:
    """User names under --path starting with PREFIX; and whether the server said is_truncated.

    Its list_users has no marker argument, so one call is all there is: max_items must cover N
    (AWS caps MaxItems at 1000; moto ignores MaxItems and returns everything).
    """
    arguments: dict[str, Any] = {"path_prefix": args.path, "max_items": max(100, args.users)}
    if needs_ctx:
        # awslabs-iam-mcp-server 1.1.2 declares `ctx: CallToolResult` on list_users, so its
        # input schema REQUIRES a `ctx` object; any valid CallToolResult does.
        arguments["ctx"] = {"content": []}
    res = await call(client, "awslabs", "list_users", arguments, args.timeout)
    users = res.get("users")
    check(isinstance(users, list), f"awslabs list_users: no 'users' list in {str(res)[:300]}")
    names = {u["user_name"] for u in users if str(u.get("user_name", "")).startswith(prefix)}
    return names, bool(res.get("is_truncated"))


async def timed(fn: Any, *a: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = await fn(*a)
    return out, (time.perf_counter() - t0) * 1000.0


async def run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    tag = path_tag(args.path)
    prefix = f"sbs-{tag}-"
    seeded = seed(args, prefix)

    lines: list[dict[str, Any]] = []
    nhi_log, aws_log = work / "nhi-mcp.stderr", work / "awslabs.stderr"
    with open(nhi_log, "w") as nhi_err, open(aws_log, "w") as aws_err:
        async with AsyncExitStack() as stack:
            # Each context manager kills its server on the way out. No cancel scope around the
            # connects (a scope must not close over the clients' task groups): the handshake is
            # bounded by the clients' read timeout.
            nhi, nhi_connect_ms = await timed(connect, stack, "nhi-mcp", nhi_client(args, work, nhi_err), nhi_log)
            aws, aws_connect_ms = await timed(connect, stack, "awslabs", awslabs_client(args, work, aws_err), aws_log)
            with anyio.fail_after(args.timeout):
                aws_tools = (await aws.list_tools()).tools
            lu = next((t for t in aws_tools if t.name == "list_users"), None)
            check(lu is not None, f"awslabs has no list_users tool: {[t.name for t in aws_tools]}")
            needs_ctx = "ctx" in (lu.input_schema.get("required") or [])

            # 4. the first listing through each (nhi-mcp fills its inventory cache here)
            (nhi_names, nhi_pages), nhi_first_ms = await timed(list_nhi, nhi, args, prefix)
            (aws_names, aws_truncated), aws_first_ms = await timed(list_awslabs, aws, args, prefix, needs_ctx)

            # 5. compare
            lines.append(
                {
                    "nhi_mcp": len(nhi_names),
                    "awslabs": len(aws_names),
                    "same": nhi_names == aws_names,
                    "only_nhi": sorted(nhi_names - aws_names)[:5],
                    "only_awslabs": sorted(aws_names - nhi_names)[:5],
                    "seeded": seeded["users"],
                    "created": seeded["created"],
                    "path": args.path,
                    "prefix": prefix,
                    "nhi_mcp_pages": nhi_pages,
                    "awslabs_truncated": aws_truncated,
                    "awslabs_needs_ctx_arg": needs_ctx,
                    "nhi_mcp_connect_ms": round(nhi_connect_ms, 1),
                    "awslabs_connect_ms": round(aws_connect_ms, 1),
                }
            )

            # 6. warm rounds, alternating which server goes first
            if args.bench:
                ms: dict[str, list[float]] = {"nhi": [], "aws": []}
                listers = {
                    "nhi": lambda: list_nhi(nhi, args, prefix),
                    "aws": lambda: list_awslabs(aws, args, prefix, needs_ctx),
                }
                for rnd in range(args.bench):
                    for who in ("nhi", "aws") if rnd % 2 == 0 else ("aws", "nhi"):
                        (names, _), t = await timed(listers[who])
                        want = nhi_names if who == "nhi" else aws_names
                        check(names == want, f"round {rnd}: {who} listed {len(names)} users, first time {len(want)}")
                        ms[who].append(t)
                nhi_med, aws_med = statistics.median(ms["nhi"]), statistics.median(ms["aws"])
                lines.append(
                    {
                        "users": args.users,
                        "rounds": args.bench,
                        "nhi_mcp_ms_median": round(nhi_med, 1),
                        "awslabs_ms_median": round(aws_med, 1),
                        "ratio_nhi_over_awslabs": round(nhi_med / aws_med, 3) if aws_med > 0 else None,
                        "nhi_mcp_first_ms": round(nhi_first_ms, 1),
                        "awslabs_first_ms": round(aws_first_ms, 1),
                        "nhi_mcp_ms": [round(x, 1) for x in ms["nhi"]],
                        "awslabs_ms": [round(x, 1) for x in ms["aws"]],
                        "nhi_mcp_calls_per_listing": nhi_pages,
                        "awslabs_calls_per_listing": 1,
                    }
                )
    return lines


def first_leaf(exc: BaseException) -> BaseException:
    """anyio task groups wrap errors in ExceptionGroups: report the first real one."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--moto", required=True, help="moto endpoint URL, e.g. http://127.0.0.1:5000")
    p.add_argument("--nhi-mcp", required=True, help="path to the nhi-mcp binary")
    p.add_argument("--awslabs", required=True, help="path to awslabs.iam-mcp-server (target/peers/awslabs/bin/)")
    p.add_argument("--users", type=int, required=True, help="how many IAM users to seed and list")
    p.add_argument("--path", required=True, help="IAM path of the seeded users, e.g. /sbs1a2b/")
    p.add_argument("--bench", type=int, default=0, metavar="ROUNDS", help="time ROUNDS warm listings through each")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per tool call / server start (default 300)")
    p.add_argument(
        "--moto-python",
        default=os.environ.get("NHI_TEST_MOTO_PYTHON") or str(ROOT / "target/peers/moto/bin/python"),
        help="a Python with boto3, for seeding (default $NHI_TEST_MOTO_PYTHON or target/peers/moto/bin/python)",
    )
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="iam-sbs-"))
    ok = False
    try:
        check(args.users > 0, "--users must be positive")
        check(args.bench >= 0, "--bench must not be negative")
        args.nhi_mcp = executable(args.nhi_mcp, "nhi-mcp binary (--nhi-mcp)")
        args.awslabs = executable(args.awslabs, "AWS Labs IAM MCP server (--awslabs)")
        args.moto_python = executable(args.moto_python, "Python with boto3 (--moto-python)")
        lines = anyio.run(run, args, work)
        for line in lines:
            print(json.dumps(line), flush=True)
        ok = lines[0]["same"]
        if not ok:
            print(
                f"iam_side_by_side.py: FAIL: the servers list different users under {args.path}"
                f" (server logs in {work})",
                file=sys.stderr,
            )
        return 0 if ok else 1
    except BaseException as e:  # noqa: BLE001 - report every failure the same way
        leaf = first_leaf(e)
        if isinstance(leaf, (KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(leaf, TimeoutError):
            leaf = Fail(f"timed out after {args.timeout:g} s (--timeout)")
        kind = "" if isinstance(leaf, Fail) else f"{type(leaf).__name__}: "
        logs = f" (server logs in {work})" if any(work.glob("*.stderr")) else ""
        print(f"iam_side_by_side.py: FAIL: {kind}{leaf}{logs}", file=sys.stderr)
        return 1
    finally:
        # Kept when a server ran and something failed (its logs are named above).
        if ok or not any(work.glob("*.stderr")):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
