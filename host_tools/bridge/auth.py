"""App command tokens: JWT signed HS256 (shared secret) or ES256 (the app's public key).

A token must be signed with the configured key and algorithm (no others are
accepted, so "alg": "none" or an HS256 token made with the public key fail),
carry `exp` in the future and `aud` equal to the station id (a token for one
station does not work on another). Anything else is V2G-401.
"""

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host_tools.bridge import config as cfgdir


class AuthError(Exception):
    code = "V2G-401"


class TokenVerifier:
    def __init__(self, key, algorithm: str, audience: str, leeway_s: float = 5.0):
        if algorithm not in ("HS256", "ES256"):
            raise ValueError(f"token algorithm {algorithm!r} is not HS256 or ES256")
        self.key = key
        self.algorithm = algorithm
        self.audience = audience
        self.leeway_s = leeway_s

    @classmethod
    def from_config_dir(cls, d, audience: str):
        """HS256 with app_jwt.secret or ES256 with app_jwt_public.pem; None if neither exists."""
        secret = cfgdir.secret_text(d, "app_jwt.secret")
        if secret:
            return cls(secret, "HS256", audience)
        pub = cfgdir.secret_text(d, "app_jwt_public.pem")
        if pub:
            # parsed now: a damaged key must stop the bridge at start-up, not fail every command
            try:
                key = serialization.load_pem_public_key(pub.encode())
            except (ValueError, TypeError, UnsupportedAlgorithm) as e:
                raise cfgdir.ConfigDirError(f"{d}/app_jwt_public.pem is not a PEM public key: {e}") from e
            if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
                raise cfgdir.ConfigDirError(f"{d}/app_jwt_public.pem is not an EC P-256 public key (ES256)")
            return cls(key, "ES256", audience)
        return None

    def verify(self, token) -> dict:
        """The token's claims; AuthError naming why it is refused."""
        if not isinstance(token, str) or not token:
            raise AuthError("token missing")
        try:
            return jwt.decode(token, self.key, algorithms=[self.algorithm], audience=self.audience,
                              leeway=self.leeway_s, options={"require": ["exp", "aud"]})
        except jwt.ExpiredSignatureError as e:
            raise AuthError("token expired") from e
        except jwt.InvalidAudienceError as e:
            raise AuthError(f"token is not for station {self.audience}") from e
        except jwt.MissingRequiredClaimError as e:
            raise AuthError(f"token lacks the {e.claim!r} claim") from e
        except jwt.InvalidSignatureError as e:
            raise AuthError("token signature does not verify") from e
        except jwt.InvalidTokenError as e:
            raise AuthError(f"token refused: {e}") from e
        except (jwt.PyJWTError, ValueError, TypeError) as e:   # e.g. a key the library cannot use
            raise AuthError(f"token refused: {type(e).__name__}") from e
