"""Signed firmware updates: signing keys and bundles (host side).

`signing.keys` makes and loads the signing keys; `signing.bundle` builds and checks
bundles: a COSE_Sign1 (RFC 9052) over a canonical-CBOR manifest, followed by the
component bytes. The controller checks the same bundle with firmware/core/cose.py and
firmware/core/manifest.py. The format is described in docs/signed-updates.md.
"""
