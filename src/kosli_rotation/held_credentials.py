"""Credentials the client libraries obtain for us, registered with the masker and the scrubber the moment they exist.

Tokens in the connections are held when read. These are the ones minted later, inside a client: GitHub App
installation tokens (fetched, and refreshed before they expire, by PyGithub) and the tokens a kubeconfig
yields (static, from a file, or from an exec plugin or a refresh hook, at each refresh).
"""

from __future__ import annotations

import functools
from typing import Any

from kosli_rotation.scrub import hold_secret


def held_github_auth(auth: Any) -> Any:
    """PyGithub ``auth`` whose every token is held: a static token now, installation tokens as they are minted."""
    from github import Auth

    if isinstance(auth, Auth.Token):
        hold_secret(auth.token)
    elif isinstance(auth, Auth.AppInstallationAuth) and not isinstance(auth, _held_installation_auth()):
        return _held_installation_auth()(auth._app_auth, auth.installation_id, auth.token_permissions)
    return auth


@functools.cache
def _held_installation_auth() -> type:
    from github import Auth

    class HeldInstallationAuth(Auth.AppInstallationAuth):
        """Holds each installation token PyGithub fetches (first use, and each refresh before expiry)."""

        def _get_installation_authorization(self) -> Any:
            authorization = super()._get_installation_authorization()
            hold_secret(authorization.token)
            return authorization

    return HeldInstallationAuth


def hold_kube_credentials(configuration: Any) -> None:
    """Hold the bearer token, password and client key of a kubernetes client ``Configuration``, now and after each
    token refresh."""
    _hold_kube_now(configuration)
    refresh = configuration.refresh_api_key_hook
    if refresh is not None and not getattr(refresh, "holds_credentials", False):

        def refresh_and_hold(config: Any) -> None:
            refresh(config)
            _hold_kube_now(config)

        refresh_and_hold.holds_credentials = True  # type: ignore[attr-defined]
        configuration.refresh_api_key_hook = refresh_and_hold


def _hold_kube_now(configuration: Any) -> None:
    for value in [*(configuration.api_key or {}).values(), configuration.password]:
        if isinstance(value, str) and value:
            scheme, _, credential = value.partition(" ")
            hold_secret(credential if scheme.lower() == "bearer" and credential else value)
    if configuration.key_file:  # the kubeconfig loader writes client-key-data to a temporary file
        with open(configuration.key_file) as key:
            pem = key.read().strip()
        for secret in [pem, *(line for line in pem.splitlines() if not line.startswith("-----"))]:
            hold_secret(secret.strip())
