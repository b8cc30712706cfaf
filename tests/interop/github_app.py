"""A GitHub App's side of its JSON Web Tokens, with PyJWT and cryptography.

stdin: {"op": "keygen"}
    stdout: {"pkcs1": PEM, "pkcs8": PEM, "public": PEM} of a fresh 2048-bit RSA key
stdin: {"op": "verify", "jwt": str, "public": PEM, "issuer": str}
    stdout: the token's claims, once its RS256 signature, issuer and times are checked
    (as GitHub does: it must be valid now, and live at most 10 minutes); exits 1 otherwise.
"""
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def keygen() -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = lambda fmt: key.private_bytes(
        serialization.Encoding.PEM, fmt, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return {
        "pkcs1": pem(serialization.PrivateFormat.TraditionalOpenSSL),
        "pkcs8": pem(serialization.PrivateFormat.PKCS8),
        "public": public,
    }


def verify(request: dict) -> dict:
    header = jwt.get_unverified_header(request["jwt"])
    if header.get("alg") != "RS256":
        raise ValueError(f"alg {header.get('alg')!r}, not RS256")
    claims = jwt.decode(
        request["jwt"],
        request["public"],
        algorithms=["RS256"],
        issuer=request["issuer"],
        options={"require": ["exp", "iat", "iss"]},
    )
    if claims["exp"] - claims["iat"] > 600:
        raise ValueError("the token lives more than 10 minutes")
    return claims


def main() -> None:
    request = json.load(sys.stdin)
    try:
        out = keygen() if request["op"] == "keygen" else verify(request)
    except Exception as err:  # the test reads the reason
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
