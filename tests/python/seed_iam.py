#!/usr/bin/env python3
"""Seed IAM users on a moto server with boto3 (run by moto's venv: target/peers/moto/bin/python).

    seed_iam.py --endpoint URL --path /sbsXYZ/ --prefix sbs-sbsXYZ- --users N

Creates users PREFIX0 .. PREFIX(N-1) under the IAM path PATH, each tagged owner=team-<i % 7>.
Idempotent: users that already exist under PATH are left alone (a second run creates nothing).
Signs with dummy credentials (testing/testing, us-east-1): moto checks no signature. Prints ONE
JSON object on stdout, {"path": .., "prefix": .., "users": N, "created": .., "existing": ..};
any failure is one line `seed_iam.py: ...` on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config

WORKERS = 8  # moto_server is threaded; a few concurrent creates make 1000 users take seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True, help="moto endpoint URL, e.g. http://127.0.0.1:5000")
    p.add_argument("--path", required=True, help="IAM path of the users, /.../ (e.g. /sbs1a2b/)")
    p.add_argument("--prefix", required=True, help="user name prefix; user i is PREFIX<i>")
    p.add_argument("--users", type=int, required=True, help="how many users")
    args = p.parse_args()

    iam = boto3.client(
        "iam",
        endpoint_url=args.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=WORKERS),
    )

    # What is already there, through the paginator (moto ignores MaxItems and answers in one
    # page, AWS would page: the paginator covers both).
    existing: set[str] = set()
    for page in iam.get_paginator("list_users").paginate(PathPrefix=args.path):
        existing |= {u["UserName"] for u in page["Users"] if u["Path"] == args.path}

    wanted = [(i, f"{args.prefix}{i}") for i in range(args.users)]
    missing = [(i, name) for i, name in wanted if name not in existing]

    def create(item: tuple[int, str]) -> None:
        i, name = item
        try:
            iam.create_user(UserName=name, Path=args.path, Tags=[{"Key": "owner", "Value": f"team-{i % 7}"}])
        except iam.exceptions.EntityAlreadyExistsException:
            pass  # a concurrent seeder got there first: same name, same path prefix

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        list(pool.map(create, missing))  # list(): re-raises the first failure here

    print(
        json.dumps(
            {
                "path": args.path,
                "prefix": args.prefix,
                "users": args.users,
                "created": len(missing),
                "existing": args.users - len(missing),
            }
        )
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - one line for the caller, whatever failed
        print(f"seed_iam.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
