"""The signing keys and token policy the gateway runs with, from its settings."""

from __future__ import annotations

import logging
import os

from authlib.common.security import is_secure_transport

from ckrv.services.common.settings import Environment
from ckrv.services.gateway.identity.flows import IdentityPolicy
from ckrv.services.gateway.identity.keys import SigningKeys, generate_signing_key
from ckrv.services.gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)


def load_identity(settings: GatewaySettings) -> tuple[SigningKeys, IdentityPolicy]:
    issuer = settings.base_url
    if settings.signing_keys is not None:
        keys = SigningKeys.from_json(settings.signing_keys.get_secret_value(), issuer=issuer)
    else:
        # Only reachable with CKRV_ENV=dev (the setting is a dev default).
        logger.warning("no signing keys configured: generated one; tokens end with this process")
        keys = SigningKeys([generate_signing_key()], issuer=issuer)
    if settings.env is Environment.DEV and not is_secure_transport(issuer):
        # authlib answers OAuth requests to a plain-HTTP address other than loopback with
        # `insecure_transport`; a development cluster serves http://ckrv.localhost. This is
        # authlib's own switch for development.
        logger.warning("development: OAuth over plain HTTP is accepted at %s", issuer)
        os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    policy = IdentityPolicy(
        access_token_seconds=settings.access_token_seconds,
        refresh_token_days=settings.refresh_token_days,
        device_code_seconds=settings.device_code_seconds,
        poll_interval_seconds=settings.poll_interval_seconds,
        verification_uri=f"{issuer}/activate",
    )
    return keys, policy
