"""`/v1/credentials`: store, list and remove the git credentials jobs clone private repos with.

Values are write-only: they are sealed on arrival and no answer ever holds one.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status

from ckrv.schemas.api import (
    CREDENTIAL_NAME_PATTERN,
    GitCredentialCreate,
    GitCredentialPublic,
    GitCredentialsPublic,
)
from ckrv.services.common import credentials as git_credentials
from ckrv.services.gateway.auth import CurrentUser
from ckrv.services.gateway.context import ContextDep, SessionDep
from ckrv.services.gateway.errors import ApiError, not_found

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/credentials", tags=["Git credentials"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid token (`unauthorized`)."},
    422: {"description": "Invalid input (`validation_error`), with `details` per field."},
}

CredentialName = Annotated[
    str, Path(pattern=CREDENTIAL_NAME_PATTERN, description="The credential's name.")
]


def _public(credential: git_credentials.GitCredential) -> GitCredentialPublic:
    return GitCredentialPublic.model_validate(credential, from_attributes=True)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=GitCredentialPublic,
    responses={**ERRORS, 409: {"description": "The name is taken (`conflict`)."}},
)
async def create_credential(
    body: GitCredentialCreate,
    user: CurrentUser,
    context: ContextDep,
    session: SessionDep,
    response: Response,
) -> GitCredentialPublic:
    """Store a git credential under a name jobs refer to it by (`git_credential_name`)."""
    async with session.begin():
        stored = await git_credentials.store_credential(
            session,
            context.credential_keys,
            user.id,
            name=body.name,
            provider=body.provider,
            credential_type=body.credential_type,
            value=body.value,
        )
    if stored is None:
        raise ApiError(
            409,
            "conflict",
            f"a credential named {body.name!r} exists already; remove it first to replace it",
        )
    logger.info(
        "git credential stored",
        extra={"user_id": str(user.id), "credential": stored.name, "key_id": stored.key_id},
    )
    response.headers["Location"] = f"/v1/credentials/{stored.name}"
    return _public(stored)


@router.get("", response_model=GitCredentialsPublic, responses=ERRORS)
async def list_credentials(user: CurrentUser, session: SessionDep) -> GitCredentialsPublic:
    """The user's git credentials by name, without their values."""
    credentials = await git_credentials.list_credentials(session, user.id)
    return GitCredentialsPublic(credentials=[_public(credential) for credential in credentials])


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**ERRORS, 404: {"description": "No such credential for this user (`not_found`)."}},
)
async def delete_credential(name: CredentialName, user: CurrentUser, session: SessionDep) -> None:
    """Remove a git credential; jobs that name it afterwards are refused."""
    async with session.begin():
        removed = await git_credentials.remove_credential(session, user.id, name)
    if not removed:
        raise not_found(f"credential {name!r}")
    logger.info("git credential removed", extra={"user_id": str(user.id), "credential": name})
