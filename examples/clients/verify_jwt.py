#!/usr/bin/env python3
"""Verify an exchanged JWT offline, the way any OIDC resource server would: read the
issuer's discovery document, fetch its JWKS, check signature, issuer, audience and expiry
with PyJWT (pip install "pyjwt[crypto]"), then print the claims.

    verify_jwt.py --issuer https://patrol.example.com --audience kubernetes-patrol [--ca ca.crt] < jwt

The JWT is read from standard input so it never appears in a process listing.
"""

import argparse
import json
import ssl
import sys
import urllib.request

import jwt


def fetch_json(url: str, context: ssl.SSLContext) -> dict:
    with urllib.request.urlopen(url, context=context, timeout=10) as response:
        return json.load(response)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuer", required=True, help="the token service's issuer URL")
    parser.add_argument("--audience", required=True, help="the audience this service accepts")
    parser.add_argument("--ca", help="CA file of the issuer's TLS certificate")
    args = parser.parse_args()
    token = sys.stdin.read().strip()

    context = ssl.create_default_context(cafile=args.ca)
    discovery = fetch_json(args.issuer + "/.well-known/openid-configuration", context)
    if discovery["issuer"] != args.issuer:
        print(f"discovery names issuer {discovery['issuer']!r}, not {args.issuer!r}", file=sys.stderr)
        return 1
    keys = jwt.PyJWKClient(discovery["jwks_uri"], ssl_context=context)
    try:
        signing_key = keys.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            signing_key,
            algorithms=discovery.get("id_token_signing_alg_values_supported", ["ES256"]),
            audience=args.audience,
            issuer=args.issuer,
            options={"require": ["exp", "iat", "sub"]},
        )
    except jwt.PyJWTError as error:
        print(f"not a valid token: {error}", file=sys.stderr)
        return 1
    print(json.dumps(claims, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
