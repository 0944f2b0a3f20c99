"""The per-command JWT the bridge checks on every app command (host_tools/bridge/auth.py):
`aud` = the station, `sub` = the user, a short `exp`. Signed with the gateway's app key from
the API's config directory: `app_jwt_key.pem` (ES256 private key, the bridge holding
`app_jwt_public.pem`) or `app_jwt.secret` (HS256, the same secret as the bridge)."""

import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host_tools.bridge import config as cfgdir

TOKEN_LIFETIME_S = 60


class CommandSigner:
    def __init__(self, key, algorithm):
        self.key, self.algorithm = key, algorithm

    @classmethod
    def from_config_dir(cls, d):
        pem = cfgdir.secret_text(d, "app_jwt_key.pem")
        if pem:
            try:
                key = serialization.load_pem_private_key(pem.encode(), None)
            except (ValueError, TypeError) as e:
                raise cfgdir.ConfigDirError(f"{d}/app_jwt_key.pem is not a PEM private key: {e}") from e
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
                raise cfgdir.ConfigDirError(f"{d}/app_jwt_key.pem is not an EC P-256 private key (ES256)")
            return cls(key, "ES256")
        secret = cfgdir.secret_text(d, "app_jwt.secret")
        if secret:
            return cls(secret, "HS256")
        raise cfgdir.ConfigDirError(f"{d}: neither app_jwt_key.pem nor app_jwt.secret: the API cannot sign "
                                    "commands the gateways accept")

    def token(self, user, station):
        now = int(time.time())
        return jwt.encode({"sub": user, "aud": station, "iat": now, "exp": now + TOKEN_LIFETIME_S},
                          self.key, algorithm=self.algorithm)
